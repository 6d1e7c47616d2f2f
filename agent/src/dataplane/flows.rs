//! The eBPF dataplane's flow tables as the agent reads them: which CONNTRACK (or
//! CONNTRACK6) entries belong together, when a flow has been idle long enough to go, and
//! one bounded walk of a map that counts its errors instead of dropping them. The deciding
//! parts are pure, so they are tested without a kernel.

use std::{
    borrow::{Borrow, BorrowMut},
    collections::HashMap as StdHashMap,
    fmt::Debug,
    hash::Hash,
    time::Duration,
};

use aya::maps::{HashMap, IterableMap as _, MapData, MapError};
use dataplane_common::{
    CT_CLOSING, CT_ESTABLISHED, CT_ORIGINAL, CtEntry, CtEntry6, CtKey, CtKey6, IPPROTO_TCP,
    ct::{TrackedEntry as _, TrackedKey},
};

use super::FlowTimeouts;

/// How long a flow of protocol `proto` in `state` (`CT_*`) may be idle, as nf_conntrack
/// judges it: TCP by its handshake, UDP and ICMP by whether an answer came.
pub fn idle_timeout(timeouts: &FlowTimeouts, proto: u8, state: u8) -> Duration {
    match (proto == IPPROTO_TCP, state) {
        (true, CT_ESTABLISHED) => timeouts.tcp_established,
        (true, CT_CLOSING) => timeouts.tcp_closing,
        (true, _) => timeouts.tcp_unreplied,
        (false, CT_ESTABLISHED) => timeouts.udp_stream,
        (false, _) => timeouts.udp_unreplied,
    }
}

/// Whether a flow last seen at `last_seen_ns` is idle past its timeout at `now_ns` (both
/// on the clock of `bpf_ktime_get_ns`).
pub fn is_expired(
    timeouts: &FlowTimeouts,
    proto: u8,
    state: u8,
    last_seen_ns: u64,
    now_ns: u64,
) -> bool {
    let limit = idle_timeout(timeouts, proto, state).as_nanos();
    u128::from(now_ns.saturating_sub(last_seen_ns)) > limit
}

/// The clock `bpf_ktime_get_ns` reads, which the tables' `last_seen_ns` are on.
pub fn monotonic_ns() -> crate::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_err(crate::Error::sys("reading the monotonic clock"))?;
    Ok(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

/// A connection tracking table's key as the agent reads it: either family's
/// ([`CtKey`] for CONNTRACK, [`CtKey6`] for CONNTRACK6), hashable, with entries that say
/// when their direction last saw a packet.
pub trait Tracked: TrackedKey<Entry: LastSeen + Debug + Eq> + Hash + Debug {}

impl Tracked for CtKey {}
impl Tracked for CtKey6 {}

/// When an entry's direction last saw a packet (`bpf_ktime_get_ns`).
pub trait LastSeen {
    fn last_seen_ns(&self) -> u64;
}

impl LastSeen for CtEntry {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

impl LastSeen for CtEntry6 {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

/// One tracked flow: its two entries, either of which may be missing (an orphan: a flow
/// half made or half removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtFlow<K: Tracked = CtKey> {
    pub original: Option<(K, K::Entry)>,
    pub reply: Option<(K, K::Entry)>,
}

impl<K: Tracked> CtFlow<K> {
    pub fn keys(&self) -> impl Iterator<Item = K> + use<K> {
        [self.original, self.reply]
            .into_iter()
            .flatten()
            .map(|(key, _)| key)
    }

    fn entries(&self) -> impl Iterator<Item = &(K, K::Entry)> {
        self.original.iter().chain(self.reply.iter())
    }

    pub fn is_orphan(&self) -> bool {
        self.original.is_none() || self.reply.is_none()
    }

    pub fn proto(&self) -> u8 {
        self.entries().next().map_or(0, |(key, _)| key.proto())
    }

    /// The later packet of either direction.
    pub fn last_seen_ns(&self) -> u64 {
        self.entries()
            .map(|(_, e)| e.last_seen_ns())
            .max()
            .unwrap_or(0)
    }

    /// The further state of the two entries: the programs keep them equal, but a packet
    /// may fall between the two updates.
    pub fn state(&self) -> u8 {
        self.entries().map(|(_, e)| e.state()).max().unwrap_or(0)
    }

    /// Whether the flow has the address `ip` (as the table holds it) at either end, as
    /// seen on either side of the translation.
    pub fn involves(&self, ip: K::Addr) -> bool {
        self.entries()
            .any(|(key, entry)| key.src() == ip || key.dst() == ip || entry.nat_ip() == ip)
    }
}

/// Groups a tracking table's entries into flows, in one pass and a hash map: each
/// original entry names its reply's key ([`TrackedKey::peer`]); replies that no original
/// names are orphans.
pub fn pair_flows<K: Tracked>(entries: StdHashMap<K, K::Entry>) -> Vec<CtFlow<K>> {
    let (originals, mut replies): (StdHashMap<_, _>, StdHashMap<_, _>) = entries
        .into_iter()
        .partition(|(_, entry)| entry.direction() == CT_ORIGINAL);
    let mut flows = Vec::with_capacity(originals.len() + replies.len() / 8);
    for (key, entry) in originals {
        flows.push(CtFlow {
            original: Some((key, entry)),
            reply: replies.remove_entry(&key.peer(&entry)),
        });
    }
    flows.extend(replies.into_iter().map(|reply| CtFlow {
        original: None,
        reply: Some(reply),
    }));
    flows
}

/// What a cleanup pass does with a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Idle past its timeout: both entries go.
    Expire,
    /// One direction only and not idle yet: it goes when the next pass still finds it
    /// alone, because the programs make a flow's two entries one after the other and a
    /// walk may pass between them.
    Orphan,
}

pub fn judge<K: Tracked>(flow: &CtFlow<K>, timeouts: &FlowTimeouts, now_ns: u64) -> Verdict {
    if is_expired(
        timeouts,
        flow.proto(),
        flow.state(),
        flow.last_seen_ns(),
        now_ns,
    ) {
        Verdict::Expire
    } else if flow.is_orphan() {
        Verdict::Orphan
    } else {
        Verdict::Keep
    }
}

/// The entries of one walk of a hash map, and what went wrong on the way.
pub struct Walk<K, V> {
    pub entries: StdHashMap<K, V>,
    /// Failed reads: the walk went on past a value that could not be read, and ended at a
    /// key that could not be.
    pub errors: Vec<MapError>,
    /// The walk reached its step limit before the end of the map.
    pub cut_short: bool,
}

impl<K, V> Walk<K, V> {
    /// Every entry of the map was read.
    pub fn is_complete(&self) -> bool {
        self.errors.is_empty() && !self.cut_short
    }

    /// Failures of the walk, one count each.
    pub fn error_count(&self) -> u64 {
        self.errors.len() as u64 + u64::from(self.cut_short)
    }

    /// The entries, and an error when the walk missed some.
    pub fn split(self, what: &str) -> (StdHashMap<K, V>, crate::Result<()>) {
        let Walk {
            entries,
            errors,
            cut_short,
        } = self;
        let problem = match errors.into_iter().next() {
            Some(e) => Err(crate::Error::dataplane(format!("reading {what}"))(e)),
            None if cut_short => Err(crate::Error::Dataplane {
                context: format!("reading {what}"),
                source: "the walk met more keys than the map holds (entries removed under it)"
                    .into(),
            }),
            None => Ok(()),
        };
        (entries, problem)
    }

    /// The entries, or an error when the walk missed some.
    pub fn into_complete(self, what: &str) -> crate::Result<StdHashMap<K, V>> {
        let (entries, problem) = self.split(what);
        problem.map(|()| entries)
    }
}

/// Reads every entry of `map` once. Deletions under a walk make the kernel restart it from
/// the first key, so it is bounded to twice the map's size (plus a margin) in steps;
/// restarted keys are read again and counted once.
pub fn walk<T: Borrow<MapData>, K: aya::Pod + Eq + Hash, V: aya::Pod>(
    map: &HashMap<T, K, V>,
) -> Walk<K, V> {
    let mut walk = Walk {
        entries: StdHashMap::new(),
        errors: Vec::new(),
        cut_short: false,
    };
    let max_entries = match map.map().info() {
        Ok(info) => info.max_entries() as usize,
        Err(e) => {
            walk.errors.push(e);
            return walk;
        }
    };
    let limit = 2 * max_entries + 64;
    for (steps, item) in map.iter().enumerate() {
        if steps == limit {
            walk.cut_short = true;
            break;
        }
        match item {
            Ok((key, value)) => {
                walk.entries.insert(key, value);
            }
            Err(e) => walk.errors.push(e),
        }
    }
    walk
}

/// A handle of its own on the hash map pinned as `pin_dir/name`.
pub fn open_table<K: aya::Pod, V: aya::Pod>(
    pin_dir: &std::path::Path,
    name: &str,
) -> crate::Result<HashMap<MapData, K, V>> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(crate::Error::dataplane(format!(
        "opening {}",
        path.display()
    )))?;
    let map = aya::maps::Map::from_map_data(data).map_err(crate::Error::dataplane(name))?;
    HashMap::try_from(map).map_err(crate::Error::dataplane(name))
}

/// A delete of a key that is not there: fine for idempotent removal.
pub fn is_missing_key(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Removes `key` from `map`: `Ok(true)` if it was there.
pub fn remove_key<T: BorrowMut<MapData>, K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<T, K, V>,
    key: &K,
) -> Result<bool, MapError> {
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(e) if is_missing_key(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The `memlock:` figure of a BPF map's /proc/PID/fdinfo text: the kernel's account of
/// its memory, in bytes.
pub fn parse_memlock(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))?
        .trim()
        .parse()
        .ok()
}

/// The kernel memory of the map behind `map`, in bytes.
pub fn map_memory(map: &MapData) -> crate::Result<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let path = format!("/proc/self/fdinfo/{}", map.fd().as_fd().as_raw_fd());
    let text =
        std::fs::read_to_string(&path).map_err(crate::Error::io(format!("reading {path}")))?;
    parse_memlock(&text).ok_or_else(|| crate::Error::Io {
        context: format!("reading {path}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no memlock line"),
    })
}

#[cfg(test)]
mod tests {
    use dataplane_common::{CT_NEW, CT_REPLIED, CT_REPLY, IPPROTO_ICMP, IPPROTO_UDP};

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn timeouts() -> FlowTimeouts {
        FlowTimeouts {
            tcp_established: Duration::from_secs(432_000),
            tcp_unreplied: Duration::from_secs(30),
            tcp_closing: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_stream: Duration::from_secs(120),
        }
    }

    fn ip(last: u8) -> u32 {
        u32::from(std::net::Ipv4Addr::new(10, 0, 0, last)).to_be()
    }

    /// A masqueraded flow container:40000 → world:53 leaving as node:61000, as the
    /// programs record it.
    fn masquerade_pair(proto: u8, state: u8, seen: (u64, u64)) -> [(CtKey, CtEntry); 2] {
        let (container, world, node) = (ip(2), ip(99), ip(1));
        let original = CtKey {
            src_ip_be: container,
            dst_ip_be: world,
            sport_be: 40000u16.to_be(),
            dport_be: 53u16.to_be(),
            proto,
            _pad: [0; 3],
        };
        let reply = CtKey {
            src_ip_be: world,
            dst_ip_be: node,
            sport_be: 53u16.to_be(),
            dport_be: 61000u16.to_be(),
            proto,
            _pad: [0; 3],
        };
        [
            (
                original,
                CtEntry {
                    nat_ip_be: node,
                    nat_port_be: 61000u16.to_be(),
                    direction: CT_ORIGINAL,
                    state,
                    last_seen_ns: seen.0,
                    ..CtEntry::default()
                },
            ),
            (
                reply,
                CtEntry {
                    nat_ip_be: container,
                    nat_port_be: 40000u16.to_be(),
                    direction: CT_REPLY,
                    state,
                    last_seen_ns: seen.1,
                    ..CtEntry::default()
                },
            ),
        ]
    }

    /// A flow a `--link` allowed: not translated, the reply's nat naming the client.
    fn link_pair() -> [(CtKey, CtEntry); 2] {
        let (client, server) = (ip(3), ip(4));
        let original = CtKey {
            src_ip_be: client,
            dst_ip_be: server,
            sport_be: 50000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let reply = CtKey {
            src_ip_be: server,
            dst_ip_be: client,
            sport_be: 80u16.to_be(),
            dport_be: 50000u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let entry = |direction| CtEntry {
            nat_ip_be: client,
            nat_port_be: 50000u16.to_be(),
            direction,
            state: CT_ESTABLISHED,
            ..CtEntry::default()
        };
        [(original, entry(CT_ORIGINAL)), (reply, entry(CT_REPLY))]
    }

    #[test]
    fn entries_pair_up_and_leftovers_are_orphans() {
        let [o1, r1] = masquerade_pair(IPPROTO_UDP, CT_ESTABLISHED, (1, 2));
        let [o2, r2] = link_pair();
        let [lone_original, _] = masquerade_pair(IPPROTO_TCP, CT_NEW, (3, 3));
        let [_, lone_reply] = masquerade_pair(IPPROTO_ICMP, CT_NEW, (4, 4));
        let entries = StdHashMap::from([o1, r1, o2, r2, lone_original, lone_reply]);
        let mut flows = pair_flows(entries);
        flows.sort_by_key(|f| (f.last_seen_ns(), f.proto()));
        assert_eq!(
            flows,
            vec![
                CtFlow {
                    original: Some(o2),
                    reply: Some(r2)
                },
                CtFlow {
                    original: Some(o1),
                    reply: Some(r1)
                },
                CtFlow {
                    original: Some(lone_original),
                    reply: None
                },
                CtFlow {
                    original: None,
                    reply: Some(lone_reply)
                },
            ]
        );
        assert_eq!(flows[1].keys().collect::<Vec<_>>(), vec![o1.0, r1.0]);
        assert_eq!(flows[3].keys().collect::<Vec<_>>(), vec![lone_reply.0]);
        assert!(flows[1].involves(ip(2)) && flows[1].involves(ip(99)));
        assert!(flows[0].involves(ip(4)) && !flows[0].involves(ip(2)));
        assert!(
            flows[3].involves(ip(2)),
            "an orphan reply names its container"
        );
    }

    #[test]
    fn ipv6_entries_pair_up_as_ipv4_ones() {
        let octets = |last: u16| std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last).octets();
        let (container, world, node) = (octets(2), octets(99), octets(1));
        let original = CtKey6 {
            src_ip: container,
            dst_ip: world,
            sport_be: 40000u16.to_be(),
            dport_be: 443u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let reply = CtKey6 {
            src_ip: world,
            dst_ip: node,
            sport_be: 443u16.to_be(),
            dport_be: 61000u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let entry = |nat_ip, nat_port: u16, direction| CtEntry6 {
            nat_ip,
            nat_port_be: nat_port.to_be(),
            direction,
            state: CT_ESTABLISHED,
            last_seen_ns: 7,
            ..CtEntry6::default()
        };
        let (o, r) = (
            (original, entry(node, 61000, CT_ORIGINAL)),
            (reply, entry(container, 40000, CT_REPLY)),
        );
        let flows = pair_flows(StdHashMap::from([o, r]));
        assert_eq!(
            flows,
            vec![CtFlow {
                original: Some(o),
                reply: Some(r)
            }]
        );
        assert!(flows[0].involves(node) && flows[0].involves(container));
        assert!(!flows[0].involves(octets(3)));
        assert_eq!(
            (flows[0].last_seen_ns(), flows[0].proto()),
            (7, IPPROTO_TCP)
        );
    }

    #[test]
    fn timeouts_follow_protocol_and_state() {
        let t = timeouts();
        let cases = [
            (IPPROTO_TCP, CT_NEW, 30),
            (IPPROTO_TCP, CT_REPLIED, 30),
            (IPPROTO_TCP, CT_ESTABLISHED, 432_000),
            (IPPROTO_TCP, CT_CLOSING, 10),
            (IPPROTO_UDP, CT_NEW, 30),
            (IPPROTO_UDP, CT_ESTABLISHED, 120),
            (IPPROTO_ICMP, CT_NEW, 30),
            (IPPROTO_ICMP, CT_ESTABLISHED, 120),
        ];
        for (proto, state, seconds) in cases {
            assert_eq!(
                idle_timeout(&t, proto, state),
                Duration::from_secs(seconds),
                "proto {proto} state {state}"
            );
            let last_seen = 1000 * SECOND;
            let at = |s: u64| last_seen + s * SECOND;
            assert!(!is_expired(&t, proto, state, last_seen, at(seconds)));
            assert!(is_expired(&t, proto, state, last_seen, at(seconds) + 1));
        }
        assert!(
            !is_expired(&t, IPPROTO_UDP, CT_NEW, 5 * SECOND, SECOND),
            "a packet after the pass began is not idle"
        );
    }

    #[test]
    fn a_flow_is_judged_by_its_later_direction_and_further_state() {
        let t = timeouts();
        let now = 10_000 * SECOND;
        let pair = |state, seen| {
            let [o, r] = masquerade_pair(IPPROTO_TCP, state, seen);
            CtFlow {
                original: Some(o),
                reply: Some(r),
            }
        };
        // The container's side idle for an hour, the reply a second ago: established.
        let live = pair(CT_ESTABLISHED, (now - 3600 * SECOND, now - SECOND));
        assert_eq!(judge(&live, &t, now), Verdict::Keep);
        // Closing: ten seconds idle are enough.
        let closing = pair(CT_CLOSING, (now - 11 * SECOND, now - 11 * SECOND));
        assert_eq!(judge(&closing, &t, now), Verdict::Expire);
        let mut half = closing;
        half.reply.as_mut().unwrap().1.state = CT_ESTABLISHED;
        assert_eq!(judge(&half, &t, now), Verdict::Expire, "the further state");
        // A SYN never answered.
        let unanswered = pair(CT_NEW, (now - 31 * SECOND, now - 31 * SECOND));
        assert_eq!(judge(&unanswered, &t, now), Verdict::Expire);
        // A fresh orphan waits for the next pass; an idle one goes now.
        let mut orphan = pair(CT_NEW, (now, now));
        orphan.original = None;
        assert_eq!(judge(&orphan, &t, now), Verdict::Orphan);
        orphan.reply.as_mut().unwrap().1.last_seen_ns = now - 31 * SECOND;
        assert_eq!(judge(&orphan, &t, now), Verdict::Expire);
    }

    #[test]
    fn memlock_is_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\n\
                      key_size:\t16\nvalue_size:\t32\nmax_entries:\t65536\nmap_flags:\t0x1\n\
                      map_extra:\t0x0\nmemlock:\t1181184\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(parse_memlock(fdinfo), Some(1_181_184));
        assert_eq!(parse_memlock("pos:\t0\n"), None);
    }
}
