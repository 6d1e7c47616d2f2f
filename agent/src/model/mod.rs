//! What the agent knows (persisted records, [`records`]) and what its API speaks
//! (Docker-shaped JSON, [`api`]).

pub mod api;
pub mod cni;
pub mod docker;
pub mod drivers;
pub mod filters;
pub mod ports;
pub mod records;

use std::{fmt, net::Ipv4Addr, str::FromStr};

pub use api::*;
pub use cni::*;
pub use drivers::NetworkDriver;
pub use filters::*;
pub use ports::*;
pub use records::*;

use crate::{Error, Result};

/// An Ethernet address, written (in state files and the API) as `02:42:ac:11:00:02`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// Docker's MAC for an IPv4 endpoint: 02:42 followed by the address.
    pub fn for_ip(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        MacAddress([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }

    /// A random locally administered unicast MAC, for an endpoint without an IPv4 address
    /// to derive one from (as Docker 28 gives every endpoint).
    pub fn random() -> Self {
        use rand::RngCore as _;
        let mut octets = [0u8; 6];
        rand::rng().fill_bytes(&mut octets);
        octets[0] = (octets[0] & 0xfe) | 0x02;
        MacAddress(octets)
    }

    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("invalid MAC address {s:?}"));
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            *byte = u8::from_str_radix(parts.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(MacAddress(out)),
            Some(_) => Err(bad()),
        }
    }
}

serde_as_string!(MacAddress);

/// Serde for a MAC that may not be known yet, written `""` until it is (as state files
/// always have).
pub mod mac_or_empty {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::MacAddress;

    pub fn serialize<S: Serializer>(mac: &Option<MacAddress>, s: S) -> Result<S::Ok, S::Error> {
        match mac {
            Some(mac) => s.collect_str(mac),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MacAddress>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// Container, network and alias names as Docker accepts them.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid {kind} name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )))
    }
}

/// A new random 64-hex-digit id, like Docker's.
pub fn random_id() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Docker's timestamp format (RFC 3339 with nanoseconds, UTC).
pub fn now() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// The 12-digit short form of an id.
pub fn short_id(id: &str) -> &str {
    &id[..12.min(id.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs() {
        assert!(validate_name("container", "web-1.a_b").is_ok());
        for bad in ["", "-x", "a b", "a/b", "ü"] {
            assert!(validate_name("container", bad).is_err(), "{bad:?}");
        }
        let mac = MacAddress::for_ip(Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(mac.to_string(), "02:42:ac:11:00:02");
        assert_eq!("02:42:AC:11:00:02".parse::<MacAddress>().unwrap(), mac);
        for bad in [
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "02:42:ac:11:00:xx",
            "",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad:?}");
        }
        assert_eq!(short_id(&random_id()).len(), 12);
        // A random MAC is unicast and locally administered.
        for _ in 0..16 {
            let first = MacAddress::random().octets()[0];
            assert_eq!(first & 0x03, 0x02, "{first:#04x}");
        }
    }

    #[test]
    fn state_files_keep_their_mac_text() {
        // Records as agents before the MAC type wrote them: a pending endpoint's host MAC
        // is "".
        for (json, host_veth_mac) in [
            (
                r#"{"network_id":"n","endpoint_id":"e","ip":"172.17.0.2","mac":"02:42:ac:11:00:02","ifname":"eth0","host_veth":"veth1","host_veth_ifindex":7,"host_veth_mac":"aa:bb:cc:dd:ee:0f","aliases":[],"requested_ip":null,"pending":false}"#,
                Some(MacAddress([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f])),
            ),
            (
                r#"{"network_id":"n","endpoint_id":"e","ip":"172.17.0.2","mac":"02:42:ac:11:00:02","ifname":"eth0","host_veth":"","host_veth_ifindex":0,"host_veth_mac":"","aliases":[],"requested_ip":null,"pending":true}"#,
                None,
            ),
        ] {
            let record: EndpointRecord = serde_json::from_str(json).unwrap();
            assert_eq!(record.mac, MacAddress::for_ip(Ipv4Addr::new(172, 17, 0, 2)));
            assert_eq!(record.host_veth_mac, host_veth_mac);
            assert_eq!(
                serde_json::to_string(&record).unwrap(),
                json,
                "written back the same"
            );
        }
        // A Docker endpoint recorded before IPv6-only networks loads, and is written back,
        // as it was; one without IPv4 is written without `ip`.
        let old = r#"{"endpoint_id":"e","network_id":"n","ip":"172.17.0.2","mac":"02:42:ac:11:00:02","port_map":[],"exposed":[]}"#;
        let record: DockerEndpointRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.ip, Some(Ipv4Addr::new(172, 17, 0, 2)));
        assert_eq!(serde_json::to_string(&record).unwrap(), old);
        let ipv6_only = DockerEndpointRecord {
            ip: None,
            ipv6: Some("fd00::2".parse().unwrap()),
            ..record
        };
        let written = serde_json::to_string(&ipv6_only).unwrap();
        assert!(!written.contains("\"ip\""), "{written}");
        assert_eq!(
            serde_json::from_str::<DockerEndpointRecord>(&written).unwrap(),
            ipv6_only
        );
        let bad = r#"{"endpoint_id":"e","network_id":"n","ip":"172.17.0.2","mac":"02:42","port_map":[],"exposed":[]}"#;
        let error = serde_json::from_str::<DockerEndpointRecord>(bad).unwrap_err();
        assert!(
            error.to_string().contains("invalid MAC address \"02:42\""),
            "{error}"
        );
    }
}
