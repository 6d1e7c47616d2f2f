//! Crash-safe persistence of the agent's records in an embedded redb database: every change
//! is one durable transaction, so a crash leaves either the old record or the new one.
//! A corrupt or truncated database is an error that names the file; the agent never starts
//! over empty on its own.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, Result,
    model::{ContainerRecord, DockerEndpointRecord, FilterRecord, IpamPoolRecord, NetworkRecord},
};

const DB_FILE: &str = "bpfbridge.redb";
/// Network name → JSON record.
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
/// Container name → JSON record.
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
/// Filter rule id → JSON record.
const FILTERS: TableDefinition<u32, &[u8]> = TableDefinition::new("filters");
/// Small facts such as the ids of the predefined `host` and `none` networks.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// Endpoints Docker has created through the plugin but not (yet) joined to a sandbox.
const DOCKER_ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("docker_endpoints");
/// Address pools handed to Docker by the plugin's IPAM driver.
const IPAM_POOLS: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam_pools");
type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

/// Everything the store holds, loaded at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub networks: BTreeMap<String, NetworkRecord>,
    pub containers: BTreeMap<String, ContainerRecord>,
    pub meta: BTreeMap<String, String>,
    pub filters: BTreeMap<u32, FilterRecord>,
    pub docker_endpoints: BTreeMap<String, DockerEndpointRecord>,
    pub ipam_pools: BTreeMap<String, IpamPoolRecord>,
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(Error::io(format!("creating state dir {}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| store_error(&path, e))?;
        let store = Store { db, path };
        // Make sure every table exists, so that reads never meet a missing one.
        store.write(|txn| {
            txn.open_table(NETWORKS)?;
            txn.open_table(CONTAINERS)?;
            txn.open_table(META)?;
            txn.open_table(FILTERS)?;
            txn.open_table(DOCKER_ENDPOINTS)?;
            txn.open_table(IPAM_POOLS)?;
            Ok(())
        })?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<(), redb::Error>,
    ) -> Result<()> {
        let run = || -> std::result::Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            f(&txn)?;
            txn.commit()?;
            Ok(())
        };
        run().map_err(|e| store_error(&self.path, e))
    }

    pub fn load(&self) -> Result<State> {
        let read = || -> std::result::Result<State, redb::Error> {
            let txn = self.db.begin_read()?;
            Ok(State {
                networks: read_table(&txn.open_table(NETWORKS)?)?,
                containers: read_table(&txn.open_table(CONTAINERS)?)?,
                meta: txn
                    .open_table(META)?
                    .iter()?
                    .map(|e| e.map(|(k, v)| (k.value().to_string(), v.value().to_string())))
                    .collect::<std::result::Result<_, _>>()?,
                filters: txn
                    .open_table(FILTERS)?
                    .iter()?
                    .map(|e| {
                        let (k, v) = e?;
                        let record = serde_json::from_slice(v.value()).map_err(|e| {
                            redb::Error::Corrupted(format!(
                                "filter {} does not decode: {e}",
                                k.value()
                            ))
                        })?;
                        Ok((k.value(), record))
                    })
                    .collect::<std::result::Result<_, redb::Error>>()?,
                docker_endpoints: read_table(&txn.open_table(DOCKER_ENDPOINTS)?)?,
                ipam_pools: read_table(&txn.open_table(IPAM_POOLS)?)?,
            })
        };
        read().map_err(|e| store_error(&self.path, e))
    }

    fn put_json<T: Serialize>(&self, table: JsonTable, key: &str, value: &T) -> Result<()> {
        let bytes = encode(&self.path, value)?;
        self.write(|txn| {
            txn.open_table(table)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    fn delete_key(&self, table: JsonTable, key: &str) -> Result<()> {
        self.write(|txn| {
            txn.open_table(table)?.remove(key)?;
            Ok(())
        })
    }

    pub fn put_network(&self, network: &NetworkRecord) -> Result<()> {
        self.put_json(NETWORKS, &network.name, network)
    }

    pub fn delete_network(&self, name: &str) -> Result<()> {
        self.delete_key(NETWORKS, name)
    }

    pub fn put_docker_endpoint(&self, endpoint: &DockerEndpointRecord) -> Result<()> {
        self.put_json(DOCKER_ENDPOINTS, &endpoint.endpoint_id, endpoint)
    }

    pub fn delete_docker_endpoint(&self, endpoint_id: &str) -> Result<()> {
        self.delete_key(DOCKER_ENDPOINTS, endpoint_id)
    }

    pub fn put_ipam_pool(&self, pool: &IpamPoolRecord) -> Result<()> {
        self.put_json(IPAM_POOLS, &pool.pool_id, pool)
    }

    pub fn delete_ipam_pool(&self, pool_id: &str) -> Result<()> {
        self.delete_key(IPAM_POOLS, pool_id)
    }

    pub fn put_filter(&self, filter: &FilterRecord) -> Result<()> {
        let bytes = encode(&self.path, filter)?;
        self.write(|txn| {
            txn.open_table(FILTERS)?
                .insert(filter.id, bytes.as_slice())?;
            Ok(())
        })
    }

    pub fn delete_filter(&self, id: u32) -> Result<()> {
        self.write(|txn| {
            txn.open_table(FILTERS)?.remove(id)?;
            Ok(())
        })
    }

    pub fn put_meta(&self, key: &str, value: &str) -> Result<()> {
        self.write(|txn| {
            txn.open_table(META)?.insert(key, value)?;
            Ok(())
        })
    }

    pub fn put_container(&self, container: &ContainerRecord) -> Result<()> {
        self.put_json(CONTAINERS, &container.name, container)
    }

    pub fn delete_container(&self, name: &str) -> Result<()> {
        self.delete_key(CONTAINERS, name)
    }
}

fn encode<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| Error::State {
        path: path.to_path_buf(),
        source,
    })
}

fn read_table<T: DeserializeOwned>(
    table: &redb::ReadOnlyTable<&str, &[u8]>,
) -> std::result::Result<BTreeMap<String, T>, redb::Error> {
    let mut out = BTreeMap::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let record = serde_json::from_slice(value.value()).map_err(|e| {
            redb::Error::Corrupted(format!("record {:?} does not decode: {e}", key.value()))
        })?;
        out.insert(key.value().to_string(), record);
    }
    Ok(out)
}

fn store_error(path: &Path, source: impl Into<redb::Error>) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        source: Box::new(source.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(name: &str) -> NetworkRecord {
        NetworkRecord {
            id: "abc".into(),
            created: "now".into(),
            bridge: "bpfbr0".into(),
            ..NetworkRecord::for_tests(name, "172.17.0.0/16")
        }
    }

    #[test]
    fn round_trip_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(&dir.path().join("nested")).unwrap();
            assert_eq!(store.load().unwrap(), State::default());
            store.put_network(&network("bridge")).unwrap();
            store.put_network(&network("other")).unwrap();
            store.delete_network("other").unwrap();
        }
        let store = Store::open(&dir.path().join("nested")).unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.networks.keys().collect::<Vec<_>>(), ["bridge"]);
        assert_eq!(state.networks["bridge"], network("bridge"));
    }

    #[test]
    fn truncated_or_garbage_database_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_network(&network("bridge")).unwrap();
        }
        let path = dir.path().join(DB_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 3).unwrap();
        drop(file);
        let err = Store::open(dir.path())
            .and_then(|s| s.load())
            .expect_err("truncated database");
        assert!(err.to_string().contains(DB_FILE), "{err}");

        std::fs::write(&path, b"not a database at all").unwrap();
        let err = Store::open(dir.path())
            .and_then(|s| s.load())
            .expect_err("garbage database");
        assert!(err.to_string().contains(DB_FILE), "{err}");
    }
}
