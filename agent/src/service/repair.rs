//! Live repair of drift: while the agent runs, what it owns and someone else changed is
//! put back within a pass, found by the node's link and address events and, as a safety
//! net (sysctls, programs, maps and rules send no event), by a pass every
//! [`REPAIR_INTERVAL`]. A pass mends, in order, the node's sysctls and the networks'
//! bridges ([`node`]), the containers' node-side veths (deleted, which takes the container
//! side with it; taken off their bridge; set down), then the dataplane's programs, pinned
//! maps and rules ([`backend`]). Each repair is logged, counted in `info`'s `Repairs` and
//! sent to `monitor`. A container whose repair fails shows why in its `State.Error`,
//! anything else in `info`'s `Unrepaired`; both are tried again at the next pass.

mod backend;
mod node;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::{Mutex, broadcast};

use super::{Service, Step, Undo, endpoints::teardown_steps};
use crate::{
    Error, Result,
    dataplane::Backend,
    model::{ContainerRecord, ManagedBy, MonitorEvent, NetworkMode, RepairKind},
    netlink::{self, Link},
    netns,
};

/// How often a pass runs when no link event calls for one.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(2);

/// How long a link or address event waits for the rest of its burst (a container's
/// teardown removes several links) before the pass looks.
const SETTLE: Duration = Duration::from_millis(100);

/// Runs a repair pass on each burst of the node's link and address changes and every
/// [`REPAIR_INTERVAL`], for as long as the agent runs. Each pass holds the service's lock,
/// so it never sees an API operation half-done.
pub async fn repair_drift(service: Arc<Mutex<Service>>, node_changes: impl Stream<Item = ()>) {
    let mut node_changes = std::pin::pin!(node_changes.fuse());
    let mut tick = tokio::time::interval(REPAIR_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = node_changes.next() => {
                tokio::time::sleep(SETTLE).await;
                while node_changes.next().now_or_never().flatten().is_some() {}
            }
        }
        service.lock().await.repair_pass().await;
    }
}

/// `monitor`'s feed: a channel of its own, into which the dataplane's events (if it has
/// any) are forwarded, and the repairs sent; so that `monitor` shows repairs on every
/// dataplane.
pub(super) fn event_feed(dataplane: &Backend) -> Result<broadcast::Sender<MonitorEvent>> {
    let (events, _) = broadcast::channel(1024);
    if let Some(mut feed) = dataplane.subscribe()? {
        let forward = events.clone();
        tokio::spawn(async move {
            loop {
                match feed.recv().await {
                    // No subscriber is not a failure: the event is for no one.
                    Ok(event) => drop(forward.send(event)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    Ok(events)
}

impl Service {
    /// One pass over everything the agent owns. Never fails: what it cannot mend is
    /// recorded (and shown) and the pass goes on.
    pub async fn repair_pass(&mut self) {
        let mut failures = BTreeMap::new();
        self.repair_node(&mut failures).await;
        self.repair_endpoints().await;
        self.repair_dataplane(&mut failures).await;
        self.settle_failures(failures);
    }

    /// Counts, logs and sends to `monitor` one repair of `kind` to `what`.
    pub(super) fn repaired(&mut self, kind: RepairKind, what: &str, how: &str) {
        *self.repairs.count_mut(kind) += 1;
        tracing::warn!(kind = kind.name(), "repaired {what}: {how}");
        // No subscriber is not a failure: the event is for no one.
        drop(self.events.send(MonitorEvent::repair(kind, what)));
    }

    /// Keeps this pass's failures (by what failed) for `info`; one that starts failing, or
    /// fails otherwise, is logged and counted once, not at every pass.
    fn settle_failures(&mut self, failures: BTreeMap<String, String>) {
        for (what, error) in &failures {
            if self.unrepaired.get(what) != Some(error) {
                tracing::error!("could not repair {what}, retried every pass: {error}");
                self.repairs.failed += 1;
            }
        }
        for what in self.unrepaired.keys() {
            if !failures.contains_key(what) {
                tracing::info!("{what} repaired");
            }
        }
        self.unrepaired = failures;
    }

    /// `info`'s `Unrepaired`: the containers whose repair fails, then everything else.
    pub(super) fn unrepaired_report(&self) -> Vec<String> {
        let containers = self.repair_failures.iter().map(|(id, error)| {
            let name = self.container_by_id(id).map_or(id.as_str(), |c| &c.name);
            format!("container {name}: {error}")
        });
        containers
            .chain(
                self.unrepaired
                    .iter()
                    .map(|(what, error)| format!("{what}: {error}")),
            )
            .collect()
    }
}

/// What is wrong with one endpoint's node-side veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drift {
    Missing,
    /// The veth (by index) is not enslaved to its bridge.
    OffBridge {
        veth: u32,
        bridge: u32,
    },
    Down {
        veth: u32,
    },
}

/// The drift of a veth against the bridge it belongs on; none when all is well.
fn drift_of(veth: Option<&Link>, bridge: u32) -> Vec<Drift> {
    let Some(veth) = veth else {
        return vec![Drift::Missing];
    };
    let mut drift = Vec::new();
    if veth.controller != Some(bridge) {
        drift.push(Drift::OffBridge {
            veth: veth.index,
            bridge,
        });
    }
    if !veth.up {
        drift.push(Drift::Down { veth: veth.index });
    }
    drift
}

/// Whether the agent repairs `container`'s endpoints: its own bridge-mode containers, once
/// made. Docker makes and removes the container side of the sandboxes it drives.
fn repairable(container: &ContainerRecord) -> bool {
    !container.pending
        && container.mode == NetworkMode::Bridge
        && container.managed_by == ManagedBy::Bpfbridge
}

impl Service {
    /// One pass over every container's endpoints. Never fails: a container it cannot mend
    /// gets its `State.Error`, and the pass goes on to the next.
    pub async fn repair_endpoints(&mut self) {
        let links = match netlink::all_links(&self.handle).await {
            Ok(links) => links,
            Err(e) => {
                tracing::warn!("repair pass skipped: {e}");
                return;
            }
        };
        let containers: Vec<ContainerRecord> = self
            .state
            .containers
            .values()
            .filter(|c| repairable(c))
            .cloned()
            .collect();
        let mut failures = BTreeMap::new();
        for container in containers {
            if let Err(e) = self.repair_container(container.clone(), &links).await {
                let error = e.to_string();
                if self.repair_failures.get(&container.id) != Some(&error) {
                    tracing::error!(container = %container.name, "repair failed, retried every pass: {error}");
                    self.repairs.failed += 1;
                }
                failures.insert(container.id, error);
            } else if self.repair_failures.contains_key(&container.id) {
                tracing::info!(container = %container.name, "network repaired");
            }
        }
        self.repair_failures = failures;
    }

    /// Repairs each made endpoint of `container` whose veth drifted.
    async fn repair_container(
        &mut self,
        mut container: ContainerRecord,
        links: &[Link],
    ) -> Result<()> {
        let carrier = self
            .port_endpoint(&container)
            .map(|e| e.endpoint_id.clone());
        for position in 0..container.endpoints.len() {
            let endpoint = &container.endpoints[position];
            if endpoint.pending {
                continue;
            }
            if endpoint.sub_interface {
                let carries_ports = carrier.as_deref() == Some(endpoint.endpoint_id.as_str());
                self.repair_sub_interface(&mut container, position, carries_ports)
                    .await?;
                continue;
            }
            let network = self.network_by_id(&endpoint.network_id)?.clone();
            let bridge = links
                .iter()
                .find(|l| l.name == network.bridge)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "bridge {} of network {} is gone",
                        network.bridge, network.name
                    ))
                })?;
            let veth = links.iter().find(|l| l.name == endpoint.host_veth);
            let carries_ports = carrier.as_deref() == Some(endpoint.endpoint_id.as_str());
            for drift in drift_of(veth, bridge.index) {
                self.repair(&mut container, position, drift, carries_ports)
                    .await?;
            }
        }
        Ok(())
    }

    async fn repair(
        &mut self,
        container: &mut ContainerRecord,
        position: usize,
        drift: Drift,
        carries_ports: bool,
    ) -> Result<()> {
        let endpoint = container.endpoints[position].clone();
        let what = format!(
            "veth {} of container {}",
            endpoint.host_veth, container.name
        );
        match drift {
            Drift::Missing => {
                self.remake_endpoint(container, position, carries_ports)
                    .await?;
                self.repaired(
                    RepairKind::VethRecreated,
                    &what,
                    "was gone; made a new pair with the same address and MAC",
                );
            }
            Drift::OffBridge { veth, bridge } => {
                netlink::set_controller(&self.handle, veth, bridge).await?;
                // The bridge port is new: its settings (hairpin) went with the old one.
                let view = self.endpoint_view(&endpoint)?;
                self.dataplane.attach_endpoint(&view).await?;
                self.repaired(
                    RepairKind::VethReattached,
                    &what,
                    "had left its bridge; put back",
                );
            }
            Drift::Down { veth } => {
                netlink::set_up(&self.handle, veth).await?;
                self.repaired(RepairKind::VethSetUp, &what, "was down; set up");
            }
        }
        Ok(())
    }

    /// Makes the endpoint at `position` again, as it was: a new veth pair, the container
    /// side with the same name, address and MAC (and the default route when it carries the
    /// ports), the dataplane attached and the ports published again; the record saved.
    async fn remake_endpoint(
        &mut self,
        container: &mut ContainerRecord,
        position: usize,
        carries_ports: bool,
    ) -> Result<()> {
        let mut endpoint = container.endpoints[position].clone();
        // The dataplane's hold on the vanished veth goes first, whatever follows: the
        // kernel may give its index to another link.
        let mut stale = Vec::new();
        if carries_ports {
            stale.extend(container.ports.iter().map(|p| Step::Unpublish(*p)));
        }
        stale.extend(teardown_steps(&container.netns, &endpoint));
        self.run_all(stale).await?;
        netns::is_netns(&container.netns).map_err(|_| {
            Error::NotFound(format!(
                "the node-side veth {} is gone and so is the network namespace {}: remove the container",
                endpoint.host_veth,
                container.netns.display()
            ))
        })?;
        let network = self.network_by_id(&endpoint.network_id)?.clone();
        let mut undo = Undo::default();
        let remade = async {
            self.make_endpoint(
                &container.netns,
                &network,
                &mut endpoint,
                carries_ports,
                &mut undo,
            )
            .await?;
            container.endpoints[position] = endpoint;
            if carries_ports {
                self.publish_ports(container, &mut undo)?;
            }
            self.save_container(container.clone())
        }
        .await;
        if remade.is_err() {
            self.rollback(undo).await;
        }
        remade
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(controller: Option<u32>, up: bool) -> Link {
        Link {
            index: 7,
            name: "veth1234567".into(),
            mtu: 1500,
            mac: None,
            controller,
            up,
        }
    }

    #[test]
    fn drift_is_what_differs_from_up_on_its_bridge() {
        let bridge = 3;
        assert_eq!(drift_of(None, bridge), [Drift::Missing]);
        assert!(drift_of(Some(&veth(Some(3), true)), bridge).is_empty());
        let off_bridge = Drift::OffBridge { veth: 7, bridge };
        let down = Drift::Down { veth: 7 };
        assert_eq!(drift_of(Some(&veth(Some(3), false)), bridge), [down]);
        assert_eq!(
            drift_of(Some(&veth(None, false)), bridge),
            [off_bridge, down]
        );
        assert_eq!(drift_of(Some(&veth(Some(4), true)), bridge), [off_bridge]);
    }
}
