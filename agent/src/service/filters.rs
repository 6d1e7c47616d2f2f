//! Source filters on published ports, and the translated flows (`conntrack`).

use super::Service;
use crate::{
    Error, Result,
    dataplane::FlowLister,
    faults::{self, CrashPoint},
    model::{CreateFilter, FilterInfo, FilterRecord},
};

impl Service {
    fn filter_info(&self, rule: &FilterRecord) -> Result<FilterInfo> {
        let hits = self.dataplane.filter_hits(rule.id)?;
        Ok(FilterInfo {
            id: rule.id,
            source: rule.source.to_string(),
            port: match rule.scope {
                Some(scope) => format!("{}/{}", scope.host_port, scope.proto.as_str()),
                None => "*".into(),
            },
            action: rule.action,
            packets: hits.packets,
            bytes: hits.bytes,
        })
    }

    pub fn list_filters(&self) -> Result<Vec<FilterInfo>> {
        self.state
            .filters
            .values()
            .map(|r| self.filter_info(r))
            .collect()
    }

    pub fn add_filter(&mut self, request: CreateFilter) -> Result<FilterInfo> {
        let (source, scope, action) = request.parse()?;
        if let Some(same) = self
            .state
            .filters
            .values()
            .find(|r| r.source == source && r.scope == scope)
        {
            return Err(Error::Conflict(format!(
                "a rule for source {source} on that port exists already (id {}); remove it first",
                same.id
            )));
        }
        let id = (0..dataplane_common::FILTER_RULES_MAX)
            .find(|id| !self.state.filters.contains_key(id))
            .ok_or_else(|| Error::Conflict("too many filter rules".into()))?;
        let rule = FilterRecord {
            id,
            source,
            scope,
            action,
        };
        let mut wanted: Vec<FilterRecord> = self.state.filters.values().cloned().collect();
        wanted.push(rule.clone());
        // The dataplane first: if it refuses, nothing was recorded.
        self.dataplane.set_filters(&wanted)?;
        faults::reach(CrashPoint::FilterAddApplied);
        if let Err(e) = self.store.put_filter(&rule) {
            wanted.pop();
            self.dataplane.set_filters(&wanted)?;
            return Err(e);
        }
        self.state.filters.insert(id, rule.clone());
        self.filter_info(&rule)
    }

    pub fn remove_filter(&mut self, id: u32) -> Result<()> {
        if !self.state.filters.contains_key(&id) {
            return Err(Error::NotFound(format!("no such filter rule: {id}")));
        }
        self.store.delete_filter(id)?;
        self.state.filters.remove(&id);
        faults::reach(CrashPoint::FilterRemoveRecorded);
        let wanted: Vec<FilterRecord> = self.state.filters.values().cloned().collect();
        self.dataplane.set_filters(&wanted)
    }

    /// Installs the recorded rules (on start).
    pub(super) fn restore_filters(&mut self) -> Result<()> {
        let wanted: Vec<FilterRecord> = self.state.filters.values().cloned().collect();
        self.dataplane.set_filters(&wanted)
    }

    /// `monitor`'s events: the dataplane's drops and new flows, if it has a feed, and the
    /// repairs.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::model::MonitorEvent> {
        self.events.subscribe()
    }

    /// A job that lists the translated flows, to run after the service's lock is let go.
    pub fn flow_lister(&self) -> Result<FlowLister> {
        self.dataplane.flow_lister()
    }

    pub fn flush_flows(&mut self) -> Result<usize> {
        self.dataplane.flush_flows()
    }
}
