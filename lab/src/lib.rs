//! bpfbridge's lab: everything the integration tests, the demo (`cargo xtask run`) and the
//! bench (`cargo xtask bench`) need to run agents on network-namespace topologies, written
//! once. Nothing here touches the root network namespace, and everything it makes goes
//! away on drop (so on error and on panic too).
//!
//! - [`netns`]: [`Netns`] (a named namespace, deleted on drop, or a borrowed one such as a
//!   container's), [`in_netns`] (run a closure on a thread inside one) and
//!   [`spawn_in_netns`] (a program entering only the network namespace, as
//!   `nsenter --net=` does, so that it sees the host's bpffs and cgroup2).
//! - [`topology`]: [`Topology`], a node and a world joined by an [`Uplink`] veth, with
//!   addresses, the world's extra hosts, its TX offload and default routes. A world shared
//!   by several nodes is built from [`Netns::named`] and [`Uplink::connect`].
//! - [`agent`]: [`Agent`], a `bpfbridge agent` with its own pin directory, cgroup, state
//!   directory and socket, started with [`AgentOptions`], stopped with SIGTERM then SIGKILL,
//!   its pins and cgroup removed on drop.
//! - [`docker`]: [`Dockerd`], a private dockerd in a node namespace with a busybox image.
//! - [`process`]: [`stop_child_within`] and SIGINT/SIGTERM as a flag ([`catch_stop_signals`],
//!   [`stop_requested`], [`check_stop`]) for long runs; the lab's own waits check it.
//! - [`mounts`]: [`cgroup2_mount`], bpffs, the host's mount table.
//! - [`cmd`]: running programs with errors that carry the command line and its stderr.
//!
//! How each user holds it:
//! - the tests crate (`bpfbridge-tests`) re-exports [`Netns`], [`Topology`] and friends and
//!   wraps [`Agent`] only to pick the dataplane of the run (`BPFBRIDGE_TEST_DATAPLANE`);
//!   test-only clients and servers (request, Echo, DNS) stay there;
//! - the demo builds a [`Topology`] under fixed names, starts an [`Agent`] in its own
//!   process group and waits on [`stop_requested`];
//! - the bench joins one world ([`Netns::named`]) to a node per dataplane with
//!   [`Uplink::connect`] (`DefaultRoute::NodeViaWorld`, world hosts), runs an [`Agent`]
//!   (or a [`Dockerd`] with `DockerdOptions::dir`, `empty_config` and its flags) in each,
//!   enters namespaces with [`try_in_netns`] and [`spawn_in_netns`], stops its servers with
//!   [`stop_child_within`] and finds leftovers with [`netns::names_with_prefix`].

pub mod agent;
pub mod cmd;
pub mod docker;
pub mod mounts;
pub mod netns;
pub mod process;
pub mod topology;

pub use agent::{Agent, AgentOptions};
pub use docker::{Dockerd, DockerdOptions};
pub use mounts::cgroup2_mount;
pub use netns::{Netns, TxOffload, in_netns, spawn_in_netns, try_in_netns, unique};
pub use process::{Stopped, catch_stop_signals, check_stop, stop_child_within, stop_requested};
pub use topology::{
    DefaultRoute, NODE_IP, NODE_IPV6, Topology, UPLINK, Uplink, WORLD_IP, WORLD_IPV6, WORLD_LINK,
};
