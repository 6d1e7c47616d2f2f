//! The uplink program's attachments: on each interface where published ports answer, XDP
//! or TC ingress (TCX), each a BPF link pinned under the links directory (`xdp_NAME`,
//! `uplink_tc_NAME`, `uplink_l3_NAME`). A restarted agent swaps its program into a pinned
//! link in place, so that the interface is never without one; removing the pin detaches it.
//!
//! Which hook: XDP runs before the kernel makes an skb, so it is the fast one, but it sees
//! only the bytes: a frame whose sender left its transport checksum to offload
//! (CHECKSUM_PARTIAL: what a veth's peer sends with TX offload on, the default) carries a
//! partial checksum there, which XDP's incremental update corrupts. TC keeps the skb, and
//! its checksum helpers handle a partial checksum. `auto` takes TC on the virtual devices
//! whose received frames may carry one, XDP elsewhere.
//!
//! A layer-3 device (ipip, GRE, WireGuard, a tun without Ethernet framing) has no Ethernet
//! header: its frames start at the IP header. It always gets TC, with the program that
//! reads them so (`uplink_ingress_l3`); `--uplink-hook xdp` cannot be honoured there and
//! says so in that uplink's error.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};
use rtnetlink::packet_route::link::LinkLayerType;

use crate::{Error, Result, config::UplinkHook};

/// What a frame received on an interface starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// An Ethernet header (ARPHRD_ETHER).
    Ethernet,
    /// The IP header: a layer-3 device.
    Ip,
}

impl Framing {
    /// The framing of a device of `link_layer` type (`ifi_type`); `None` for devices that
    /// carry no IP traffic of the world's to serve: loopback, CAN, InfiniBand, ... The
    /// layer-3 types are those the kernel sends without a MAC header
    /// (`dev_is_mac_header_xmit`), PIM's register device and "void" aside.
    pub fn of(link_layer: LinkLayerType) -> Option<Framing> {
        match link_layer {
            LinkLayerType::Ether => Some(Framing::Ethernet),
            LinkLayerType::None
            | LinkLayerType::Tunnel
            | LinkLayerType::Tunnel6
            | LinkLayerType::Sit
            | LinkLayerType::Ipgre
            | LinkLayerType::Ip6gre
            | LinkLayerType::Rawip
            | LinkLayerType::Ppp => Some(Framing::Ip),
            _ => None,
        }
    }
}

/// An interface picked to be an uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkLink {
    pub name: String,
    pub index: u32,
    /// Its kind (`veth`, `bond`, ...), `None` for a hardware NIC.
    pub kind: Option<String>,
    pub framing: Framing,
}

/// Where the uplink program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP, native where the driver has it, else generic.
    Xdp,
    /// TC ingress (TCX).
    Tc,
    /// TC ingress (TCX) of a layer-3 device, with the program for frames that start at
    /// the IP header.
    TcL3,
}

/// Kinds of virtual device whose received frames may carry a partial checksum: they come
/// from a sender on the same machine that left the checksum to an offload that never
/// happened (a veth's or netkit's peer, a tun/tap's user space with a virtio-net header,
/// a macvlan/ipvlan sibling, a bridge port).
const PARTIAL_CHECKSUM_KINDS: [&str; 8] = [
    "veth", "netkit", "tun", "macvlan", "macvtap", "ipvlan", "ipvtap", "bridge",
];

/// `--uplink-hook xdp` on a layer-3 device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "XDP cannot serve a layer-3 device (its frames have no Ethernet header); \
     --uplink-hook auto or tc attaches TC there"
)]
pub struct NoXdpOnLayer3;

impl Hook {
    /// The hook for `uplink` under `--uplink-hook`.
    pub fn choose(
        setting: UplinkHook,
        uplink: &UplinkLink,
    ) -> std::result::Result<Hook, NoXdpOnLayer3> {
        if uplink.framing == Framing::Ip {
            return match setting {
                UplinkHook::Xdp => Err(NoXdpOnLayer3),
                UplinkHook::Auto | UplinkHook::Tc => Ok(Hook::TcL3),
            };
        }
        let kind = uplink.kind.as_deref();
        Ok(match setting {
            UplinkHook::Xdp => Hook::Xdp,
            UplinkHook::Tc => Hook::Tc,
            UplinkHook::Auto if kind.is_some_and(|k| PARTIAL_CHECKSUM_KINDS.contains(&k)) => {
                Hook::Tc
            }
            UplinkHook::Auto => Hook::Xdp,
        })
    }

    /// As `bpfbridge info` shows it: TC whichever program runs there.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc | Hook::TcL3 => "tc",
        }
    }

    /// The pin of an interface's link of this hook. XDP's keeps the name earlier agents
    /// gave it, so that an upgraded agent adopts their link.
    pub fn pin(self, links_dir: &Path, interface: &str) -> PathBuf {
        links_dir.join(format!("{}{interface}", self.pin_prefix()))
    }

    fn pin_prefix(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp_",
            Hook::Tc => "uplink_tc_",
            Hook::TcL3 => "uplink_l3_",
        }
    }

    /// The interface a pin file name stands for, and its hook.
    fn of_pin(file_name: &str) -> Option<(&str, Hook)> {
        [Hook::Xdp, Hook::Tc, Hook::TcL3]
            .into_iter()
            .find_map(|hook| Some((file_name.strip_prefix(hook.pin_prefix())?, hook)))
    }
}

fn is_not_found(e: &LinkError) -> bool {
    matches!(e, LinkError::SyscallError(s) if s.io_error.kind() == std::io::ErrorKind::NotFound)
}

/// The pinned link at `pin`, if there is one.
fn pinned(pin: &Path) -> Result<Option<FdLink>> {
    match PinnedLink::from_pin(pin) {
        Ok(link) => Ok(Some(FdLink::from(link))),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::dataplane(format!("opening {}", pin.display()))(e)),
    }
}

/// Removes the pin at `pin`, if there is one (a link goes with its last pin).
pub(super) fn remove_pin(pin: &Path) -> Result<()> {
    match fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", pin.display()))(e)),
    }
}

/// Puts the (loaded) XDP program on `uplink`: into the pinned link of an earlier agent
/// when it still holds the interface, else in a new link, pinned.
pub fn attach_xdp(xdp: &mut Xdp, links_dir: &Path, uplink: &UplinkLink) -> Result<()> {
    let pin = Hook::Xdp.pin(links_dir, &uplink.name);
    if let Some(old) = pinned(&pin)? {
        let link =
            XdpLink::try_from(old).map_err(Error::dataplane("adopting a pinned XDP link"))?;
        match xdp.attach_to_link(link) {
            // The link stays pinned; dropping our handle only closes a descriptor.
            Ok(id) => {
                return xdp
                    .take_link(id)
                    .map(drop)
                    .map_err(Error::dataplane("taking the XDP link"));
            }
            // Its interface is gone (and one of the same name is here now): attach anew.
            Err(e) => {
                tracing::info!(uplink = %uplink.name, "pinned XDP link is stale ({e}); attaching anew");
                remove_pin(&pin)?;
            }
        }
    }
    let id = xdp
        .attach_to_if_index(uplink.index, XdpMode::Default)
        .or_else(|_| xdp.attach_to_if_index(uplink.index, XdpMode::Skb))
        .map_err(Error::dataplane(format!(
            "attaching XDP to {}",
            uplink.name
        )))?;
    let link = xdp
        .take_link(id)
        .map_err(Error::dataplane("taking the XDP link"))?;
    let link = FdLink::try_from(link).map_err(Error::dataplane("XDP link is not a bpf_link"))?;
    link.pin(&pin)
        .map_err(Error::dataplane(format!("pinning {}", pin.display())))?;
    Ok(())
}

/// Puts the (loaded) TC uplink program on `uplink`'s ingress, as [`attach_xdp`] does;
/// `hook` ([`Hook::Tc`] or [`Hook::TcL3`]) names the pin.
pub fn attach_tc(
    tc: &mut SchedClassifier,
    links_dir: &Path,
    uplink: &UplinkLink,
    hook: Hook,
) -> Result<()> {
    let pin = hook.pin(links_dir, &uplink.name);
    if let Some(old) = pinned(&pin)? {
        let link = SchedClassifierLink::try_from(old)
            .map_err(Error::dataplane("adopting a pinned TC link"))?;
        match tc.attach_to_link(link) {
            Ok(id) => {
                return tc
                    .take_link(id)
                    .map(drop)
                    .map_err(Error::dataplane("taking the TC link"));
            }
            Err(e) => {
                tracing::info!(uplink = %uplink.name, "pinned TC link is stale ({e}); attaching anew");
                remove_pin(&pin)?;
            }
        }
    }
    let id = tc
        .attach(&uplink.name, TcAttachType::Ingress)
        .map_err(Error::dataplane(format!("attaching TC to {}", uplink.name)))?;
    let link = tc
        .take_link(id)
        .map_err(Error::dataplane("taking the TC link"))?;
    let link = FdLink::try_from(link).map_err(Error::dataplane(
        "TC link is not a bpf_link (TCX needs kernel >= 6.6)",
    ))?;
    link.pin(&pin)
        .map_err(Error::dataplane(format!("pinning {}", pin.display())))?;
    Ok(())
}

/// Runs `swap` on every uplink link pinned with `hook`. A link it cannot swap (its
/// interface gone) is logged and left to [`Dataplane::set_uplinks`](super::Dataplane),
/// which attaches anew or removes it.
fn swap_pinned(
    links_dir: &Path,
    hook: Hook,
    mut swap: impl FnMut(FdLink) -> Result<()>,
) -> Result<()> {
    for (interface, pinned_hook) in attached(links_dir)? {
        if pinned_hook != hook {
            continue;
        }
        let Some(link) = pinned(&hook.pin(links_dir, &interface))? else {
            continue;
        };
        if let Err(e) = swap(link) {
            tracing::info!(uplink = %interface, hook = hook.name(), "pinned link not swapped: {e}");
        }
    }
    Ok(())
}

/// Puts the (loaded) XDP program into every XDP uplink link an earlier agent pinned, in
/// place: an upgraded agent does it as soon as it has copied the old tables, before it
/// knows which interfaces are wanted, so that no old program writes them afterwards.
pub fn swap_pinned_xdp(xdp: &mut Xdp, links_dir: &Path) -> Result<()> {
    swap_pinned(links_dir, Hook::Xdp, |link| {
        let link =
            XdpLink::try_from(link).map_err(Error::dataplane("adopting a pinned XDP link"))?;
        let id = xdp
            .attach_to_link(link)
            .map_err(Error::dataplane("replacing the XDP program"))?;
        xdp.take_link(id)
            .map(drop)
            .map_err(Error::dataplane("taking the XDP link"))
    })
}

/// [`swap_pinned_xdp`] for the TC uplink links of `hook` ([`Hook::Tc`] or
/// [`Hook::TcL3`], each with its own program).
pub fn swap_pinned_tc(tc: &mut SchedClassifier, links_dir: &Path, hook: Hook) -> Result<()> {
    swap_pinned(links_dir, hook, |link| {
        let link = SchedClassifierLink::try_from(link)
            .map_err(Error::dataplane("adopting a pinned TC link"))?;
        let id = tc
            .attach_to_link(link)
            .map_err(Error::dataplane("replacing the uplink's TC program"))?;
        tc.take_link(id)
            .map(drop)
            .map_err(Error::dataplane("taking the TC link"))
    })
}

/// Detaches the uplink program from `interface` (dropping the last reference to its link).
pub fn detach(links_dir: &Path, interface: &str, hook: Hook) -> Result<()> {
    remove_pin(&hook.pin(links_dir, interface))
}

/// The uplinks attached now, as their pins say: `(interface, hook)`.
pub fn attached(links_dir: &Path) -> Result<Vec<(String, Hook)>> {
    let entries =
        fs::read_dir(links_dir).map_err(Error::io(format!("listing {}", links_dir.display())))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("listing {}", links_dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((interface, hook)) = Hook::of_pin(&name) {
            out.push((interface.to_string(), hook));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplink(kind: Option<&str>, framing: Framing) -> UplinkLink {
        UplinkLink {
            name: "up0".into(),
            index: 2,
            kind: kind.map(Into::into),
            framing,
        }
    }

    #[test]
    fn auto_takes_tc_where_partial_checksums_may_arrive() {
        let choose = |setting, kind| Hook::choose(setting, &uplink(kind, Framing::Ethernet));
        assert_eq!(choose(UplinkHook::Auto, Some("veth")), Ok(Hook::Tc));
        assert_eq!(choose(UplinkHook::Auto, Some("tun")), Ok(Hook::Tc));
        assert_eq!(choose(UplinkHook::Auto, None), Ok(Hook::Xdp));
        assert_eq!(choose(UplinkHook::Auto, Some("bond")), Ok(Hook::Xdp));
        assert_eq!(choose(UplinkHook::Xdp, Some("veth")), Ok(Hook::Xdp));
        assert_eq!(choose(UplinkHook::Tc, None), Ok(Hook::Tc));
    }

    #[test]
    fn layer3_devices_get_their_tc_program_and_refuse_xdp() {
        for kind in [
            Some("ipip"),
            Some("gre"),
            Some("wireguard"),
            Some("tun"),
            None,
        ] {
            let l3 = uplink(kind, Framing::Ip);
            assert_eq!(Hook::choose(UplinkHook::Auto, &l3), Ok(Hook::TcL3));
            assert_eq!(Hook::choose(UplinkHook::Tc, &l3), Ok(Hook::TcL3));
            assert_eq!(Hook::choose(UplinkHook::Xdp, &l3), Err(NoXdpOnLayer3));
        }
        assert_eq!(Framing::of(LinkLayerType::Ether), Some(Framing::Ethernet));
        for l3 in [
            LinkLayerType::None,
            LinkLayerType::Tunnel,
            LinkLayerType::Ipgre,
        ] {
            assert_eq!(Framing::of(l3), Some(Framing::Ip));
        }
        assert_eq!(Framing::of(LinkLayerType::Loopback), None);
    }

    #[test]
    fn pins_name_their_interface_and_hook() {
        let dir = Path::new("/links");
        for hook in [Hook::Xdp, Hook::Tc, Hook::TcL3] {
            let pin = hook.pin(dir, "eth0");
            let file = pin.file_name().unwrap().to_str().unwrap();
            assert_eq!(Hook::of_pin(file), Some(("eth0", hook)));
        }
        // A container veth's TC link is not an uplink's.
        assert_eq!(Hook::of_pin("tc_veth1234"), None);
        assert_eq!(Hook::of_pin("cgroup_sock_connect4"), None);
    }
}
