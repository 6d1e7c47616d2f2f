//! Upgrades across map layout changes: an agent that finds maps pinned by an earlier build
//! with an older layout (see `dataplane_common::layout`) carries their entries into maps of
//! its own layout, with no gap in service.
//!
//! The steps, each safe to be interrupted (a crashed upgrade resumes on the next start):
//! 1. [`prepare`], before the object is loaded: reads the record of the pins' layouts (the
//!    pinned `LAYOUT` map), refuses layouts newer than this build's (a downgrade), and
//!    moves each pin whose layout is older to `retired/vN/NAME` (bpffs allows no dots in
//!    names), then records this build's layouts. Maps whose layout did not change are left
//!    as they are, and the loader re-adopts them as on any restart.
//! 2. The loader makes the changed maps afresh. Once the new programs are loaded,
//!    [`Migration::copy`] copies the retired maps' entries into the new ones, converted (the
//!    earlier programs still run on the retired maps meanwhile).
//! 3. The caller swaps the programs through the pinned links (`bpf_link_update`: XDP and TCX
//!    links are updated in place, cgroup links replaced): the uplinks' right after the copy
//!    (every program is loaded before it), then at once [`Migration::swap_containers`] the
//!    TC links of every container, and copies again what the earlier programs added in
//!    between (never over an entry the new programs wrote). A flow the new uplink program
//!    opens has its replies meet the earlier tables only in the microseconds between the
//!    two swaps. [`Migration::finish`], once the socket programs are swapped too, copies a
//!    last time and removes the retired pins.
//!
//! Why a pinned map for the record and not a manifest file: the pin directory is on bpffs,
//! which holds pins and directories only (no regular files), and a pinned map lives and dies
//! with the pins it describes (removing the pin directory removes both).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, Pod,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        SchedClassifier,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use dataplane_common::{
    CONTAINER6_PROGRAMS, Counter, FlowKey, NAT_FLOWS, NatFlow, STATS,
    layout::{self, LAYOUT, LAYOUT_MAX, LayoutKey, MapLayout, UNRECORDED_VERSION},
};

use crate::{Error, Result};

/// `bpf_map_update_elem`'s flag: only add, never replace.
const BPF_NOEXIST: u64 = 1;
/// Where the pinned links are, under the pin directory; not maps.
const LINKS_DIR: &str = "links";
/// Where maps of an earlier layout wait, under the pin directory, while their entries are
/// carried over: `retired/vN/NAME`.
const RETIRED_DIR: &str = "retired";

/// Why the pins cannot be used or migrated: each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "{pin}: made by a newer bpfbridge ({map} layout v{found}; this agent knows up to v{known}). \
         Run that newer agent again (its pins hold the node's flows), or, to downgrade anyway, stop \
         the agent and remove {pin_dir} (dropping every flow on the node)"
    )]
    Newer {
        pin: PathBuf,
        pin_dir: PathBuf,
        map: String,
        found: u32,
        known: u32,
    },
    #[error(
        "{pin}: not a map this agent knows (made by a newer bpfbridge?). Run the agent that made \
         it, or stop the agent and remove {pin_dir} (dropping every flow on the node)"
    )]
    Unknown { pin: PathBuf, pin_dir: PathBuf },
    #[error(
        "{pin}: the kernel reports {key_size}-byte keys and {value_size}-byte values, not what \
         {map} layout v{version} has; stop the agent and remove {pin_dir} to start afresh"
    )]
    Mismatch {
        pin: PathBuf,
        pin_dir: PathBuf,
        map: String,
        version: u32,
        key_size: u32,
        value_size: u32,
    },
    #[error(
        "{pin}: {map} layout v{version} has no conversion to v{current} in this agent; stop the \
         agent and remove {pin_dir} to start afresh"
    )]
    NoConversion {
        pin: PathBuf,
        pin_dir: PathBuf,
        map: String,
        version: u32,
        current: u32,
    },
}

/// How a retired map's entries become entries of the current layout: copies every entry
/// of `old` not in `new` yet, and returns how many it copied.
type Conversion = fn(&Map, &mut Map) -> Result<usize>;

/// The conversions from each layout in `layout::PREVIOUS` to the current one.
const CONVERSIONS: &[(&str, u32, Conversion)] = &[(
    NAT_FLOWS,
    1,
    copy_hash::<FlowKey, layout::v1::NatFlow, NatFlow>,
)];

/// The conversions of the maps whose layout fixes their entry count (`MapLayout::entries`)
/// to a map of the current count.
const RESIZES: &[(&str, Conversion)] = &[
    (STATS, merge_counters),
    (CONTAINER6_PROGRAMS, refilled_by_the_loader),
];

fn resize(name: &str) -> Option<Conversion> {
    RESIZES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, copy)| *copy)
}

fn conversion(name: &str, version: u32) -> Option<Conversion> {
    CONVERSIONS
        .iter()
        .find(|(n, v, _)| *n == name && *v == version)
        .map(|(_, _, copy)| *copy)
}

/// A map pinned with an earlier layout, moved aside until its entries are carried over.
#[derive(Debug)]
struct Retired {
    layout: MapLayout,
    pin: PathBuf,
    copy: Conversion,
}

/// A migration under way (none when every pin has the current layout).
#[derive(Debug)]
pub struct Migration {
    pin_dir: PathBuf,
    retired: Vec<Retired>,
    started: Instant,
    /// When the first copy was done: from then on the programs are swapped, and flows the
    /// new uplink program opens are not in the tables of the old container programs.
    copied: Option<Instant>,
    /// From the first copy to the containers' links running the new program: the window in
    /// which a reply may meet tables its flow is not in.
    containers_swapped_after: Option<Duration>,
    /// Entries carried over so far.
    entries: usize,
}

/// What a finished migration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    pub maps: usize,
    pub entries: usize,
}

/// The retired pin of map `name` at layout `version`.
fn retired_pin(pin_dir: &Path, name: &str, version: u32) -> PathBuf {
    pin_dir
        .join(RETIRED_DIR)
        .join(format!("v{version}"))
        .join(name)
}

/// The layout version a directory of retired pins holds (`vN`).
fn parse_version_dir(dir_name: &str) -> Option<u32> {
    dir_name.strip_prefix('v')?.parse().ok()
}

/// The pins left under `retired/` by an upgrade that stopped half-way: (map, version, pin).
fn retired_pins(pin_dir: &Path) -> Result<Vec<(String, u32, PathBuf)>> {
    let retired_dir = pin_dir.join(RETIRED_DIR);
    let mut pins = Vec::new();
    for (dir_name, dir) in list(&retired_dir)? {
        let Some(version) = parse_version_dir(&dir_name) else {
            return Err(Error::dataplane("checking the pinned maps' layouts")(
                LayoutError::Unknown {
                    pin: dir,
                    pin_dir: pin_dir.to_path_buf(),
                },
            ));
        };
        for (name, pin) in list(&dir)? {
            pins.push((name, version, pin));
        }
    }
    Ok(pins)
}

/// The entries of a directory, by name; none when it does not exist.
fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("listing {}", dir.display())))?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    out.sort();
    Ok(out)
}

/// The layout versions recorded in the pinned `LAYOUT` map (empty when there is none: pins
/// from before the record, or no pins at all).
fn read_record(pin_dir: &Path) -> Result<BTreeMap<String, u32>> {
    let path = pin_dir.join(LAYOUT);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let map = open_hash::<LayoutKey, u32>(&path)?;
    let mut record = BTreeMap::new();
    for entry in map.iter() {
        let (key, version) =
            entry.map_err(Error::dataplane(format!("reading {}", path.display())))?;
        let name = key.name().ok_or_else(|| {
            Error::dataplane("reading the layout record")(LayoutError::Unknown {
                pin: path.clone(),
                pin_dir: pin_dir.to_path_buf(),
            })
        })?;
        record.insert(name.to_string(), version);
    }
    Ok(record)
}

/// The map pinned at `path`, as the kernel describes it (so its sizes are the pin's, not
/// what this build expects).
fn open_map(path: &Path) -> Result<Map> {
    let data =
        MapData::from_pin(path).map_err(Error::dataplane(format!("opening {}", path.display())))?;
    Map::from_map_data(data).map_err(Error::dataplane(format!("opening {}", path.display())))
}

fn open_hash<K: Pod, V: Pod>(path: &Path) -> Result<HashMap<MapData, K, V>> {
    HashMap::try_from(open_map(path)?)
        .map_err(Error::dataplane(format!("opening {}", path.display())))
}

/// The kernel's key size, value size and entry count of the map pinned at `path`.
fn pinned_sizes(path: &Path) -> Result<(u32, u32, u32)> {
    let data =
        MapData::from_pin(path).map_err(Error::dataplane(format!("opening {}", path.display())))?;
    let info = data
        .info()
        .map_err(Error::dataplane(format!("reading {}", path.display())))?;
    Ok((info.key_size(), info.value_size(), info.max_entries()))
}

/// What one pin is, checked against what this build knows.
enum PinState {
    /// The current layout: re-adopted as it is.
    Current,
    /// An earlier layout this build converts from.
    Older(MapLayout, Conversion),
}

fn classify(pin_dir: &Path, pin: &Path, name: &str, version: u32) -> Result<PinState> {
    let layout_error = Error::dataplane("checking the pinned maps' layouts");
    let Some(current) = layout::current(name) else {
        return Err(layout_error(LayoutError::Unknown {
            pin: pin.to_path_buf(),
            pin_dir: pin_dir.to_path_buf(),
        }));
    };
    if version > current.version {
        return Err(layout_error(LayoutError::Newer {
            pin: pin.to_path_buf(),
            pin_dir: pin_dir.to_path_buf(),
            map: name.to_string(),
            found: version,
            known: current.version,
        }));
    }
    let no_conversion = || {
        Error::dataplane("checking the pinned maps' layouts")(LayoutError::NoConversion {
            pin: pin.to_path_buf(),
            pin_dir: pin_dir.to_path_buf(),
            map: name.to_string(),
            version,
            current: current.version,
        })
    };
    let (key_size, value_size, entries) = pinned_sizes(pin)?;
    let expected = layout::known(name, version);
    if expected.is_none_or(|l| (l.key_size, l.value_size) != (key_size, value_size)) {
        // An earlier layout this build has no record of has no conversion either.
        if version < current.version && expected.is_none() {
            return Err(no_conversion());
        }
        return Err(layout_error(LayoutError::Mismatch {
            pin: pin.to_path_buf(),
            pin_dir: pin_dir.to_path_buf(),
            map: name.to_string(),
            version,
            key_size,
            value_size,
        }));
    }
    if version == current.version {
        if current.entries == 0 || current.entries == entries {
            return Ok(PinState::Current);
        }
        let copy = resize(name).ok_or_else(no_conversion)?;
        return Ok(PinState::Older(current, copy));
    }
    let copy = conversion(name, version).ok_or_else(no_conversion)?;
    Ok(PinState::Older(
        expected.expect("checked to be known above"),
        copy,
    ))
}

/// The map pins under `pin_dir` (not the record, the links or the retired maps), by name.
fn map_pins(pin_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    Ok(list(pin_dir)?
        .into_iter()
        .filter(|(name, _)| ![LINKS_DIR, RETIRED_DIR, LAYOUT].contains(&name.as_str()))
        .collect())
}

/// Step 1: checks every pin under `pin_dir` against this build's layouts, retires the ones
/// with an older layout and records this build's. Nothing is changed when a pin cannot be
/// used.
pub fn prepare(pin_dir: &Path) -> Result<Migration> {
    let started = Instant::now();
    let record = read_record(pin_dir)?;
    let mut retire = Vec::new();
    let mut retired = Vec::new();
    // Left by an upgrade that stopped half-way: carried over now.
    for (name, version, pin) in retired_pins(pin_dir)? {
        match classify(pin_dir, &pin, &name, version)? {
            PinState::Older(layout, copy) => retired.push(Retired { layout, pin, copy }),
            PinState::Current => {
                return Err(Error::dataplane("checking the pinned maps' layouts")(
                    LayoutError::Unknown {
                        pin,
                        pin_dir: pin_dir.to_path_buf(),
                    },
                ));
            }
        }
    }
    for (name, pin) in map_pins(pin_dir)? {
        // Not this build's, and not recorded by a newer one (which records all of its maps):
        // nothing this agent uses, so nothing to migrate or refuse.
        if layout::current(&name).is_none() && !record.contains_key(&name) {
            tracing::warn!(pin = %pin.display(), "a pin that is not a map of this agent's; left alone");
            continue;
        }
        let version = record.get(&name).copied().unwrap_or(UNRECORDED_VERSION);
        if let PinState::Older(layout, copy) = classify(pin_dir, &pin, &name, version)? {
            retire.push(Retired { layout, pin, copy });
        }
    }
    // The record may name maps with no pin (not made yet); a newer one is still a downgrade.
    for (name, version) in &record {
        let known = layout::current(name).map(|l| l.version);
        if known.is_none_or(|known| *version > known) {
            return Err(Error::dataplane("checking the pinned maps' layouts")(
                LayoutError::Newer {
                    pin: pin_dir.join(LAYOUT),
                    pin_dir: pin_dir.to_path_buf(),
                    map: name.clone(),
                    found: *version,
                    known: known.unwrap_or(0),
                },
            ));
        }
    }
    // Every check passed: only now move anything.
    for Retired { layout, pin, copy } in retire {
        let aside = retired_pin(pin_dir, layout.name, layout.version);
        // Pinned again under the new name, then unpinned (bpffs refuses rename). A crash in
        // between leaves both pins of the one map: the retired one is already listed.
        let listed = retired.iter().any(|r: &Retired| r.pin == aside);
        if !listed {
            let dir = aside
                .parent()
                .expect("a retired pin is in a version directory");
            fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
            MapData::from_pin(&pin)
                .map_err(Error::dataplane(format!("opening {}", pin.display())))?
                .pin(&aside)
                .map_err(Error::dataplane(format!("pinning {}", aside.display())))?;
        }
        fs::remove_file(&pin).map_err(Error::io(format!("removing {}", pin.display())))?;
        if listed {
            continue;
        }
        tracing::info!(
            map = layout.name,
            from = layout.version,
            "pinned map has an older layout; migrating its entries"
        );
        retired.push(Retired {
            layout,
            pin: aside,
            copy,
        });
    }
    // What is left in place is of this build's layout, and what the loader makes will be:
    // recorded before it makes anything, so that no crash leaves a map of a layout the
    // record does not name.
    write_record(pin_dir)?;
    Ok(Migration {
        pin_dir: pin_dir.to_path_buf(),
        retired,
        started,
        copied: None,
        containers_swapped_after: None,
        entries: 0,
    })
}

impl Migration {
    /// Whether any map is being migrated.
    pub fn is_upgrade(&self) -> bool {
        !self.retired.is_empty()
    }

    /// Still step 2, as late as can be before the first program is swapped (once the
    /// programs are loaded): carries the retired maps' entries over.
    pub fn copy(&mut self) -> Result<()> {
        self.copy_retired()?;
        self.copied = Some(Instant::now());
        Ok(())
    }

    fn copy_retired(&mut self) -> Result<()> {
        for retired in &self.retired {
            let old = open_map(&retired.pin)?;
            let mut new = open_map(&self.pin_dir.join(retired.layout.name))?;
            self.entries += (retired.copy)(&old, &mut new)?;
        }
        Ok(())
    }

    /// Step 3, right after the uplinks' swap: points every container's TC link at the new
    /// program and copies what the earlier programs added since step 2 (flows the earlier
    /// uplink program opened in between, whose replies the new container program now
    /// translates).
    pub fn swap_containers(&mut self, ebpf: &mut Ebpf, container_program: &str) -> Result<()> {
        if !self.is_upgrade() || self.containers_swapped_after.is_some() {
            return Ok(());
        }
        swap_container_links(ebpf, container_program, &self.pin_dir.join(LINKS_DIR))?;
        self.containers_swapped_after = Some(self.copied.map_or(Duration::ZERO, |t| t.elapsed()));
        self.copy_retired()
    }

    /// The end of step 3, once the socket programs run the new object too: the containers'
    /// swap if [`Migration::swap_containers`] was not called, a last copy of what the earlier
    /// programs added, and the retired pins removed (the earlier maps go with the last
    /// program that used them).
    pub fn finish(mut self, ebpf: &mut Ebpf, container_program: &str) -> Result<MigrationReport> {
        if !self.is_upgrade() {
            return Ok(MigrationReport {
                maps: 0,
                entries: 0,
            });
        }
        self.swap_containers(ebpf, container_program)?;
        self.copy_retired()?;
        let retired_dir = self.pin_dir.join(RETIRED_DIR);
        fs::remove_dir_all(&retired_dir)
            .map_err(Error::io(format!("removing {}", retired_dir.display())))?;
        let report = MigrationReport {
            maps: self.retired.len(),
            entries: self.entries,
        };
        tracing::info!(
            maps = report.maps,
            entries = report.entries,
            millis = self.started.elapsed().as_millis() as u64,
            swap_millis = self.copied.map_or(0, |t| t.elapsed().as_millis() as u64),
            containers_swapped_micros = self
                .containers_swapped_after
                .map_or(0, |d| d.as_micros() as u64),
            "migrated the pinned maps to this agent's layout"
        );
        Ok(report)
    }
}

/// Records this build's layout of every map in the pinned `LAYOUT` map (made if missing).
fn write_record(pin_dir: &Path) -> Result<()> {
    let path = pin_dir.join(LAYOUT);
    if !path.exists() {
        HashMap::<MapData, LayoutKey, u32>::create(LAYOUT_MAX, 0)
            .map_err(Error::dataplane("making the layout record"))?
            .pin(&path)
            .map_err(Error::dataplane(format!("pinning {}", path.display())))?;
    }
    let mut map = open_hash::<LayoutKey, u32>(&path)?;
    for layout in layout::CURRENT {
        map.insert(LayoutKey::of(layout.name), layout.version, 0)
            .map_err(Error::dataplane("writing the layout record"))?;
    }
    Ok(())
}

/// Points every pinned container TC link at `program` (loaded) in place. A link whose veth
/// is gone is left for the endpoint's restore, which attaches afresh.
fn swap_container_links(ebpf: &mut Ebpf, program: &str, links_dir: &Path) -> Result<()> {
    let tc: &mut SchedClassifier = ebpf
        .program_mut(program)
        .ok_or_else(|| {
            Error::dataplane("program lookup")(MapError::InvalidName {
                name: program.to_string(),
            })
        })?
        .try_into()
        .map_err(Error::dataplane(format!("program {program}")))?;
    let entries = match fs::read_dir(links_dir) {
        Ok(entries) => entries,
        // Nothing attached yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("listing {}", links_dir.display()))(e)),
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("tc_") {
            continue;
        }
        let swapped = PinnedLink::from_pin(entry.path())
            .map_err(|e| e.to_string())
            .and_then(|pinned| {
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())
            })
            .and_then(|link| tc.attach_to_link(link).map_err(|e| e.to_string()));
        match swapped {
            // The link stays pinned; dropping our handle only closes a descriptor.
            Ok(id) => drop(tc.take_link(id)),
            Err(e) => tracing::info!(link = %entry.path().display(), "not swapped now ({e})"),
        }
    }
    Ok(())
}

/// A [`Conversion`] for hash maps whose keys kept their layout and whose values are converted with
/// `From`. An entry already in `new` was written by the new programs, so it is newer: kept.
fn copy_hash<K: Pod, Old: Pod, New: Pod + From<Old>>(old: &Map, new: &mut Map) -> Result<usize> {
    let old: HashMap<&MapData, K, Old> =
        HashMap::try_from(old).map_err(Error::dataplane("reading a retired map"))?;
    let mut new: HashMap<&mut MapData, K, New> =
        HashMap::try_from(new).map_err(Error::dataplane("opening a migrated map"))?;
    let (mut copied, mut no_room) = (0, 0);
    for entry in old.iter() {
        // An entry removed while we walk is simply not carried over.
        let Ok((key, value)) = entry else { continue };
        match new.insert(key, New::from(value), BPF_NOEXIST) {
            Ok(()) => copied += 1,
            Err(MapError::SyscallError(e)) => match e.io_error.raw_os_error() {
                Some(libc::EEXIST) => {}
                // A new map made smaller than the old one holds (its size flag lowered): the
                // rest cannot come along, which must not keep the agent from starting.
                Some(libc::E2BIG) => no_room += 1,
                _ => {
                    return Err(Error::dataplane("copying an entry to its new layout")(
                        MapError::SyscallError(e),
                    ));
                }
            },
            Err(e) => return Err(Error::dataplane("copying an entry to its new layout")(e)),
        }
    }
    if no_room > 0 {
        tracing::warn!(
            entries = no_room,
            "the migrated map is full: entries left behind"
        );
    }
    Ok(copied)
}

/// A [`Conversion`] for the per-CPU counters: each slot the old map has keeps, per CPU, the
/// larger of the two counts. The entries are copied twice (before the uplinks' swap and
/// after the containers'), so adding would count twice; what both the old and the new
/// programs counted in the few milliseconds between is lost instead, never doubled.
fn merge_counters(old: &Map, new: &mut Map) -> Result<usize> {
    let old: PerCpuArray<&MapData, Counter> =
        PerCpuArray::try_from(old).map_err(Error::dataplane("reading a retired counter map"))?;
    let mut new: PerCpuArray<&mut MapData, Counter> =
        PerCpuArray::try_from(new).map_err(Error::dataplane("opening a migrated counter map"))?;
    let slots = old.len().min(new.len());
    for index in 0..slots {
        let before = old
            .get(&index, 0)
            .map_err(Error::dataplane("reading a retired counter"))?;
        let now = new
            .get(&index, 0)
            .map_err(Error::dataplane("reading a migrated counter"))?;
        let merged: Vec<Counter> = before
            .iter()
            .zip(now.iter())
            .map(|(before, now)| Counter {
                packets: before.packets.max(now.packets),
                bytes: before.bytes.max(now.bytes),
            })
            .collect();
        let merged = PerCpuValues::try_from(merged).map_err(Error::io("per-CPU counters"))?;
        new.set(index, merged, 0)
            .map_err(Error::dataplane("copying counters to their new map"))?;
    }
    Ok(slots as usize)
}

/// A [`Conversion`] for a program array that gained slots (`CONTAINER6_PROGRAMS`): nothing
/// to copy, the earlier programs are of no use to this build's. The loader fills the new
/// array before the program that tail-calls through it can run; the earlier one, until it
/// is replaced, tail-calls through the retired array.
fn refilled_by_the_loader(_old: &Map, _new: &mut Map) -> Result<usize> {
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_previous_layout_has_a_conversion() {
        for layout in layout::PREVIOUS {
            assert!(
                conversion(layout.name, layout.version).is_some(),
                "{} v{}",
                layout.name,
                layout.version
            );
        }
        assert_eq!(CONVERSIONS.len(), layout::PREVIOUS.len());
    }

    #[test]
    fn every_map_of_a_fixed_entry_count_has_a_resize() {
        for layout in layout::CURRENT.iter().filter(|l| l.entries != 0) {
            assert!(resize(layout.name).is_some(), "{}", layout.name);
        }
        assert!(
            RESIZES
                .iter()
                .all(|(name, _)| layout::current(name).is_some_and(|l| l.entries != 0))
        );
    }

    #[test]
    fn retired_pins_name_their_map_and_version() {
        assert_eq!(
            retired_pin(Path::new("/p"), "NAT_FLOWS", 1),
            Path::new("/p/retired/v1/NAT_FLOWS")
        );
        assert_eq!(parse_version_dir("v1"), Some(1));
        assert_eq!(parse_version_dir("v"), None);
        assert_eq!(parse_version_dir("x1"), None);
    }
}
