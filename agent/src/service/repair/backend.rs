//! Repair of the dataplane: the service tells the backend what its records say it holds
//! ([`Intended`]); the backend puts back what differs (detached programs, map entries or
//! rules deleted or altered from outside) and says what it did.

use std::{collections::BTreeMap, path::PathBuf};

use crate::{
    Result,
    dataplane::{Endpoint, Intended, Repaired},
    model::{FilterRecord, NetworkMode, PortBinding, RepairKind},
    netlink, netns,
};

use super::super::Service;

/// What the backend should hold, owned, for [`Intended`] to borrow.
struct Records {
    cgroup: PathBuf,
    endpoints: Vec<Endpoint>,
    published: Vec<(Endpoint, PortBinding)>,
    filters: Vec<FilterRecord>,
}

fn how(kind: RepairKind) -> &'static str {
    match kind {
        RepairKind::ProgramReattached => "was detached; attached again",
        RepairKind::MapEntryRestored => "was deleted or altered; written back from the records",
        RepairKind::IptablesRuleRestored => "was deleted; added again",
        RepairKind::SysctlRestored => "had been changed; set again",
        _ => "put back",
    }
}

impl Service {
    /// Has the backend put back what differs from the records; what fails goes to
    /// `failures` as the dataplane's.
    pub(super) async fn repair_dataplane(&mut self, failures: &mut BTreeMap<String, String>) {
        let records = match self.dataplane_records().await {
            Ok(records) => records,
            Err(e) => {
                failures.insert("the dataplane".into(), e.to_string());
                return;
            }
        };
        let networks = self.network_policies(false);
        let links = self.link_rules();
        let node_addresses = self
            .node_addresses
            .as_ref()
            .map(|a| a.addresses())
            .unwrap_or_default();
        let intended = Intended {
            node_addresses: &node_addresses,
            cgroup: &records.cgroup,
            endpoints: &records.endpoints,
            published: &records.published,
            networks: &networks,
            filters: &records.filters,
            links: &links,
        };
        let mut repaired = Vec::new();
        let result = self.dataplane.repair(&intended, &mut repaired);
        for Repaired { kind, what } in repaired {
            self.repaired(kind, &what, how(kind));
        }
        if let Err(e) = result {
            failures.insert("the dataplane".into(), e.to_string());
        }
    }

    /// The endpoints whose veth is there as recorded (the others are the endpoints'
    /// repair's, or cannot be repaired), and the ports of the containers whose namespace
    /// is there.
    async fn dataplane_records(&self) -> Result<Records> {
        let links = netlink::all_links(&self.handle).await?;
        let mut endpoints = Vec::new();
        let mut published = Vec::new();
        let containers = self
            .state
            .containers
            .values()
            .filter(|c| !c.pending && c.mode == NetworkMode::Bridge);
        for container in containers {
            for endpoint in container.endpoints.iter().filter(|e| !e.pending) {
                let veth_there = links
                    .iter()
                    .any(|l| l.name == endpoint.host_veth && l.index == endpoint.host_veth_ifindex);
                if veth_there {
                    endpoints.push(self.endpoint_view(endpoint)?);
                }
            }
            // A container whose repair fails had its ports taken out of the dataplane.
            let failing = self.repair_failures.contains_key(&container.id);
            if !failing && netns::is_netns(&container.netns).is_ok() {
                published.extend(self.mappings_of(container)?);
            }
        }
        Ok(Records {
            // Only the eBPF dataplane has socket programs, and it started with this cgroup.
            cgroup: match &self.settings.cgroup {
                Some(cgroup) => cgroup.clone(),
                None => netns::cgroup2_mount().unwrap_or_default(),
            },
            endpoints,
            published,
            filters: self.state.filters.values().cloned().collect(),
        })
    }
}
