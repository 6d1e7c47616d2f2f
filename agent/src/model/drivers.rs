//! Network drivers other than the bridge: Docker's `macvlan` and `ipvlan`, which put each
//! container's interface straight on a parent interface of the node (an Ethernet interface,
//! an 802.1Q sub-interface of one, or a dummy), with no bridge, veth or NAT. What the
//! options of `network create` mean for them, without a kernel: which parent, which mode.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `-o parent=IFACE`: the node interface the containers' interfaces hang on.
pub const OPT_PARENT: &str = "parent";
pub const OPT_MACVLAN_MODE: &str = "macvlan_mode";
pub const OPT_IPVLAN_MODE: &str = "ipvlan_mode";
pub const OPT_IPVLAN_FLAG: &str = "ipvlan_flag";

/// A network's driver and, for macvlan and ipvlan, what its containers' interfaces hang on.
/// State files written before there were other drivers have none: bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum NetworkDriver {
    #[default]
    Bridge,
    Macvlan {
        parent: Parent,
        mode: MacvlanMode,
    },
    Ipvlan {
        parent: Parent,
        mode: IpvlanMode,
        flag: IpvlanFlag,
    },
}

/// The parent interface of a macvlan or ipvlan network, and whether the agent made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub name: String,
    pub origin: ParentOrigin,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParentOrigin {
    /// An interface of the node's own, left alone.
    Existing,
    /// `LINK.ID`, an 802.1Q sub-interface the agent makes on `link` when the first network
    /// names it and removes with the last.
    Vlan { link: String, id: u16 },
    /// A dummy interface of the network's own (`--internal`, or no `-o parent`), as Docker
    /// makes one: its containers reach each other only.
    Dummy,
}

impl Parent {
    /// Whether the agent makes this parent (and so removes it when no network uses it).
    pub fn made_by_agent(&self) -> bool {
        self.origin != ParentOrigin::Existing
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    /// The containers of a parent reach each other inside the node (Docker's default).
    #[default]
    Bridge,
    /// They do not, even through an external switch that hairpins.
    Private,
    /// Their frames to each other go out to the switch (which must hairpin them).
    Vepa,
    /// One container takes over the parent.
    Passthru,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpvlanMode {
    /// The containers share the parent's MAC on the LAN (Docker's default).
    #[default]
    L2,
    /// The node routes between the LAN and the containers, through the parent.
    L3,
    /// As `L3`, through the node's netfilter.
    L3s,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpvlanFlag {
    #[default]
    Bridge,
    Private,
    Vepa,
}

/// The value names of a mode enum, for parsing and for `network inspect`.
trait Named: Sized + Copy + 'static {
    const ALL: &'static [(Self, &'static str)];
    const WHAT: &'static str;

    fn name(self) -> &'static str
    where
        Self: PartialEq,
    {
        Self::ALL
            .iter()
            .find(|(v, _)| *v == self)
            .map(|(_, n)| *n)
            .expect("every value is named")
    }

    fn parse(value: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == value)
            .map(|(v, _)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(_, n)| *n).collect();
                Error::InvalidArgument(format!(
                    "requested {} '{value}' is not valid (expected {})",
                    Self::WHAT,
                    names.join(", ")
                ))
            })
    }
}

impl Named for MacvlanMode {
    const ALL: &'static [(Self, &'static str)] = &[
        (MacvlanMode::Bridge, "bridge"),
        (MacvlanMode::Private, "private"),
        (MacvlanMode::Vepa, "vepa"),
        (MacvlanMode::Passthru, "passthru"),
    ];
    const WHAT: &'static str = "macvlan mode";
}

impl Named for IpvlanMode {
    const ALL: &'static [(Self, &'static str)] = &[
        (IpvlanMode::L2, "l2"),
        (IpvlanMode::L3, "l3"),
        (IpvlanMode::L3s, "l3s"),
    ];
    const WHAT: &'static str = "ipvlan mode";
}

impl Named for IpvlanFlag {
    const ALL: &'static [(Self, &'static str)] = &[
        (IpvlanFlag::Bridge, "bridge"),
        (IpvlanFlag::Private, "private"),
        (IpvlanFlag::Vepa, "vepa"),
    ];
    const WHAT: &'static str = "ipvlan flag";
}

impl fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for IpvlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for IpvlanFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A driver's name as `network create -d` takes it and `network inspect` shows it.
pub const BRIDGE_DRIVER: &str = "bridge";
pub const MACVLAN_DRIVER: &str = "macvlan";
pub const IPVLAN_DRIVER: &str = "ipvlan";

impl NetworkDriver {
    pub fn name(&self) -> &'static str {
        match self {
            NetworkDriver::Bridge => BRIDGE_DRIVER,
            NetworkDriver::Macvlan { .. } => MACVLAN_DRIVER,
            NetworkDriver::Ipvlan { .. } => IPVLAN_DRIVER,
        }
    }

    pub fn is_bridge(&self) -> bool {
        *self == NetworkDriver::Bridge
    }

    /// The parent of a macvlan or ipvlan network.
    pub fn parent(&self) -> Option<&Parent> {
        match self {
            NetworkDriver::Bridge => None,
            NetworkDriver::Macvlan { parent, .. } | NetworkDriver::Ipvlan { parent, .. } => {
                Some(parent)
            }
        }
    }

    /// ipvlan l3 and l3s: no gateway on the LAN; the containers' default route is their
    /// interface, and the node routes their subnet through the parent.
    pub fn routes_through_parent(&self) -> bool {
        matches!(
            self,
            NetworkDriver::Ipvlan {
                mode: IpvlanMode::L3 | IpvlanMode::L3s,
                ..
            }
        )
    }

    /// The options `network inspect` shows, as Docker shows them: the ones given, with the
    /// parent and mode the driver settled on.
    pub fn inspect_options(&self, given: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut options = given.clone();
        match self {
            NetworkDriver::Bridge => {}
            NetworkDriver::Macvlan { parent, mode } => {
                options.insert(OPT_PARENT.into(), parent.name.clone());
                options.insert(OPT_MACVLAN_MODE.into(), mode.to_string());
            }
            NetworkDriver::Ipvlan { parent, mode, flag } => {
                options.insert(OPT_PARENT.into(), parent.name.clone());
                options.insert(OPT_IPVLAN_MODE.into(), mode.to_string());
                options.insert(OPT_IPVLAN_FLAG.into(), flag.to_string());
            }
        }
        options
    }
}

/// The options only a bridge network takes: refused on the other drivers, which have no
/// bridge to apply them to.
const BRIDGE_OPTION_PREFIX: &str = "com.docker.network.bridge.";

/// The options of the macvlan and ipvlan drivers.
const DRIVER_OPTIONS: [&str; 4] = [
    OPT_PARENT,
    OPT_MACVLAN_MODE,
    OPT_IPVLAN_MODE,
    OPT_IPVLAN_FLAG,
];

/// Whether `key` is an option of the macvlan or ipvlan driver.
pub fn is_driver_option(key: &str) -> bool {
    DRIVER_OPTIONS.contains(&key)
}

/// A warning for each option a macvlan or ipvlan network accepts without acting on it, as
/// Docker's drivers ignore the options they do not know.
pub fn ignored_options(driver: &str, options: &BTreeMap<String, String>) -> Vec<String> {
    options
        .keys()
        .filter(|key| !is_driver_option(key) && key.as_str() != super::OPT_CONTAINER_IFACE_PREFIX)
        .map(|key| match key.as_str() {
            super::OPT_MTU => format!(
                "option {key} is ignored on a {driver} network: its interfaces take the MTU of their parent"
            ),
            _ => format!("network option {key:?} is not known to the {driver} driver and is ignored"),
        })
        .collect()
}

/// The driver a `network create` asks for, from `-d`, `-o` and `--internal`. `id` names
/// the dummy parent of a network without one (Docker's `dm-ID` for macvlan, `di-ID` for
/// ipvlan). The parent's existence is the caller's to check (it needs the kernel).
pub fn plan_driver(
    driver: Option<&str>,
    options: &BTreeMap<String, String>,
    internal: bool,
    id: &str,
) -> Result<NetworkDriver> {
    let driver = driver.unwrap_or(BRIDGE_DRIVER);
    if driver == BRIDGE_DRIVER {
        return Ok(NetworkDriver::Bridge);
    }
    let (own_options, dummy_prefix): (&[&str], &str) = match driver {
        MACVLAN_DRIVER => (&[OPT_PARENT, OPT_MACVLAN_MODE], "dm-"),
        IPVLAN_DRIVER => (&[OPT_PARENT, OPT_IPVLAN_MODE, OPT_IPVLAN_FLAG], "di-"),
        other => {
            return Err(Error::InvalidArgument(format!(
                "network driver {other:?} is not supported (bridge, macvlan or ipvlan)"
            )));
        }
    };
    for key in options.keys() {
        let other_driver = is_driver_option(key) && !own_options.contains(&key.as_str());
        if key.starts_with(BRIDGE_OPTION_PREFIX) || other_driver {
            return Err(Error::InvalidArgument(format!(
                "option {key} is not valid on a {driver} network (it takes {})",
                own_options.join(", ")
            )));
        }
    }
    let parent = match options.get(OPT_PARENT).map(String::as_str) {
        _ if internal => None,
        None | Some("") => None,
        Some(name) => Some(parent_of(driver, name)?),
    };
    let parent = parent.unwrap_or_else(|| Parent {
        name: format!("{dummy_prefix}{}", &id[..12.min(id.len())]),
        origin: ParentOrigin::Dummy,
    });
    let option = |key| {
        options
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let driver = match driver {
        MACVLAN_DRIVER => NetworkDriver::Macvlan {
            parent,
            mode: option(OPT_MACVLAN_MODE)
                .map(MacvlanMode::parse)
                .transpose()?
                .unwrap_or_default(),
        },
        _ => NetworkDriver::Ipvlan {
            parent,
            mode: option(OPT_IPVLAN_MODE)
                .map(IpvlanMode::parse)
                .transpose()?
                .unwrap_or_default(),
            flag: option(OPT_IPVLAN_FLAG)
                .map(IpvlanFlag::parse)
                .transpose()?
                .unwrap_or_default(),
        },
    };
    Ok(driver)
}

/// `-o parent=NAME`: an interface of the node, or `LINK.VLAN` (made by the agent when it
/// does not exist; whether it does is the caller's to find out).
fn parent_of(driver: &str, name: &str) -> Result<Parent> {
    if name == "lo" {
        return Err(Error::InvalidArgument(format!(
            "loopback interface is not a valid {driver} parent link"
        )));
    }
    if name.len() > 15 || name.contains(['/', ' ', ':']) {
        return Err(Error::InvalidArgument(format!(
            "-o parent={name:?} is not an interface name (at most 15 characters, no '/', ':' or space)"
        )));
    }
    let origin = match name.split_once('.') {
        None => ParentOrigin::Existing,
        Some((link, vlan)) => {
            let id: u16 = vlan
                .parse()
                .ok()
                .filter(|_| !link.is_empty() && !vlan.contains('.'))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "required interface name format is: name.vlan_id, ex. eth0.10 for vlan 10, instead received {name}"
                    ))
                })?;
            if !(1..=4094).contains(&id) {
                return Err(Error::InvalidArgument(format!(
                    "vlan id must be between 1-4094, received: {id}"
                )));
            }
            ParentOrigin::Vlan {
                link: link.to_string(),
                id,
            }
        }
    };
    Ok(Parent {
        name: name.to_string(),
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(driver: &str, options: &[(&str, &str)], internal: bool) -> Result<NetworkDriver> {
        let options = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        plan_driver(Some(driver), &options, internal, "0123456789abcdef")
    }

    fn existing(name: &str) -> Parent {
        Parent {
            name: name.into(),
            origin: ParentOrigin::Existing,
        }
    }

    #[test]
    fn docker_defaults_and_modes() {
        assert_eq!(plan("bridge", &[], false).unwrap(), NetworkDriver::Bridge);
        assert_eq!(
            plan("macvlan", &[("parent", "eth0")], false).unwrap(),
            NetworkDriver::Macvlan {
                parent: existing("eth0"),
                mode: MacvlanMode::Bridge
            }
        );
        assert_eq!(
            plan(
                "ipvlan",
                &[("parent", "eth0"), ("ipvlan_mode", "l3")],
                false
            )
            .unwrap(),
            NetworkDriver::Ipvlan {
                parent: existing("eth0"),
                mode: IpvlanMode::L3,
                flag: IpvlanFlag::Bridge
            }
        );
        let vlan = plan(
            "macvlan",
            &[("parent", "eth0.10"), ("macvlan_mode", "private")],
            false,
        )
        .unwrap();
        assert_eq!(
            vlan.parent().unwrap().origin,
            ParentOrigin::Vlan {
                link: "eth0".into(),
                id: 10
            }
        );
        // No parent, or --internal: a dummy of the network's own, as Docker names it.
        for (driver, options, internal, dummy) in [
            ("macvlan", &[][..], false, "dm-0123456789ab"),
            ("ipvlan", &[("parent", "eth0")][..], true, "di-0123456789ab"),
        ] {
            let parent = plan(driver, options, internal).unwrap().parent().cloned();
            assert_eq!(
                parent,
                Some(Parent {
                    name: dummy.into(),
                    origin: ParentOrigin::Dummy
                })
            );
        }
        let inspect = plan("ipvlan", &[("parent", "eth0")], false)
            .unwrap()
            .inspect_options(&BTreeMap::from([("parent".into(), "eth0".into())]));
        assert_eq!(inspect["ipvlan_mode"], "l2");
        assert_eq!(inspect["ipvlan_flag"], "bridge");
        let options = BTreeMap::from([
            (super::super::OPT_MTU.to_string(), "9000".to_string()),
            ("parent".to_string(), "eth0".to_string()),
            ("com.example".to_string(), "x".to_string()),
        ]);
        let warnings = ignored_options("macvlan", &options);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("MTU of their parent"), "{warnings:?}");
    }

    #[test]
    fn refused_as_docker_refuses() {
        for (driver, options, message) in [
            ("overlay", &[][..], "not supported"),
            (
                "macvlan",
                &[("macvlan_mode", "l2")][..],
                "macvlan mode 'l2'",
            ),
            ("ipvlan", &[("ipvlan_mode", "bridge")], "ipvlan mode"),
            ("ipvlan", &[("ipvlan_flag", "passthru")], "ipvlan flag"),
            ("macvlan", &[("parent", "lo")], "loopback"),
            ("macvlan", &[("parent", "eth0.4095")], "1-4094"),
            ("macvlan", &[("parent", "eth0.x")], "name.vlan_id"),
            ("macvlan", &[("parent", "eth0.1.2")], "name.vlan_id"),
            (
                "macvlan",
                &[("com.docker.network.bridge.enable_icc", "false")],
                "not valid on a macvlan network",
            ),
            ("macvlan", &[("ipvlan_mode", "l3")], "not valid"),
            ("ipvlan", &[("macvlan_mode", "bridge")], "not valid"),
        ] {
            let error = plan(driver, options, false).unwrap_err().to_string();
            assert!(error.contains(message), "{driver} {options:?}: {error}");
        }
    }

    #[test]
    fn old_records_are_bridges() {
        #[derive(Deserialize)]
        struct Old {
            #[serde(default)]
            driver: NetworkDriver,
        }
        let old: Old = serde_json::from_str("{}").unwrap();
        assert_eq!(old.driver, NetworkDriver::Bridge);
        // A bridge network's record is written as before there were drivers.
        let bridge = super::super::NetworkRecord::for_tests("n", "10.1.0.0/24");
        let json = serde_json::to_value(&bridge).unwrap();
        assert!(json.get("driver").is_none() && json.get("aux_addresses").is_none());
        assert_eq!(
            serde_json::from_value::<super::super::NetworkRecord>(json).unwrap(),
            bridge
        );
        let macvlan = plan("macvlan", &[("parent", "eth0.7")], false).unwrap();
        let json = serde_json::to_string(&macvlan).unwrap();
        assert_eq!(
            serde_json::from_str::<NetworkDriver>(&json).unwrap(),
            macvlan
        );
    }
}
