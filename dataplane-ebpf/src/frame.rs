//! Bounds-checked packet access for XDP and TC, in the shape the verifier accepts: every
//! access compares `data + offset + size` with `data_end`.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use dataplane_common::parse::Frame;

#[inline(always)]
fn checked_ptr<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    if data + offset + size_of::<T>() > data_end {
        return None;
    }
    Some((data + offset) as *mut T)
}

/// The packet of an XDP program.
pub struct XdpFrame<'a>(pub &'a XdpContext);

impl XdpFrame<'_> {
    /// The interface the frame arrived on.
    #[inline(always)]
    pub fn ingress_ifindex(&self) -> u32 {
        // SAFETY: the context the kernel passed to the program.
        unsafe { (*self.0.ctx).ingress_ifindex }
    }

    /// Writes `value` at `offset`; `None` when it would not fit in the frame.
    #[inline(always)]
    pub fn store<T: Copy>(&self, offset: usize, value: T) -> Option<()> {
        let ptr = checked_ptr::<T>(self.0.data(), self.0.data_end(), offset)?;
        // SAFETY: bounds checked above; unaligned write of plain data.
        unsafe { core::ptr::write_unaligned(ptr, value) };
        Some(())
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

/// The linear part of a TC program's packet (call `pull_data` first if headers may be
/// outside it).
pub struct TcFrame<'a>(pub &'a TcContext);

impl Frame for TcFrame<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let ptr = checked_ptr::<T>(self.0.data(), self.0.data_end(), offset)?;
        // SAFETY: bounds checked above.
        Some(unsafe { core::ptr::read_unaligned(ptr) })
    }
}
