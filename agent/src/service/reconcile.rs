//! Start-up reconciliation: make the node match the records. Existing bridges, veths,
//! pinned maps and links are re-adopted without disturbing traffic; what is missing is
//! recreated; what no record owns, and what a crash left half-done, is removed.

use super::{
    BRIDGE_PREFIX, DEFAULT_BRIDGE, DEFAULT_NETWORK, Service, Step, Undo, docker,
    endpoints::teardown_steps,
};
use crate::{
    Error, Result,
    model::{ContainerRecord, NetworkMode, NetworkRecord},
    netlink, netns,
};

impl Service {
    pub(super) async fn reconcile(&mut self) -> Result<()> {
        // A half-made or half-removed network's bridge is kept until its rollback below.
        self.remove_orphan_bridges().await?;
        for network in self.state.networks.values().cloned().collect::<Vec<_>>() {
            if network.pending {
                continue;
            }
            match self.ensure_network_device(&network).await {
                Ok(()) => {}
                // A parent of the node's own may be gone (a NIC unplugged): the agent starts
                // all the same, and its containers' repair says what is missing.
                Err(e) if !network.driver.is_bridge() => {
                    tracing::warn!(network = %network.name, "the parent is not there: {e}")
                }
                Err(e) => return Err(e),
            }
        }
        self.remove_half_made_networks().await?;
        self.ensure_default_network().await?;
        let containers: Vec<ContainerRecord> = self.state.containers.values().cloned().collect();
        for container in containers {
            if container.pending {
                tracing::warn!(container = %container.name, "rolling back a create or removal that a crash interrupted");
                let steps = self.container_teardown_steps(&container);
                self.run_all(steps).await?;
            } else {
                self.restore_endpoints(container).await?;
            }
        }
        self.remove_orphan_veths().await?;
        let owned: Vec<String> = self
            .state
            .containers
            .values()
            .flat_map(|c| c.endpoints.iter().map(|e| e.host_veth.clone()))
            .collect();
        self.dataplane.retain_endpoints(&owned)?;
        self.refresh_node_addresses().await?;
        let mut wanted = Vec::new();
        // A container whose namespace is gone publishes nothing: no stale mapping answers.
        for container in self
            .state
            .containers
            .values()
            .filter(|c| netns::is_netns(&c.netns).is_ok())
        {
            wanted.extend(self.mappings_of(container)?);
        }
        self.dataplane.sync_published(&wanted)?;
        self.restore_filters()?;
        self.sync_networks()?;
        self.refresh_views()?;
        for container in self.state.containers.values() {
            if netns::is_netns(&container.netns).is_ok()
                && let Err(e) = self.dns_for(container)
            {
                tracing::warn!(container = %container.name, "DNS server not started: {e}");
            }
        }
        Ok(())
    }

    async fn remove_half_made_networks(&mut self) -> Result<()> {
        let pending: Vec<NetworkRecord> = self
            .state
            .networks
            .values()
            .filter(|n| n.pending)
            .cloned()
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        // A dataplane that does not read its network rules back (iptables) learns the
        // half-made and half-removed networks here, so that the sync at the end of the
        // start removes whatever of their rules a crash left.
        let known = self.network_policies(true);
        if let Err(e) = self.dataplane.set_networks(&known) {
            tracing::warn!("re-adopting the networks a crash interrupted: {e}");
        }
        for network in pending {
            tracing::warn!(network = %network.name, "rolling back a network create or removal that a crash interrupted");
            let mut steps = self.network_device_teardown(&network);
            steps.push(Step::DeleteNetworkRecord(network.name));
            self.run_all(steps).await?;
        }
        Ok(())
    }

    /// Bridges named like ours that no network record owns.
    async fn remove_orphan_bridges(&mut self) -> Result<()> {
        for link in netlink::all_links(&self.handle).await? {
            let ours =
                link.name == DEFAULT_BRIDGE || link.name.starts_with(&format!("{BRIDGE_PREFIX}-"));
            if ours && !self.state.networks.values().any(|n| n.bridge == link.name) {
                tracing::warn!(bridge = %link.name, "removing a bridge that no network owns");
                netlink::delete_link(&self.handle, link.index).await?;
            }
        }
        Ok(())
    }

    /// Veths on our bridges that no endpoint owns (a crash between making a veth and
    /// recording it).
    async fn remove_orphan_veths(&mut self) -> Result<()> {
        let links = netlink::all_links(&self.handle).await?;
        let bridges: Vec<u32> = links
            .iter()
            .filter(|l| self.state.networks.values().any(|n| n.bridge == l.name))
            .map(|l| l.index)
            .collect();
        for link in &links {
            let on_our_bridge = link.controller.is_some_and(|c| bridges.contains(&c));
            let owned = self
                .state
                .containers
                .values()
                .any(|c| c.endpoints.iter().any(|e| e.host_veth == link.name));
            if on_our_bridge && !owned {
                tracing::warn!(veth = %link.name, "removing a veth that no container owns");
                netlink::delete_link(&self.handle, link.index).await?;
            }
        }
        Ok(())
    }

    /// The default network exists and follows the daemon's settings (`--bip`, `--icc`,
    /// `--ip-masq`, `--ip`, `--mtu`).
    async fn ensure_default_network(&mut self) -> Result<()> {
        let Some(mut network) = self.state.networks.get(DEFAULT_NETWORK).cloned() else {
            let planned = self.plan_default_network().await?;
            self.add_network(planned).await?;
            return Ok(());
        };
        if let Some(bip) = self.settings.bip
            && network.ipv4() != Some((bip.trunc(), bip.addr()))
        {
            let in_use = self
                .state
                .containers
                .values()
                .any(|c| c.endpoint(&network.id).is_some());
            if in_use {
                return Err(Error::Conflict(format!(
                    "--bip {bip} differs from the default network's {} and containers are attached to it; remove them first",
                    network
                        .gateway_net()
                        .map_or_else(|| "subnet".to_string(), |g| g.to_string())
                )));
            }
            self.run_all(vec![
                Step::DeleteLink(network.bridge.clone()),
                Step::DeleteNetworkRecord(network.name.clone()),
            ])
            .await?;
            let planned = self.plan_default_network().await?;
            self.add_network(planned).await?;
            return Ok(());
        }
        let mtu = self.settings.mtu.unwrap_or(self.uplink_mtu);
        let wanted = NetworkRecord {
            enable_icc: self.settings.icc,
            enable_ip_masquerade: self.settings.ip_masq,
            host_binding_ipv4: Some(self.settings.ip),
            mtu,
            ..network.clone()
        };
        if wanted != network {
            network = wanted;
            self.save_network(network.clone())?;
            self.ensure_bridge(&network).await?;
        }
        Ok(())
    }

    /// Re-adopts each endpoint's veth, recreates one that is missing while the container's
    /// namespace still exists, and rolls back endpoints a crash left half-made.
    async fn restore_endpoints(&mut self, mut container: ContainerRecord) -> Result<()> {
        let mut changed = false;
        let (half_made, live): (Vec<_>, Vec<_>) =
            container.endpoints.drain(..).partition(|e| e.pending);
        let rolled_back = !half_made.is_empty();
        for endpoint in half_made {
            self.run_all(teardown_steps(&container.netns, &endpoint))
                .await?;
            changed = true;
        }
        container.endpoints = live;
        let netns_alive = netns::is_netns(&container.netns).is_ok();
        let port_endpoint = self
            .port_endpoint(&container)
            .map(|e| e.endpoint_id.clone());
        let mut gone = Vec::new();
        for i in 0..container.endpoints.len() {
            let mut endpoint = container.endpoints[i].clone();
            if endpoint.sub_interface {
                let primary = port_endpoint.as_deref() == Some(endpoint.endpoint_id.as_str());
                match self
                    .restore_sub_interface(&container, &mut endpoint, primary)
                    .await
                {
                    Ok(remade) => changed |= remade,
                    // Its parent is gone, say: the repair passes try again and show why.
                    Err(e) => {
                        tracing::warn!(container = %container.name, interface = %endpoint.ifname, "not restored: {e}")
                    }
                }
                container.endpoints[i] = endpoint;
                continue;
            }
            match netlink::link_by_name(&self.handle, &endpoint.host_veth).await? {
                None if docker::endpoint_went_with_its_veth(&container) => {
                    tracing::warn!(container = %container.name, endpoint = %endpoint.endpoint_id, "forgetting a Docker endpoint whose veth is gone");
                    self.run_all(teardown_steps(&container.netns, &endpoint))
                        .await?;
                    gone.push(endpoint.endpoint_id.clone());
                    changed = true;
                }
                Some(link) => {
                    if link.index != endpoint.host_veth_ifindex {
                        endpoint.host_veth_ifindex = link.index;
                        changed = true;
                    }
                    let view = self.endpoint_view(&endpoint)?;
                    self.dataplane.attach_endpoint(&view).await?;
                }
                None if netns_alive => {
                    tracing::warn!(container = %container.name, veth = %endpoint.host_veth, "recreating a missing veth");
                    let network = self.network_by_id(&endpoint.network_id)?.clone();
                    let mut undo = Undo::default();
                    let primary = port_endpoint.as_deref() == Some(endpoint.endpoint_id.as_str());
                    if let Err(e) = self
                        .make_endpoint(
                            &container.netns,
                            &network,
                            &mut endpoint,
                            primary,
                            &mut undo,
                        )
                        .await
                    {
                        self.rollback(undo).await;
                        return Err(e);
                    }
                    changed = true;
                }
                None => {
                    tracing::warn!(container = %container.name, "network namespace is gone; its ports stay closed until `container rm`");
                }
            }
            container.endpoints[i] = endpoint;
        }
        container
            .endpoints
            .retain(|e| !gone.contains(&e.endpoint_id));
        // A half-made or half-removed endpoint may have carried the default route (a
        // connect gives it to a new way out; a disconnect moves it): it goes to the way out
        // that is left.
        if rolled_back && netns_alive && container.mode == NetworkMode::Bridge {
            self.fix_default_route(&container).await?;
        }
        if container.endpoints.is_empty() && docker::forgotten_when_empty(&container) {
            self.forget_container(&container.name)?;
        } else if changed {
            self.save_container(container)?;
        }
        Ok(())
    }
}
