//! Source filters on published ports (Docker's DOCKER-USER use case) and the translated
//! flows the dataplane tracks.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::ports::{Proto, parse_port_proto_of};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    Allow,
    Deny,
}

/// A published port and protocol a rule is limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterScope {
    pub host_port: u16,
    pub proto: Proto,
}

/// A filter rule as persisted and installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRecord {
    pub id: u32,
    /// An IPv4 or IPv6 prefix (records before IPv6 hold IPv4 text, which reads the same).
    pub source: IpNet,
    /// `None`: every published port.
    pub scope: Option<FilterScope>,
    pub action: FilterAction,
}

/// `POST /filters`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFilter {
    /// A source prefix such as 192.0.2.0/24 or 2001:db8::/32 (a bare address means /32 or
    /// /128).
    #[serde(rename = "Source")]
    pub source: String,
    /// `HOSTPORT[/tcp|udp]`; absent for every published port.
    #[serde(rename = "Port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// `allow` or `deny`.
    #[serde(rename = "Action")]
    pub action: String,
}

impl CreateFilter {
    /// Validates the request into the rule's parts.
    pub fn parse(&self) -> Result<(IpNet, Option<FilterScope>, FilterAction)> {
        let source: IpNet = match self.source.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => self
                .source
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| {
                    Error::InvalidArgument(format!(
                        "invalid source {:?}: expected CIDR or address",
                        self.source
                    ))
                })?,
        };
        if source.trunc() != source {
            return Err(Error::InvalidArgument(format!(
                "invalid source {source}: host bits set; did you mean {}?",
                source.trunc()
            )));
        }
        let scope = match &self.port {
            Some(p) => {
                let (host_port, proto) = parse_port_proto_of("host", p)?;
                Some(FilterScope { host_port, proto })
            }
            None => None,
        };
        let action = match self.action.as_str() {
            "allow" => FilterAction::Allow,
            "deny" => FilterAction::Deny,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "invalid action {other:?}: allow or deny"
                )));
            }
        };
        Ok((source, scope, action))
    }
}

/// `GET /filters`: a rule with its hit counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FilterInfo {
    #[serde(rename = "Id")]
    pub id: u32,
    #[serde(rename = "Source")]
    pub source: String,
    /// `HOSTPORT/proto`, or `*` for every published port.
    #[serde(rename = "Port")]
    pub port: String,
    #[serde(rename = "Action")]
    pub action: FilterAction,
    #[serde(rename = "Packets")]
    pub packets: u64,
    #[serde(rename = "Bytes")]
    pub bytes: u64,
}

/// One line of `GET /monitor` (newline-delimited JSON): a drop, a new flow, or a repair
/// of drift by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// `drop`, `new-flow` or `repair`.
    #[serde(rename = "Kind")]
    pub kind: String,
    /// The counter that counted the packet, e.g. `container_ingress.drop.isolation`; for a
    /// repair, its kind, e.g. `bridge_recreated` (the `kind` label of
    /// `bpfbridge_repairs_total`).
    #[serde(rename = "Reason")]
    pub reason: String,
    #[serde(rename = "Proto")]
    pub proto: u8,
    #[serde(rename = "Source")]
    pub source: String,
    /// For a repair, what was repaired (e.g. `bridge bpfbr0`); the source is empty.
    #[serde(rename = "Destination")]
    pub destination: String,
}

impl MonitorEvent {
    pub const REPAIR: &str = "repair";

    /// The event of a repair of `kind` to `what`.
    pub fn repair(kind: super::RepairKind, what: &str) -> Self {
        MonitorEvent {
            kind: Self::REPAIR.into(),
            reason: kind.name().into(),
            proto: 0,
            source: String::new(),
            destination: what.into(),
        }
    }
}

/// `GET /conntrack`: one translated flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// `dnat` (a published port) or `masquerade` (a container's flow to the outside).
    #[serde(rename = "Kind")]
    pub kind: String,
    #[serde(rename = "Proto")]
    pub proto: String,
    /// Who opened the connection.
    #[serde(rename = "Client")]
    pub client: String,
    /// The published address it connected to.
    #[serde(rename = "Frontend")]
    pub frontend: String,
    /// The container behind it.
    #[serde(rename = "Backend")]
    pub backend: String,
    /// The client as the container sees it (its network's gateway for hairpin to itself).
    #[serde(rename = "SeenAs")]
    pub seen_as: String,
    #[serde(rename = "IdleSeconds")]
    pub idle_seconds: u64,
    /// Packets and IP bytes of the flow, both directions, where its table counts them
    /// (published-port flows on the ebpf dataplane).
    #[serde(rename = "Packets", default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    #[serde(rename = "Bytes", default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_requests() {
        let ok = CreateFilter {
            source: "192.0.2.0/24".into(),
            port: Some("8080/tcp".into()),
            action: "deny".into(),
        };
        let (source, scope, action) = ok.parse().unwrap();
        assert_eq!(source.to_string(), "192.0.2.0/24");
        assert_eq!(
            scope,
            Some(FilterScope {
                host_port: 8080,
                proto: Proto::Tcp
            })
        );
        assert_eq!(action, FilterAction::Deny);
        let bare = CreateFilter {
            source: "192.0.2.9".into(),
            port: None,
            action: "allow".into(),
        };
        assert_eq!(bare.parse().unwrap().0.prefix_len(), 32);
        let v6 = CreateFilter {
            source: "2001:db8::9".into(),
            ..bare
        };
        assert_eq!(v6.parse().unwrap().0.to_string(), "2001:db8::9/128");
        for (source, port, action) in [
            ("x", None, "allow"),
            ("192.0.2.1/24", None, "allow"),
            ("10.0.0.0/8", Some("0"), "allow"),
            ("10.0.0.0/8", None, "maybe"),
            ("2001:db8::1/32", None, "allow"),
        ] {
            let bad = CreateFilter {
                source: source.into(),
                port: port.map(Into::into),
                action: action.into(),
            };
            assert!(bad.parse().is_err(), "{source} {port:?} {action}");
        }
    }

    #[test]
    fn filter_records_before_ipv6_still_load() {
        let old = r#"{"id":3,"source":"192.0.2.0/24","scope":null,"action":"deny"}"#;
        let record: FilterRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.source, "192.0.2.0/24".parse::<IpNet>().unwrap());
        assert_eq!(serde_json::to_string(&record).unwrap(), old);
    }
}
