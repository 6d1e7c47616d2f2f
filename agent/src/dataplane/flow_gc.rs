//! Idle-flow cleanup of the eBPF dataplane's flow tables: a thread of its own, with map
//! handles of its own (opened from the pins), so that API calls never wait for it. Each
//! pass walks each table once; pairs are matched through a hash map ([`flows::pair_flows`]).

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData, MapError};
use dataplane_common::{
    CONNTRACK, CONNTRACK6, CtEntry, CtEntry6, CtKey, CtKey6, FlowKey, FlowKey6, NAT_FLOWS,
    NAT_FLOWS6, NatFlow, NatFlow6, ct::TrackedKey,
};

use super::{
    FlowTimeouts,
    flows::{self, CtFlow, Verdict},
};
use crate::{Error, Result, model::FlowGcStats};

/// Time between passes.
pub const GC_INTERVAL: Duration = Duration::from_secs(2);
/// When a pass takes longer than a quarter of [`GC_INTERVAL`], the next one waits this many
/// times as long, so that cleanup never takes more than a fifth of a CPU.
const WAIT_FACTOR: u32 = 4;

/// What the last pass saw and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub stats: FlowGcStats,
    /// Entries of CONNTRACK and of NAT_FLOWS with NAT_FLOWS6 that the last pass walked over.
    pub conntrack_entries: u64,
    pub nat_flows_entries: u64,
}

/// The running cleanup. Dropping it lets the thread end at its next wake-up; [`stop`]
/// also waits for it.
///
/// [`stop`]: FlowGc::stop
pub struct FlowGc {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    report: Arc<Mutex<GcReport>>,
}

impl FlowGc {
    /// Opens the flow tables pinned under `pin_dir` and starts cleaning them.
    pub fn start(pin_dir: &Path, timeouts: FlowTimeouts) -> Result<Self> {
        let report = Arc::new(Mutex::new(GcReport::default()));
        let mut collector = Collector {
            conntrack: flows::open_table(pin_dir, CONNTRACK)?,
            nat_flows: flows::open_table(pin_dir, NAT_FLOWS)?,
            nat_flows6: flows::open_table(pin_dir, NAT_FLOWS6)?,
            conntrack6: flows::open_table(pin_dir, CONNTRACK6)?,
            timeouts,
            orphans: HashSet::new(),
            report: report.clone(),
        };
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("flow-gc".into())
            .spawn(move || collector.run(&stopped))
            .map_err(Error::io("starting the flow GC thread"))?;
        Ok(FlowGc {
            stop: Some(stop),
            thread: Some(thread),
            report,
        })
    }

    pub fn report(&self) -> GcReport {
        *self.report.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the thread, after the pass it may be running.
    pub fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the flow GC thread panicked");
        }
    }
}

/// The work of one pass.
#[derive(Default)]
struct Pass {
    scanned: u64,
    removed: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Pass {
    fn error(&mut self, what: &str, e: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error
            .get_or_insert_with(|| format!("{what}: {e}"));
    }

    fn walked<K, V>(&mut self, what: &str, walk: &flows::Walk<K, V>) {
        self.scanned += walk.entries.len() as u64;
        for e in &walk.errors {
            self.error(what, e);
        }
        if walk.cut_short {
            self.error(what, "cut short (entries removed under the walk)");
        }
    }
}

struct Collector {
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    nat_flows: HashMap<MapData, FlowKey, NatFlow>,
    nat_flows6: HashMap<MapData, FlowKey6, NatFlow6>,
    conntrack6: HashMap<MapData, CtKey6, CtEntry6>,
    timeouts: FlowTimeouts,
    /// Keys found without their other direction by the last pass.
    orphans: HashSet<CtKey>,
    report: Arc<Mutex<GcReport>>,
}

impl Collector {
    fn run(&mut self, stopped: &mpsc::Receiver<()>) {
        let mut wait = GC_INTERVAL;
        // Anything but a timeout is the handle going away: stop.
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
            wait = GC_INTERVAL.max(self.pass() * WAIT_FACTOR);
        }
    }

    /// One pass over both tables; returns how long it took.
    fn pass(&mut self) -> Duration {
        let started = Instant::now();
        let mut pass = Pass::default();
        let mut fill = (0, 0);
        match flows::monotonic_ns() {
            Ok(now) => {
                fill.0 = self.expire_conntrack(now, &mut pass);
                self.expire_conntrack6(now, &mut pass);
                fill.1 = self.expire_nat_flows(now, &mut pass);
            }
            Err(e) => pass.error("reading the clock", e),
        }
        let took = started.elapsed();
        if let Some(first) = &pass.first_error {
            tracing::warn!(
                errors = pass.errors,
                "flow GC: map operations failed; the first: {first}"
            );
        }
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = &mut report.stats;
        stats.passes += 1;
        stats.last_pass_micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        stats.last_scanned = pass.scanned;
        stats.last_removed = pass.removed;
        stats.last_errors = pass.errors;
        stats.removed += pass.removed;
        stats.errors += pass.errors;
        (report.conntrack_entries, report.nat_flows_entries) = fill;
        took
    }

    /// Removes idle CONNTRACK flows (both entries) and entries left without their other
    /// direction; returns the entries walked.
    fn expire_conntrack(&mut self, now: u64, pass: &mut Pass) -> u64 {
        let walk = flows::walk(&self.conntrack);
        pass.walked("walking CONNTRACK", &walk);
        let complete = walk.is_complete();
        let fill = walk.entries.len() as u64;
        let mut orphans = HashSet::new();
        for flow in flows::pair_flows(walk.entries) {
            match flows::judge(&flow, &self.timeouts, now) {
                Verdict::Keep => {}
                Verdict::Expire => {
                    if self.still_expired(&flow, now, pass) {
                        self.remove_conntrack(flow.keys(), pass);
                    }
                }
                // A partial walk may have missed the other direction.
                Verdict::Orphan if !complete => {}
                Verdict::Orphan => {
                    let (gone, fresh): (Vec<CtKey>, Vec<CtKey>) =
                        flow.keys().partition(|k| self.orphans.contains(k));
                    self.remove_conntrack(gone, pass);
                    orphans.extend(fresh);
                }
            }
        }
        self.orphans = orphans;
        fill
    }

    /// Reads the flow's entries again just before removing them: a packet may have come
    /// since the walk read them.
    fn still_expired(&self, flow: &CtFlow, now: u64, pass: &mut Pass) -> bool {
        let mut reread = |entry: Option<(CtKey, CtEntry)>| -> Result<Option<(CtKey, CtEntry)>, ()> {
            let Some((key, _)) = entry else {
                return Ok(None);
            };
            match self.conntrack.get(&key, 0) {
                Ok(value) => Ok(Some((key, value))),
                Err(MapError::KeyNotFound) => Ok(None),
                Err(e) => {
                    pass.error("reading a CONNTRACK entry", e);
                    Err(())
                }
            }
        };
        let (Ok(original), Ok(reply)) = (reread(flow.original), reread(flow.reply)) else {
            return false;
        };
        let fresh = CtFlow { original, reply };
        fresh.keys().next().is_some()
            && flows::judge(&fresh, &self.timeouts, now) == Verdict::Expire
    }

    fn remove_conntrack(&mut self, keys: impl IntoIterator<Item = CtKey>, pass: &mut Pass) {
        for key in keys {
            match flows::remove_key(&mut self.conntrack, &key) {
                Ok(removed) => pass.removed += u64::from(removed),
                Err(e) => pass.error("removing a CONNTRACK entry", e),
            }
        }
    }

    /// Removes the idle flows of CONNTRACK6 (IPv6 masquerade and links): an entry goes, with its
    /// other direction, when both are idle (each is refreshed by its own direction's
    /// packets) or the other is gone.
    fn expire_conntrack6(&mut self, now: u64, pass: &mut Pass) {
        let timeouts = self.timeouts;
        let idle = |key: &CtKey6, entry: &CtEntry6| {
            flows::is_expired(&timeouts, key.proto, entry.state, entry.last_seen_ns, now)
        };
        let walk = flows::walk(&self.conntrack6);
        pass.walked("walking CONNTRACK6", &walk);
        for (key, entry) in &walk.entries {
            if !idle(key, entry) {
                continue;
            }
            let peer = key.peer(entry);
            // Read again: a packet may have renewed either entry since the walk.
            let still_idle = |k: &CtKey6| match self.conntrack6.get(k, 0) {
                Ok(e) => idle(k, &e),
                Err(MapError::KeyNotFound) => true,
                Err(_) => false,
            };
            if !(still_idle(key) && still_idle(&peer)) {
                continue;
            }
            for k in [key, &peer] {
                match flows::remove_key(&mut self.conntrack6, k) {
                    Ok(removed) => pass.removed += u64::from(removed),
                    Err(e) => pass.error("removing a CONNTRACK6 entry", e),
                }
            }
        }
    }

    /// Removes idle published-port flows of both families; returns the entries walked.
    fn expire_nat_flows(&mut self, now: u64, pass: &mut Pass) -> u64 {
        let timeouts = self.timeouts;
        let v4 = expire_idle(&mut self.nat_flows, NAT_FLOWS, pass, |key, flow| {
            flows::is_expired(&timeouts, key.proto, flow.state, flow.last_seen_ns, now)
        });
        let v6 = expire_idle(&mut self.nat_flows6, NAT_FLOWS6, pass, |key, flow| {
            flows::is_expired(&timeouts, key.proto, flow.state, flow.last_seen_ns, now)
        });
        v4 + v6
    }
}

/// Removes the entries of `table` (named `what`) that `expired` says are idle, each read
/// again before it goes (a packet may have renewed it since the walk); returns the entries
/// walked.
fn expire_idle<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    table: &mut HashMap<MapData, K, V>,
    what: &str,
    pass: &mut Pass,
    expired: impl Fn(&K, &V) -> bool,
) -> u64 {
    let walk = flows::walk(&*table);
    pass.walked(&format!("walking {what}"), &walk);
    let fill = walk.entries.len() as u64;
    let idle: Vec<K> = walk
        .entries
        .iter()
        .filter(|(key, flow)| expired(key, flow))
        .map(|(key, _)| *key)
        .collect();
    for key in idle {
        match table.get(&key, 0) {
            Ok(flow) if expired(&key, &flow) => {}
            Ok(_) | Err(MapError::KeyNotFound) => continue,
            Err(e) => {
                pass.error(&format!("reading a {what} entry"), e);
                continue;
            }
        }
        match flows::remove_key(table, &key) {
            Ok(removed) => pass.removed += u64::from(removed),
            Err(e) => pass.error(&format!("removing a {what} entry"), e),
        }
    }
    fill
}
