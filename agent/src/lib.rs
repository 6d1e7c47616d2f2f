//! bpfbridge's node agent as a library: everything the `bpfbridge` binary does, so that it
//! can be tested and embedded.

pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod dns;
pub mod docker_plugin;
pub mod error;
pub mod ipam;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod service;
pub mod store;

pub use error::{Error, Result};
