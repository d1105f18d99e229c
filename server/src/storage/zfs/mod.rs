//! The ZFS backend: every dataset is a ZFS filesystem under one root dataset (`tank/walvault`),
//! driven through the `zfs` command and the process runner.
//!
//! Invariants and choices:
//! - only the classic CLI subset that zfs-fuse (tests, laptops) and OpenZFS (production) share
//!   is used: `zfs list` has no `-p` on zfs-fuse, so numbers are always read with `zfs get -H -p`;
//! - `-H -p` output is parsed strictly: anything unexpected is [`StorageError::Parse`];
//! - known stderr messages become typed [`StorageError`] variants (each one is provoked on real
//!   ZFS by the contract suite); everything else stays a [`StorageError::Process`] with argv and
//!   stderr;
//! - on zfs-fuse every command that changes something runs under the machine-wide lock of
//!   [`zfs_lock`](super::zfs_lock) (zfs-fuse wedges under concurrent creates/mounts/destroys); reads do not;
//! - zfs-fuse reports "dataset is busy" for a moment after a dataset is created or its last file
//!   is closed, so destructive commands are retried for [`BUSY_TIMEOUT`];
//! - user properties live under [`PROPERTY_PREFIX`]; only locally set ones are reported, because
//!   ZFS makes snapshots and children inherit them;
//! - an empty property value removes the property (`zfs inherit`), since zfs-fuse rejects one;
//!   values are single lines of at most [`PROPERTY_VALUE_MAX`] bytes, keys use ZFS's characters;
//! - every existing dataset is mounted: when `zfs create`/`zfs clone` makes a dataset but cannot
//!   mount it (its parent is out of quota), the dataset is destroyed again;
//! - a recordsize above zfs-fuse's 128K limit falls back to 128K with a warning.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    DatasetOptions, DatasetPath, SnapshotInfo, Space, Storage, StorageError, PROPERTY_PREFIX,
};
use crate::process::ProcessError;

mod cli;
use cli::*;

/// How long a "dataset is busy" answer is retried. zfs-fuse says busy for ~60 ms after a
/// dataset was created or a file in it was closed (measured here; longer under load), and
/// fails to unmount for as long as a file stays open.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Compressions tried at open, best first. lzjb comes before gzip: on zfs-fuse gzip writes about
/// 4x slower than lzjb; zstd and lz4 only exist on OpenZFS.
const COMPRESSIONS: [&str; 4] = ["zstd", "lz4", "lzjb", "gzip"];

/// Largest recordsize zfs-fuse accepts (OpenZFS with large_blocks goes up to 16M).
const ZFS_FUSE_MAX_RECORDSIZE: u32 = 128 * 1024;

/// Longest property value we store. zfs-fuse aborts with E2BIG a bit above 8 KiB and OpenZFS
/// caps values at 8 KiB; walvault's values (ids, LSNs, labels, times) are far shorter.
pub const PROPERTY_VALUE_MAX: usize = 4096;

/// Longest property key (without the prefix); ZFS caps the whole name at 256 bytes.
pub const PROPERTY_KEY_MAX: usize = 200;

/// How many snapshot names go into one `zfs get` command line.
const SNAPSHOTS_PER_GET: usize = 200;

/// Checks a user property key (without [`PROPERTY_PREFIX`]) against the characters ZFS allows
/// in user property names. Both backends use it so a laptop accepts exactly what production does.
pub(super) fn check_property_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.len() <= PROPERTY_KEY_MAX
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidName(format!("{PROPERTY_PREFIX}{key}")))
    }
}

/// Checks a non-empty property value: no line breaks or NULs (they would break the line-based
/// `zfs get -H` output or cannot be passed in argv) and at most [`PROPERTY_VALUE_MAX`] bytes.
pub(super) fn check_property_value(key: &str, value: &str) -> Result<(), StorageError> {
    let ok = value.len() <= PROPERTY_VALUE_MAX && !value.contains(['\n', '\r', '\0']);
    if ok {
        Ok(())
    } else {
        let shown: String = value.chars().take(40).collect();
        Err(StorageError::InvalidName(format!(
            "{PROPERTY_PREFIX}{key}={shown:?}"
        )))
    }
}

/// Snapshot names follow the same rules as dataset name components.
pub(super) fn check_snapshot_name(name: &str) -> Result<(), StorageError> {
    DatasetPath::new([name]).map(|_| ())
}

/// The parent of a non-root dataset.
pub(super) fn parent_of(path: &DatasetPath) -> Option<DatasetPath> {
    let c = path.components();
    if c.is_empty() {
        return None;
    }
    DatasetPath::new(&c[..c.len() - 1]).ok()
}

#[derive(Debug)]
pub struct ZfsStorage {
    root: String,
    compression: String,
}

/// What an operation was about, to turn a stderr message into the right typed error.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Dataset(&'a DatasetPath),
    Snapshot(&'a DatasetPath, &'a str),
}

impl ZfsStorage {
    /// One listing of a dataset's snapshots with their properties.
    fn snapshots_once(&self, path: &DatasetPath) -> Result<Vec<SnapshotInfo>, StorageError> {
        let name = self.dataset_name(path);
        // Without a sort key both zfs-fuse and OpenZFS list a dataset's snapshots in creation
        // (txg) order.
        let listing = zfs(&[
            "list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", &name,
        ])
        .map_err(|e| self.classify(e, Subject::Dataset(path)))?;
        let prefix = format!("{name}@");
        let mut names = Vec::new();
        for line in listing.split('\n').filter(|l| !l.is_empty()) {
            let snap = line
                .strip_prefix(&prefix)
                .ok_or_else(|| StorageError::Parse {
                    what: format!("zfs list -t snapshot -d 1 {name}"),
                    detail: format!("{line:?} is not a snapshot of {name}"),
                })?;
            names.push((line, snap));
        }

        let mut infos = Vec::with_capacity(names.len());
        for chunk in names.chunks(SNAPSHOTS_PER_GET) {
            let mut args = vec!["get", "-H", "-p", "-o", "name,property,value,source", "all"];
            args.extend(chunk.iter().map(|(full, _)| *full));
            let out = zfs(&args).map_err(|e| self.classify(e, Subject::Dataset(path)))?;
            let what = format!("zfs get all <snapshots of {name}>");
            let lines = parse_get_lines(&what, &out, true)?;
            for (full, snap) in chunk {
                let mine: Vec<&PropertyLine<'_>> =
                    lines.iter().filter(|l| l.name == Some(*full)).collect();
                let value = |p: &str| {
                    mine.iter()
                        .find(|l| l.property == p)
                        .map(|l| l.value)
                        .ok_or_else(|| StorageError::Parse {
                            what: what.clone(),
                            detail: format!("no {p} for {full}"),
                        })
                };
                let createtxg = match value("createtxg") {
                    Ok(v) => Some(parse_u64(&format!("createtxg of {full}"), v)?),
                    Err(_) => None, // zfs-fuse has no createtxg
                };
                let info = SnapshotInfo {
                    name: (*snap).to_owned(),
                    created_unix: parse_i64(&format!("creation of {full}"), value("creation")?)?,
                    used: parse_u64(&format!("used of {full}"), value("used")?)?,
                    properties: local_user_properties(mine.iter().copied()),
                };
                infos.push((createtxg, info));
            }
        }
        // The listing order already is creation order; sorting (stably) only guards against a
        // ZFS that sorts differently. Seconds are coarse, the txg is exact where it exists.
        if infos.iter().all(|(txg, _)| txg.is_some()) {
            infos.sort_by_key(|(txg, _)| *txg);
        } else {
            infos.sort_by_key(|(_, info)| info.created_unix);
        }
        Ok(infos.into_iter().map(|(_, info)| info).collect())
    }

    /// Opens (creating it with `zfs create -p` if needed) the root dataset, e.g. `tank/walvault`,
    /// picks the best compression it supports and turns atime off; descendants inherit both.
    pub fn open(root: &str) -> Result<ZfsStorage, StorageError> {
        let root = root.trim_matches('/');
        // The same rules as for our own names (an empty root fails here too).
        DatasetPath::new(root.split('/'))?;
        let mut storage = ZfsStorage {
            root: root.to_owned(),
            compression: String::new(),
        };
        if !storage.exists(&DatasetPath::root())? {
            tracing::info!(root, "creating root dataset");
            zfs(&["create", "-p", root])?;
        }

        let mut last_err = None;
        for c in COMPRESSIONS {
            match zfs(&["set", &format!("compression={c}"), root]) {
                Ok(_) => {
                    storage.compression = c.to_owned();
                    last_err = None;
                    break;
                }
                Err(e) => {
                    tracing::debug!(root, compression = c, error = %e, "compression not supported");
                    last_err = Some(e);
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e.into());
        }
        zfs(&["set", "atime=off", root])?;
        // Fails early on a root that is not mounted where walvault expects files.
        let mountpoint = storage.mountpoint(&DatasetPath::root())?;
        tracing::info!(root, compression = %storage.compression, mountpoint = %mountpoint.display(), "opened ZFS storage");
        Ok(storage)
    }

    /// The root dataset's full name.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The full ZFS name of a dataset.
    pub fn dataset_name(&self, path: &DatasetPath) -> String {
        if path.is_root() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, path.components().join("/"))
        }
    }

    fn snapshot_name(&self, path: &DatasetPath, snapshot: &str) -> String {
        format!("{}@{snapshot}", self.dataset_name(path))
    }

    /// The dataset a full ZFS name (possibly with `@snapshot`) refers to, if under our root.
    fn path_of(&self, full: &str) -> Option<DatasetPath> {
        let ds = full.split('@').next().unwrap_or(full);
        if ds == self.root {
            return Some(DatasetPath::root());
        }
        let rest = ds.strip_prefix(&self.root)?.strip_prefix('/')?;
        DatasetPath::new(rest.split('/')).ok()
    }

    /// Turns a failed `zfs` run into a typed error where its stderr is a known condition.
    fn classify(&self, err: ProcessError, subject: Subject<'_>) -> StorageError {
        let stderr = err.stderr();
        match subject {
            Subject::Dataset(path) => {
                if stderr.contains("parent does not exist") {
                    if let Some(parent) = parent_of(path) {
                        return StorageError::DatasetNotFound(parent);
                    }
                }
                if is_not_found(stderr) {
                    return StorageError::DatasetNotFound(path.clone());
                }
                if stderr.contains("dataset already exists") {
                    return StorageError::DatasetExists(path.clone());
                }
                if is_has_clones(stderr) {
                    return StorageError::HasClones {
                        dataset: path.clone(),
                    };
                }
            }
            Subject::Snapshot(path, snapshot) => {
                // Before "not found": a refused `destroy -r` also says "no snapshots destroyed".
                if is_has_clones(stderr) {
                    return StorageError::HasClones {
                        dataset: path.clone(),
                    };
                }
                if is_not_found(stderr) {
                    // The message does not say whether the dataset or the snapshot is missing.
                    return match self.exists(path) {
                        Ok(false) => StorageError::DatasetNotFound(path.clone()),
                        _ => StorageError::SnapshotNotFound {
                            dataset: path.clone(),
                            snapshot: snapshot.to_owned(),
                        },
                    };
                }
                if stderr.contains("dataset already exists") {
                    // With -r the message names the descendant that already has the snapshot.
                    let dataset = quoted(stderr)
                        .and_then(|q| self.path_of(q))
                        .unwrap_or_else(|| path.clone());
                    return StorageError::SnapshotExists {
                        dataset,
                        snapshot: snapshot.to_owned(),
                    };
                }
            }
        }
        let path = match subject {
            Subject::Dataset(p) | Subject::Snapshot(p, _) => p,
        };
        if is_busy(stderr) {
            return StorageError::Busy(path.clone());
        }
        if is_quota(stderr) {
            return StorageError::QuotaExceeded {
                dataset: path.clone(),
            };
        }
        StorageError::Process(err)
    }

    /// Runs a destructive command, retrying while ZFS says busy. Returns the last result and
    /// whether it was a retry (a retry that finds nothing means an earlier attempt did the job).
    fn run_retrying_busy(&self, args: &[&str]) -> (Result<String, ProcessError>, bool) {
        let started = Instant::now();
        let mut pause = Duration::from_millis(25);
        let mut retried = false;
        loop {
            match zfs(args) {
                Err(e) if is_busy(e.stderr()) && started.elapsed() < BUSY_TIMEOUT => {
                    tracing::debug!(
                        ?args,
                        waited_ms = started.elapsed().as_millis(),
                        "busy, retrying"
                    );
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(250));
                    retried = true;
                }
                other => {
                    if retried {
                        tracing::debug!(
                            ?args,
                            waited_ms = started.elapsed().as_millis(),
                            "busy retries ended"
                        );
                    }
                    return (other, retried);
                }
            }
        }
    }

    /// A failed unmount leaves datasets unmounted; mount them again so that every existing
    /// dataset stays mounted. Best effort: the caller is already reporting an error.
    fn remount_subtree(&self, name: &str) {
        let listing = match zfs(&[
            "list",
            "-H",
            "-o",
            "name,mounted",
            "-r",
            "-t",
            "filesystem",
            name,
        ]) {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(dataset = name, error = %e, "could not list datasets to remount");
                return;
            }
        };
        for line in listing.lines() {
            if let Some((ds, "no")) = line.split_once('\t') {
                if let Err(e) = zfs(&["mount", ds]) {
                    tracing::warn!(dataset = ds, error = %e, "could not remount after a busy failure");
                }
            }
        }
    }

    /// `zfs get -H -p -o property,value` of fixed properties, as a map.
    fn get_values(
        &self,
        path: &DatasetPath,
        properties: &[&str],
    ) -> Result<BTreeMap<String, String>, StorageError> {
        let name = self.dataset_name(path);
        let out = zfs(&[
            "get",
            "-H",
            "-p",
            "-o",
            "property,value",
            &properties.join(","),
            &name,
        ])
        .map_err(|e| self.classify(e, Subject::Dataset(path)))?;
        let what = format!("zfs get {} {name}", properties.join(","));
        let mut values = BTreeMap::new();
        for line in out.split('\n').filter(|l| !l.is_empty()) {
            let (property, value) = line.split_once('\t').ok_or_else(|| StorageError::Parse {
                what: what.clone(),
                detail: format!("expected 'property<TAB>value', got {line:?}"),
            })?;
            values.insert(property.to_owned(), value.to_owned());
        }
        for p in properties {
            if !values.contains_key(*p) {
                return Err(StorageError::Parse {
                    what,
                    detail: format!("property {p} missing from {out:?}"),
                });
            }
        }
        Ok(values)
    }

    /// After `zfs create`/`zfs clone` printed "failed to create mountpoint" the dataset exists
    /// but is not mounted, usually because the parent is out of quota and cannot hold the
    /// mountpoint directory. Undo it, so existing datasets are always mounted, and say why.
    fn undo_unmounted(&self, path: &DatasetPath, err: ProcessError) -> StorageError {
        let name = self.dataset_name(path);
        tracing::warn!(dataset = %name, error = %err, "created but not mounted; destroying it again");
        if let (Err(e), _) = self.run_retrying_busy(&["destroy", &name]) {
            tracing::warn!(dataset = %name, error = %e, "could not destroy unmounted dataset");
        }
        let parent = parent_of(path).unwrap_or_else(DatasetPath::root);
        match self.space(&parent) {
            Ok(space) if space.available == 0 => StorageError::QuotaExceeded { dataset: parent },
            _ => StorageError::Process(err),
        }
    }
}

impl Storage for ZfsStorage {
    fn backend(&self) -> &'static str {
        "zfs"
    }

    fn location(&self) -> String {
        self.root.clone()
    }

    fn compression(&self) -> String {
        self.compression.clone()
    }

    fn reserves(&self, name: &str) -> bool {
        // The snapshot directory at every dataset's root (visible or not).
        name == ".zfs"
    }

    fn create(&self, path: &DatasetPath, options: &DatasetOptions) -> Result<(), StorageError> {
        if path.is_root() {
            return Err(StorageError::DatasetExists(path.clone()));
        }
        let name = self.dataset_name(path);
        let build = |recordsize: Option<u32>| {
            let mut args = vec!["create".to_owned()];
            if let Some(rs) = recordsize {
                args.extend(["-o".to_owned(), format!("recordsize={rs}")]);
            }
            if let Some(dedup) = options.dedup {
                args.extend([
                    "-o".to_owned(),
                    format!("dedup={}", if dedup { "on" } else { "off" }),
                ]);
            }
            if let Some(q) = options.quota.filter(|q| *q > 0) {
                args.extend(["-o".to_owned(), format!("quota={q}")]);
            }
            args.push(name.clone());
            args
        };
        let run = |args: Vec<String>| zfs(&args);
        let mut result = run(build(options.recordsize));
        if let (Err(e), Some(rs)) = (&result, options.recordsize) {
            // zfs-fuse stops at 128K; production OpenZFS takes the larger size asked for.
            if rs > ZFS_FUSE_MAX_RECORDSIZE && e.stderr().contains("'recordsize' must be") {
                tracing::info!(dataset = %name, requested = rs, used = ZFS_FUSE_MAX_RECORDSIZE, "recordsize not supported by this ZFS; using its maximum");
                result = run(build(Some(ZFS_FUSE_MAX_RECORDSIZE)));
            }
        }
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.stderr().contains("failed to create mountpoint") => {
                Err(self.undo_unmounted(path, e))
            }
            Err(e) => Err(self.classify(e, Subject::Dataset(path))),
        }
    }

    fn exists(&self, path: &DatasetPath) -> Result<bool, StorageError> {
        let name = self.dataset_name(path);
        match zfs(&["list", "-H", "-o", "name", "-t", "filesystem", &name]) {
            Ok(out) if out.trim_end_matches('\n') == name => Ok(true),
            Ok(out) => Err(StorageError::Parse {
                what: format!("zfs list {name}"),
                detail: format!("expected {name:?}, got {out:?}"),
            }),
            Err(e) if is_not_found(e.stderr()) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn children(&self, path: &DatasetPath) -> Result<Vec<String>, StorageError> {
        let name = self.dataset_name(path);
        let out = zfs(&[
            "list",
            "-H",
            "-o",
            "name",
            "-d",
            "1",
            "-t",
            "filesystem",
            &name,
        ])
        .map_err(|e| self.classify(e, Subject::Dataset(path)))?;
        let prefix = format!("{name}/");
        let mut children = Vec::new();
        for line in out.split('\n').filter(|l| !l.is_empty() && *l != name) {
            let child = line
                .strip_prefix(&prefix)
                .filter(|c| !c.contains('/') && DatasetPath::new([*c]).is_ok())
                .ok_or_else(|| StorageError::Parse {
                    what: format!("zfs list -d 1 {name}"),
                    detail: format!("{line:?} is not a direct child of {name}"),
                })?;
            children.push(child.to_owned());
        }
        children.sort();
        Ok(children)
    }

    fn mountpoint(&self, path: &DatasetPath) -> Result<PathBuf, StorageError> {
        let name = self.dataset_name(path);
        let out = zfs(&["get", "-H", "-p", "-o", "value", "mountpoint", &name])
            .map_err(|e| self.classify(e, Subject::Dataset(path)))?;
        let value = out.strip_suffix('\n').unwrap_or(&out);
        if !value.starts_with('/') || value.contains('\n') {
            return Err(StorageError::Parse {
                what: format!("mountpoint of {name}"),
                detail: format!("{value:?} is not a path; walvault needs ZFS-managed mountpoints (not legacy or none)"),
            });
        }
        Ok(PathBuf::from(value))
    }

    fn destroy(&self, path: &DatasetPath, recursive: bool) -> Result<(), StorageError> {
        if path.is_root() {
            // Destroying the root would take every tenant with it; nothing in walvault does that.
            return Err(StorageError::InvalidName(path.to_string()));
        }
        let name = self.dataset_name(path);
        if !recursive {
            let children = self.children(path)?;
            if !children.is_empty() {
                return Err(StorageError::io(
                    format!("destroy dataset {path} without recursion"),
                    std::io::Error::new(
                        std::io::ErrorKind::DirectoryNotEmpty,
                        format!("it has child datasets {}", children.join(", ")),
                    ),
                ));
            }
        }
        // `-r` also when not recursive: the dataset's own snapshots go with it.
        match self.run_retrying_busy(&["destroy", "-r", &name]) {
            (Ok(_), _) => Ok(()),
            (Err(e), true) if is_not_found(e.stderr()) => Ok(()),
            (Err(e), _) => {
                let err = self.classify(e, Subject::Dataset(path));
                if matches!(err, StorageError::Busy(_)) {
                    self.remount_subtree(&name);
                }
                Err(err)
            }
        }
    }

    fn set_quota(&self, path: &DatasetPath, quota: Option<u64>) -> Result<(), StorageError> {
        let name = self.dataset_name(path);
        let value = match quota.filter(|q| *q > 0) {
            Some(q) => q.to_string(),
            None => "none".to_owned(),
        };
        zfs(&["set", &format!("quota={value}"), &name])
            .map_err(|e| self.classify(e, Subject::Dataset(path)))?;
        Ok(())
    }

    fn space(&self, path: &DatasetPath) -> Result<Space, StorageError> {
        let values = self.get_values(path, &["used", "available", "quota"])?;
        let name = self.dataset_name(path);
        let get = |p: &str| parse_u64(&format!("{p} of {name}"), &values[p]);
        let quota = get("quota")?;
        Ok(Space {
            used: get("used")?,
            available: get("available")?,
            // ZFS shows "no quota" as 0.
            quota: (quota > 0).then_some(quota),
        })
    }

    fn set_property(&self, path: &DatasetPath, key: &str, value: &str) -> Result<(), StorageError> {
        check_property_key(key)?;
        let name = self.dataset_name(path);
        let result = if value.is_empty() {
            zfs(&["inherit", &format!("{PROPERTY_PREFIX}{key}"), &name])
        } else {
            check_property_value(key, value)?;
            zfs(&["set", &format!("{PROPERTY_PREFIX}{key}={value}"), &name])
        };
        result.map_err(|e| self.classify(e, Subject::Dataset(path)))?;
        Ok(())
    }

    fn properties(&self, path: &DatasetPath) -> Result<BTreeMap<String, String>, StorageError> {
        let name = self.dataset_name(path);
        let out = zfs(&[
            "get",
            "-H",
            "-p",
            "-o",
            "property,value,source",
            "all",
            &name,
        ])
        .map_err(|e| self.classify(e, Subject::Dataset(path)))?;
        let lines = parse_get_lines(&format!("zfs get all {name}"), &out, false)?;
        Ok(local_user_properties(&lines))
    }

    /// With `recursive`, the properties go on every snapshot taken (that is what
    /// `zfs snapshot -r -o` does, atomically with the snapshots).
    fn snapshot(
        &self,
        path: &DatasetPath,
        name: &str,
        recursive: bool,
        properties: &BTreeMap<String, String>,
    ) -> Result<(), StorageError> {
        check_snapshot_name(name)?;
        let mut args = vec!["snapshot".to_owned()];
        if recursive {
            args.push("-r".to_owned());
        }
        for (key, value) in properties.iter().filter(|(_, v)| !v.is_empty()) {
            check_property_key(key)?;
            check_property_value(key, value)?;
            args.extend(["-o".to_owned(), format!("{PROPERTY_PREFIX}{key}={value}")]);
        }
        args.push(self.snapshot_name(path, name));
        zfs(&args).map_err(|e| self.classify(e, Subject::Snapshot(path, name)))?;
        Ok(())
    }

    fn snapshots(&self, path: &DatasetPath) -> Result<Vec<SnapshotInfo>, StorageError> {
        // A snapshot destroyed between the listing and the reading of its properties (a prune
        // at work) fails the second step: list again.
        let mut attempt = 0;
        loop {
            match self.snapshots_once(path) {
                Err(StorageError::DatasetNotFound { .. })
                    if attempt < 3 && self.exists(path)? =>
                {
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn set_snapshot_property(
        &self,
        path: &DatasetPath,
        snapshot: &str,
        key: &str,
        value: &str,
    ) -> Result<(), StorageError> {
        check_snapshot_name(snapshot)?;
        check_property_key(key)?;
        check_property_value(key, value)?;
        let full = self.snapshot_name(path, snapshot);
        zfs(&["set", &format!("{PROPERTY_PREFIX}{key}={value}"), &full])
            .map_err(|e| self.classify(e, Subject::Snapshot(path, snapshot)))?;
        Ok(())
    }

    fn destroy_snapshot(
        &self,
        path: &DatasetPath,
        name: &str,
        recursive: bool,
    ) -> Result<(), StorageError> {
        check_snapshot_name(name)?;
        let full = self.snapshot_name(path, name);
        let args: Vec<&str> = if recursive {
            vec!["destroy", "-r", &full]
        } else {
            vec!["destroy", &full]
        };
        match self.run_retrying_busy(&args) {
            (Ok(_), _) => Ok(()),
            (Err(e), true) if is_not_found(e.stderr()) => Ok(()),
            (Err(e), _) => Err(self.classify(e, Subject::Snapshot(path, name))),
        }
    }

    fn clone_snapshot(
        &self,
        path: &DatasetPath,
        snapshot: &str,
        target: &DatasetPath,
    ) -> Result<(), StorageError> {
        check_snapshot_name(snapshot)?;
        if target.is_root() {
            return Err(StorageError::DatasetExists(target.clone()));
        }
        let source = self.snapshot_name(path, snapshot);
        let target_name = self.dataset_name(target);
        match zfs(&["clone", &source, &target_name]) {
            Ok(_) => Ok(()),
            Err(e) if e.stderr().contains("failed to create mountpoint") => {
                Err(self.undo_unmounted(target, e))
            }
            Err(e) => {
                let stderr = e.stderr();
                // Errors about the source name it; everything else is about the target.
                if quoted(stderr) == Some(source.as_str()) || is_not_found(stderr) {
                    Err(self.classify(e, Subject::Snapshot(path, snapshot)))
                } else {
                    Err(self.classify(e, Subject::Dataset(target)))
                }
            }
        }
    }

    fn rollback(&self, path: &DatasetPath, snapshot: &str) -> Result<(), StorageError> {
        check_snapshot_name(snapshot)?;
        let full = self.snapshot_name(path, snapshot);
        let (result, _) = self.run_retrying_busy(&["rollback", "-r", &full]);
        result.map_err(|e| self.classify(e, Subject::Snapshot(path, snapshot)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
