//! Crash-safe persistence of the agent's state: one JSON document, replaced atomically
//! (write a temporary file, fsync it, rename it over the old one, fsync the directory), so a
//! crash leaves either the old state or the new one, never a torn file.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    model::{ContainerRecord, NetworkRecord},
};

const STATE_FILE: &str = "state.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub network: Option<NetworkRecord>,
    pub containers: BTreeMap<String, ContainerRecord>,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the state directory.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)
            .map_err(Error::io(format!("creating state dir {}", dir.display())))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The saved state, or the empty state on first start.
    pub fn load(&self) -> Result<State> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| Error::State { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()))(e)),
        }
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(state).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(Error::io(format!("writing {}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_empty_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nested")).unwrap();
        assert_eq!(store.load().unwrap(), State::default());
        let state = State {
            network: Some(NetworkRecord {
                name: "bridge".into(),
                id: "abc".into(),
                created: "now".into(),
                bridge: "bpfbr0".into(),
                subnet: "172.17.0.0/16".parse().unwrap(),
                gateway: "172.17.0.1".parse().unwrap(),
                last_allocated: None,
            }),
            ..State::default()
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert!(!dir.path().join("nested/state.json.tmp").exists());
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(store.load(), Err(Error::State { .. })));
    }
}
