//! Fault injection, for tests only: named crash points at each step the service applies,
//! where an armed agent kills itself with SIGKILL (as `kill -9` would: no destructor, no
//! flush, no rollback), so that a test can check that the next start leaves nothing half
//! made. Disarmed (the default) a crash point costs one relaxed atomic load.
//!
//! Armed by the hidden agent flag `--crash-at POINT[:N]` (or `BPFBRIDGE_CRASH_AT`): the
//! agent dies the `N`th time (1 when not given) it reaches `POINT`. `bpfbridge debug
//! crash-points` lists every point from [`CrashPoint::ALL`], the registry the call sites
//! use, so that a test tries each one and a new point cannot be left out silently.

use std::{
    fmt,
    str::FromStr,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
};

use crate::{Error, Result};

/// The environment variable that arms a crash point, like `--crash-at`.
pub const CRASH_AT_ENV: &str = "BPFBRIDGE_CRASH_AT";

macro_rules! crash_points {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// A step of an operation where an armed agent dies.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum CrashPoint {
            $($(#[doc = $doc])* $variant,)*
        }

        impl CrashPoint {
            /// Every crash point, in the order the operations reach them.
            pub const ALL: &[CrashPoint] = &[$(CrashPoint::$variant,)*];

            /// The point's name, as `--crash-at` takes it.
            pub fn name(self) -> &'static str {
                match self {
                    $(CrashPoint::$variant => $name,)*
                }
            }
        }
    };
}

crash_points! {
    /// `network create`: the pending record is saved; no bridge yet.
    NetworkCreateRecorded = "network-create:recorded",
    /// `network create`: the bridge is made and addressed; the record is still pending.
    NetworkCreateBridgeMade = "network-create:bridge-made",
    /// `network create`: the record is saved done; the dataplane has not the policy yet.
    NetworkCreateSaved = "network-create:saved",
    /// `network rm`: the record is marked pending; nothing removed yet.
    NetworkRemoveMarked = "network-remove:marked",
    /// `network rm`: the dataplane has let the network go; its bridge and record remain.
    NetworkRemovePolicyGone = "network-remove:policy-gone",
    /// `container create`: the pending record is saved; nothing made yet.
    ContainerCreateRecorded = "container-create:recorded",
    /// `container create`: the container's own namespace is made.
    ContainerCreateNetnsMade = "container-create:netns-made",
    /// An endpoint (create, connect): the veth pair exists, unconfigured, both ends on the
    /// node.
    EndpointVethMade = "endpoint:veth-made",
    /// An endpoint: the node-side veth is on the bridge and up.
    EndpointVethOnBridge = "endpoint:veth-on-bridge",
    /// An endpoint: the dataplane holds it (map entry, TC link pin).
    EndpointAttached = "endpoint:attached",
    /// An endpoint: the container side is in the container's namespace, unconfigured.
    EndpointMoved = "endpoint:moved",
    /// An endpoint: the container side is named, addressed and routed.
    EndpointConfigured = "endpoint:configured",
    /// `container create`: every endpoint is made; no port published yet.
    ContainerCreateEndpointsMade = "container-create:endpoints-made",
    /// A published port (create, connect) is in the dataplane (once per port).
    PortPublished = "port:published",
    /// `container create`: the record is saved done; DNS and links not refreshed yet.
    ContainerCreateSaved = "container-create:saved",
    /// `network connect`: the container's record holds the pending endpoint.
    ConnectRecorded = "connect:recorded",
    /// `network connect`: the endpoint is saved done; ports not moved to it yet.
    ConnectSaved = "connect:saved",
    /// `container rm`: the record is marked pending; nothing removed yet.
    ContainerRemoveMarked = "container-remove:marked",
    /// `network disconnect`: the endpoint is marked pending; nothing removed yet.
    DisconnectMarked = "disconnect:marked",
    /// A teardown (rm, disconnect, network rm): one step is done (once per step).
    TeardownStep = "teardown:step-done",
    /// `network disconnect`: the record without the endpoint is saved; the ports not moved
    /// and the default route not fixed yet.
    DisconnectSaved = "disconnect:saved",
    /// `filter add`: the dataplane has the rule; the record is not saved yet.
    FilterAddApplied = "filter-add:applied",
    /// `filter rm`: the record is deleted; the dataplane still has the rule.
    FilterRemoveRecorded = "filter-remove:recorded",
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CrashPoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        CrashPoint::ALL
            .iter()
            .copied()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown crash point {s:?} (`bpfbridge debug crash-points` lists them)"
                ))
            })
    }
}

/// Where an armed agent dies: the `nth` time it reaches `point`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashAt {
    pub point: CrashPoint,
    pub nth: u32,
}

impl FromStr for CrashAt {
    type Err = Error;

    /// `POINT` or `POINT:N`; a point's name has one colon itself.
    fn from_str(s: &str) -> Result<Self> {
        let (point, nth) = match s.rsplit_once(':') {
            Some((point, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                let nth = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Error::InvalidArgument(format!("crash point {s:?}: N counts from 1"))
                })?;
                (point, nth)
            }
            _ => (s, 1),
        };
        Ok(CrashAt {
            point: point.parse()?,
            nth,
        })
    }
}

static ARMED: OnceLock<CrashAt> = OnceLock::new();
/// Whether [`ARMED`] is set: the one load a disarmed crash point does.
static IS_ARMED: AtomicBool = AtomicBool::new(false);
/// How often the armed point has been reached.
static REACHED: AtomicU32 = AtomicU32::new(0);

/// Arms `at` for the rest of the process (once: a second call is refused).
pub fn arm(at: CrashAt) -> Result<()> {
    ARMED
        .set(at)
        .map_err(|_| Error::Internal("a crash point is armed already".into()))?;
    IS_ARMED.store(true, Ordering::Release);
    tracing::warn!(point = %at.point, nth = at.nth, "fault injection is on: the agent kills itself at this crash point");
    Ok(())
}

/// A crash point: an armed agent dies here with SIGKILL when this is the armed point's
/// `nth` time.
pub fn reach(point: CrashPoint) {
    if !IS_ARMED.load(Ordering::Relaxed) {
        return;
    }
    let Some(at) = ARMED.get() else {
        return;
    };
    if at.point != point || REACHED.fetch_add(1, Ordering::SeqCst) + 1 != at.nth {
        return;
    }
    // Straight to stderr: the log's writer may buffer, and nothing runs after this.
    eprintln!("crash point {point} reached ({}): SIGKILL", at.nth);
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; should the signal be delayed, never go on.
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        for (i, point) in CrashPoint::ALL.iter().enumerate() {
            assert_eq!(point.name().parse::<CrashPoint>().unwrap(), *point);
            assert!(
                !CrashPoint::ALL[..i]
                    .iter()
                    .any(|p| p.name() == point.name()),
                "{point} twice"
            );
        }
    }

    #[test]
    fn crash_at_takes_an_optional_count() {
        let at: CrashAt = "teardown:step-done:3".parse().unwrap();
        assert_eq!((at.point, at.nth), (CrashPoint::TeardownStep, 3));
        let at: CrashAt = "endpoint:attached".parse().unwrap();
        assert_eq!((at.point, at.nth), (CrashPoint::EndpointAttached, 1));
        for bad in ["teardown:step-done:0", "nowhere", "endpoint", ""] {
            assert!(bad.parse::<CrashAt>().is_err(), "{bad}");
        }
    }
}
