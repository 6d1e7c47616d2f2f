//! Live repair of containers' endpoints: while the agent runs, a node-side veth that is
//! deleted (which takes the container side with it), taken off its bridge or set down is
//! put back within a pass, found by the node's link events and, as a safety net, by a pass
//! every [`REPAIR_INTERVAL`]. A container whose repair fails shows why in its
//! `State.Error` and is tried again at the next pass.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::Mutex;

use super::{Service, Step, Undo, endpoints::teardown_steps};
use crate::{
    Error, Result,
    model::{ContainerRecord, ManagedBy, NetworkMode},
    netlink::{self, Link},
    netns,
};

/// How often a pass runs when no link event calls for one.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(2);

/// How long a link event waits for the rest of its burst (a container's teardown removes
/// several links) before the pass looks.
const SETTLE: Duration = Duration::from_millis(100);

/// Runs a repair pass on each burst of link changes and every [`REPAIR_INTERVAL`], for as
/// long as the agent runs. Each pass holds the service's lock, so it never sees an API
/// operation half-done.
pub async fn repair_drift(service: Arc<Mutex<Service>>, link_changes: impl Stream<Item = ()>) {
    let mut link_changes = std::pin::pin!(link_changes.fuse());
    let mut tick = tokio::time::interval(REPAIR_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = link_changes.next() => {
                tokio::time::sleep(SETTLE).await;
                while link_changes.next().now_or_never().flatten().is_some() {}
            }
        }
        service.lock().await.repair_endpoints().await;
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
        match drift {
            Drift::Missing => {
                self.remake_endpoint(container, position, carries_ports)
                    .await?;
                self.repairs.veth_recreated += 1;
                tracing::warn!(container = %container.name, veth = %endpoint.host_veth, "repaired: the node-side veth was gone; made a new pair with the same address and MAC");
            }
            Drift::OffBridge { veth, bridge } => {
                netlink::set_controller(&self.handle, veth, bridge).await?;
                // The bridge port is new: its settings (hairpin) went with the old one.
                let view = self.endpoint_view(&endpoint)?;
                self.dataplane.attach_endpoint(&view).await?;
                self.repairs.veth_reattached += 1;
                tracing::warn!(container = %container.name, veth = %endpoint.host_veth, "repaired: the node-side veth had left its bridge; put back");
            }
            Drift::Down { veth } => {
                netlink::set_up(&self.handle, veth).await?;
                self.repairs.veth_set_up += 1;
                tracing::warn!(container = %container.name, veth = %endpoint.host_veth, "repaired: the node-side veth was down; set up");
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
        stale.extend(teardown_steps(&endpoint));
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
