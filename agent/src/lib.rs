//! bpfbridge's node agent as a library: everything the `bpfbridge` binary does, so that it
//! can be tested and embedded.

/// Serializes a type as its `Display` text and deserializes it with its `FromStr`, so that
/// settings and state files keep a value's usual written form (`32768-60999`,
/// `02:42:ac:11:00:02`) while the program holds it parsed.
macro_rules! serde_as_string {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod dns;
pub mod docker_plugin;
pub mod error;
pub mod faults;
pub mod ipam;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod service;
pub mod sockets;
pub mod store;

pub use error::{Error, Result};
