//! Bounds-checked packet access for XDP and TC, in the shape the verifier accepts: every
//! access compares `data + offset + size` with `data_end`; and [`Packet`], what the uplink's
//! logic needs of a frame whichever hook runs it, on an Ethernet device or a layer-3 one.

use core::{cell::Cell, mem::size_of};

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_redirect, bpf_skb_change_head},
    programs::{TcContext, XdpContext},
};
use dataplane_common::{
    csum,
    parse::{ETH_HLEN, Frame},
};

#[inline(always)]
fn checked_ptr<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    if data + offset + size_of::<T>() > data_end {
        return None;
    }
    Some((data + offset) as *mut T)
}

/// What a program does with a frame, in terms common to XDP and TC.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// On to the node's stack.
    Pass,
    Drop,
    /// Out of the device with this index (a container's veth).
    Redirect(u32),
}

/// A checksummed field's change, for [`Packet::replace_l4`].
#[derive(Clone, Copy)]
pub struct L4Change {
    /// 2 or 4 bytes; 0: the change is a sum of many (`csum::diff2`/`diff4`), passed as
    /// `new` with an `old` of 0, as the kernel's helper takes it (one step where an IPv6
    /// address has eight words).
    pub size: u8,
    /// The field is part of the pseudo-header (an address).
    pub pseudo: bool,
    /// A UDP checksum: a result of zero is sent as 0xffff, zero meaning "none".
    pub udp: bool,
}

/// A frame the uplink's logic can rewrite and hand on, whichever hook runs it. XDP updates
/// the checksums incrementally in place; TC leaves it to the kernel's checksum helpers,
/// which know a partial checksum (CHECKSUM_PARTIAL, a frame whose sender offloaded its
/// transport checksum: a veth's peer) from a full one. XDP cannot tell them apart, so it
/// must not run where partial checksums arrive.
pub trait Packet: Frame {
    /// Writes `value` at `offset`; `None` when it would not fit in the frame.
    fn store<T: Copy>(&self, offset: usize, value: T) -> Option<()>;
    /// Adjusts the IPv4 header checksum at `check_at` for a field of `size` bytes (2 or 4)
    /// changed from `old` to `new` (as they are in memory).
    fn replace_l3(&self, check_at: usize, old: u32, new: u32, size: u8) -> Option<()>;
    /// Adjusts the transport checksum at `check_at` for a field changed from `old` to
    /// `new` (as they are in memory).
    fn replace_l4(&self, check_at: usize, old: u32, new: u32, change: L4Change) -> Option<()>;
    /// The interface the frame arrived on.
    fn ingress_ifindex(&self) -> u32;
}

/// A checksum after a field of `size` bytes changed from `old` to `new`.
#[inline(always)]
fn replaced(check: u16, old: u32, new: u32, size: u8) -> u16 {
    match size {
        0 => csum::apply(check, new),
        2 => csum::replace2(check, old as u16, new as u16),
        _ => csum::replace4(check, old, new),
    }
}

/// The packet of an XDP program.
pub struct XdpFrame<'a>(pub &'a XdpContext);

impl XdpFrame<'_> {
    /// The XDP verdict for `action`.
    #[inline(always)]
    pub fn verdict(action: Action) -> u32 {
        match action {
            Action::Pass => xdp_action::XDP_PASS,
            Action::Drop => xdp_action::XDP_DROP,
            // SAFETY: a plain helper call.
            Action::Redirect(ifindex) => unsafe { bpf_redirect(ifindex, 0) as u32 },
        }
    }
}

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let ptr = checked_ptr::<T>(self.0.data(), self.0.data_end(), offset)?;
        // SAFETY: bounds checked above.
        Some(unsafe { core::ptr::read_unaligned(ptr) })
    }
}

impl Packet for XdpFrame<'_> {
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: the context the kernel passed to the program.
        unsafe { (*self.0.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn store<T: Copy>(&self, offset: usize, value: T) -> Option<()> {
        let ptr = checked_ptr::<T>(self.0.data(), self.0.data_end(), offset)?;
        // SAFETY: bounds checked above; unaligned write of plain data.
        unsafe { core::ptr::write_unaligned(ptr, value) };
        Some(())
    }

    #[inline(always)]
    fn replace_l3(&self, check_at: usize, old: u32, new: u32, size: u8) -> Option<()> {
        let check: u16 = self.load(check_at)?;
        self.store(check_at, replaced(check, old, new, size))
    }

    #[inline(always)]
    fn replace_l4(&self, check_at: usize, old: u32, new: u32, change: L4Change) -> Option<()> {
        let check: u16 = self.load(check_at)?;
        let mut check = replaced(check, old, new, change.size);
        if change.udp && check == 0 {
            check = 0xffff;
        }
        self.store(check_at, check)
    }
}

/// The linear part of a TC program's packet (call `pull_data` first if headers may be
/// outside it).
pub struct TcFrame<'a>(pub &'a TcContext);

impl TcFrame<'_> {
    /// The TC verdict for `action`.
    #[inline(always)]
    pub fn verdict(action: Action) -> i32 {
        match action {
            Action::Pass => TC_ACT_OK,
            Action::Drop => TC_ACT_SHOT,
            // SAFETY: a plain helper call.
            Action::Redirect(ifindex) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        }
    }
}

impl Frame for TcFrame<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let ptr = checked_ptr::<T>(self.0.data(), self.0.data_end(), offset)?;
        // SAFETY: bounds checked above.
        Some(unsafe { core::ptr::read_unaligned(ptr) })
    }
}

impl Packet for TcFrame<'_> {
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: the context the kernel passed to the program.
        unsafe { (*self.0.skb.skb).ingress_ifindex }
    }

    #[inline(always)]
    fn store<T: Copy>(&self, offset: usize, value: T) -> Option<()> {
        self.0.store(offset, &value, 0).ok()
    }

    #[inline(always)]
    fn replace_l3(&self, check_at: usize, old: u32, new: u32, size: u8) -> Option<()> {
        self.0
            .l3_csum_replace(check_at, u64::from(old), u64::from(new), u64::from(size))
            .ok()
    }

    #[inline(always)]
    fn replace_l4(&self, check_at: usize, old: u32, new: u32, change: L4Change) -> Option<()> {
        let mut flags = u64::from(change.size);
        if change.pseudo {
            flags |= u64::from(BPF_F_PSEUDO_HDR);
        }
        if change.udp {
            flags |= u64::from(BPF_F_MARK_MANGLED_0);
        }
        self.0
            .l4_csum_replace(check_at, u64::from(old), u64::from(new), flags)
            .ok()
    }
}

/// A frame received on a layer-3 device (ipip, GRE, WireGuard, a tun without Ethernet
/// framing: ARPHRD_NONE, ARPHRD_TUNNEL, ...), at TC: its data starts at the IP header.
/// The uplink's logic reads and writes it as if an Ethernet header came first, so that one
/// set of offsets serves every device: the first [`ETH_HLEN`] bytes are a header held
/// aside, whose type is the skb's protocol, and every other offset is shifted onto the IP
/// packet. A frame the logic sends to a container's veth (an Ethernet device) gets that
/// header for real ([`TcL3Frame::push_ethernet`]), with the MACs the logic wrote into it.
pub struct TcL3Frame<'a> {
    ip: TcFrame<'a>,
    ethernet: Cell<[u8; ETH_HLEN]>,
}

impl<'a> TcL3Frame<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a TcContext) -> Self {
        let mut ethernet = [0u8; ETH_HLEN];
        // The protocol field holds the skb's __be16 protocol: in memory, network order.
        // SAFETY: the context the kernel passed to the program.
        let protocol = unsafe { (*ctx.skb.skb).protocol } as u16;
        let [high, low] = protocol.to_ne_bytes();
        ethernet[12] = high;
        ethernet[13] = low;
        TcL3Frame {
            ip: TcFrame(ctx),
            ethernet: Cell::new(ethernet),
        }
    }

    /// Puts the Ethernet header held aside in front of the packet, for a redirect to an
    /// Ethernet device (`bpf_skb_change_head` is meant for this: an L3 skb that goes out of
    /// an L2 device). `None` when the skb could not grow.
    #[inline(always)]
    pub fn push_ethernet(&self) -> Option<()> {
        let ctx = self.ip.0;
        // SAFETY: plain helper call on the program's own skb; flags must be 0.
        if unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_HLEN as u32, 0) } != 0 {
            return None;
        }
        ctx.store(0, &self.ethernet.get(), 0).ok()
    }
}

/// Where `offset` (past the Ethernet header held aside) lies in the IP packet. The
/// subtraction is kept from being folded into the packet pointer: the verifier tracks
/// no range for a packet pointer with a negative fixed offset (`data + x - 14`), and would
/// refuse the access however the bounds were checked.
#[inline(always)]
fn in_ip_packet(offset: usize) -> usize {
    core::hint::black_box(offset - ETH_HLEN)
}

impl Frame for TcL3Frame<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        if offset >= ETH_HLEN {
            return self.ip.load(in_ip_packet(offset));
        }
        if offset + size_of::<T>() > ETH_HLEN {
            return None;
        }
        let ethernet = self.ethernet.get();
        // SAFETY: `offset..offset + size_of::<T>()` is inside the array, checked above.
        Some(unsafe { core::ptr::read_unaligned(ethernet.as_ptr().add(offset).cast::<T>()) })
    }
}

impl Packet for TcL3Frame<'_> {
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        self.ip.ingress_ifindex()
    }

    #[inline(always)]
    fn store<T: Copy>(&self, offset: usize, value: T) -> Option<()> {
        if offset >= ETH_HLEN {
            return self.ip.store(in_ip_packet(offset), value);
        }
        if offset + size_of::<T>() > ETH_HLEN {
            return None;
        }
        let mut ethernet = self.ethernet.get();
        // SAFETY: `offset..offset + size_of::<T>()` is inside the array, checked above.
        unsafe { core::ptr::write_unaligned(ethernet.as_mut_ptr().add(offset).cast::<T>(), value) };
        self.ethernet.set(ethernet);
        Some(())
    }

    #[inline(always)]
    fn replace_l3(&self, check_at: usize, old: u32, new: u32, size: u8) -> Option<()> {
        self.ip
            .replace_l3(check_at.checked_sub(ETH_HLEN)?, old, new, size)
    }

    #[inline(always)]
    fn replace_l4(&self, check_at: usize, old: u32, new: u32, change: L4Change) -> Option<()> {
        self.ip
            .replace_l4(check_at.checked_sub(ETH_HLEN)?, old, new, change)
    }
}
