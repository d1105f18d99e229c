//! A restore's clone: `<cluster>/restores/<id>/data` and `…/tblspc/<oid>`, writable clones of
//! one backup's snapshots, so nothing a restore does can touch the backup.

use std::path::{Path, PathBuf};

use walvault_proto::{Area, ClusterId};

use super::RestoreError;
use crate::layout::{ClusterLayout, SnapshotDatasets};
use crate::storage::{DatasetOptions, DatasetPath, Storage};

#[derive(Debug, Clone)]
pub struct RestoreClone {
    id: String,
    cluster: ClusterId,
    /// `<cluster>/restores/<id>`.
    dataset: DatasetPath,
}

/// One area of a clone: where its files are, and where the source host kept them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneArea {
    pub area: Area,
    pub dir: PathBuf,
    /// The tablespace's location on the source host; empty for data.
    pub location: String,
}

/// The tablespaces a `tablespace_map` names: (oid, location). PostgreSQL escapes nothing but
/// a backslash before a character it wants taken literally.
pub fn parse_tablespace_map(text: &str) -> Result<Vec<(u32, String)>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (oid, path) = line
            .split_once(' ')
            .ok_or_else(|| format!("tablespace_map line {line:?} is not `OID PATH`"))?;
        let oid = oid
            .parse::<u32>()
            .map_err(|_| format!("tablespace_map line {line:?} does not start with an OID"))?;
        let mut unescaped = String::with_capacity(path.len());
        let mut chars = path.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    unescaped.push(n);
                }
            } else {
                unescaped.push(c);
            }
        }
        out.push((oid, unescaped));
    }
    Ok(out)
}

/// A `tablespace_map` naming `entries`.
pub fn format_tablespace_map(entries: &[(u32, String)]) -> String {
    entries
        .iter()
        .map(|(oid, path)| {
            let escaped: String = path
                .chars()
                .flat_map(|c| match c {
                    '\\' | '\n' | '\r' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            format!("{oid} {escaped}\n")
        })
        .collect()
}

impl RestoreClone {
    fn paths(cluster: &ClusterId, id: &str) -> Result<(ClusterLayout, DatasetPath), RestoreError> {
        let l = ClusterLayout::of(cluster).map_err(RestoreError::storage(format!(
            "name the datasets of {cluster}"
        )))?;
        let dataset = l
            .restores
            .join(id)
            .map_err(RestoreError::storage(format!("name restore {id}")))?;
        Ok((l, dataset))
    }

    /// A clone made earlier (for listing and dropping).
    pub fn existing(cluster: &ClusterId, id: &str) -> Result<Self, RestoreError> {
        let (_, dataset) = Self::paths(cluster, id)?;
        Ok(Self {
            id: id.to_owned(),
            cluster: cluster.clone(),
            dataset,
        })
    }

    /// A clone made earlier under `parent` as `parent/<id>` (see [`RestoreClone::create_in`]).
    pub fn existing_in(
        cluster: &ClusterId,
        parent: &DatasetPath,
        id: &str,
    ) -> Result<Self, RestoreError> {
        Ok(Self {
            id: id.to_owned(),
            cluster: cluster.clone(),
            dataset: parent
                .join(id)
                .map_err(RestoreError::storage(format!("name clone {id}")))?,
        })
    }

    /// Clones snapshot `backup` of `cluster` (of `source`, where a backup or a roll-forward
    /// snapshot lives): its data and every tablespace its `tablespace_map` names. Nothing is
    /// left behind on failure.
    pub fn create(
        storage: &dyn Storage,
        cluster: &ClusterId,
        id: &str,
        source: &SnapshotDatasets,
        backup: &str,
    ) -> Result<Self, RestoreError> {
        let (l, _) = Self::paths(cluster, id)?;
        Self::create_in(storage, cluster, &l.restores, id, source, backup)
    }

    /// [`RestoreClone::create`] under `parent` (`<cluster>/restores`, or another dataset of
    /// the cluster that holds clones of its own, such as verification's) as `parent/<id>`.
    pub fn create_in(
        storage: &dyn Storage,
        cluster: &ClusterId,
        parent: &DatasetPath,
        id: &str,
        source: &SnapshotDatasets,
        backup: &str,
    ) -> Result<Self, RestoreError> {
        let dataset = parent
            .join(id)
            .map_err(RestoreError::storage(format!("name clone {id}")))?;
        let this = Self {
            id: id.to_owned(),
            cluster: cluster.clone(),
            dataset,
        };
        let ctx = |what: &str| format!("{cluster}: restore {id}: {what}");
        if !storage
            .exists(parent)
            .map_err(RestoreError::storage(ctx("look for the clones' dataset")))?
        {
            storage
                .create(parent, &DatasetOptions::default())
                .map_err(RestoreError::storage(ctx("create the clones' dataset")))?;
        }
        storage
            .create(&this.dataset, &DatasetOptions::default())
            .map_err(RestoreError::storage(ctx("create its dataset")))?;
        let result = (|| {
            let data = this.child("data")?;
            storage
                .clone_snapshot(&source.data, backup, &data)
                .map_err(RestoreError::storage(ctx(&format!(
                    "clone the data of backup {backup}"
                ))))?;
            let oids = this.tablespaces(storage)?;
            if !oids.is_empty() {
                let parent = this.child("tblspc")?;
                storage
                    .create(&parent, &DatasetOptions::default())
                    .map_err(RestoreError::storage(ctx("create tblspc")))?;
                for (oid, _) in oids {
                    let from = source
                        .tablespaces
                        .join(&oid.to_string())
                        .map_err(RestoreError::storage(ctx("name a tablespace")))?;
                    let to = parent
                        .join(&oid.to_string())
                        .map_err(RestoreError::storage(ctx("name a tablespace")))?;
                    storage
                        .clone_snapshot(&from, backup, &to)
                        .map_err(RestoreError::storage(ctx(&format!(
                            "clone tablespace {oid} of backup {backup}"
                        ))))?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = this.destroy(storage);
            return Err(e);
        }
        tracing::info!(cluster = %cluster, restore = id, backup, "cloned");
        Ok(this)
    }

    fn child(&self, name: &str) -> Result<DatasetPath, RestoreError> {
        self.dataset
            .join(name)
            .map_err(RestoreError::storage(format!(
                "name {name} of restore {}",
                self.id
            )))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    pub fn dataset(&self) -> &DatasetPath {
        &self.dataset
    }

    pub fn data_dir(&self, storage: &dyn Storage) -> Result<PathBuf, RestoreError> {
        storage
            .mountpoint(&self.child("data")?)
            .map_err(RestoreError::storage(format!(
                "find the data of restore {}",
                self.id
            )))
    }

    /// The tablespaces of the cloned backup, from its `tablespace_map`.
    pub fn tablespaces(&self, storage: &dyn Storage) -> Result<Vec<(u32, String)>, RestoreError> {
        let map = self.data_dir(storage)?.join("tablespace_map");
        match std::fs::read_to_string(&map) {
            Ok(text) => parse_tablespace_map(&text).map_err(|e| {
                RestoreError::Invalid(format!("restore {}: {}: {e}", self.id, map.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(RestoreError::io(format!("read {}", map.display()))(e)),
        }
    }

    /// Every area of the clone, data first.
    pub fn areas(&self, storage: &dyn Storage) -> Result<Vec<CloneArea>, RestoreError> {
        let mut out = vec![CloneArea {
            area: Area::Data,
            dir: self.data_dir(storage)?,
            location: String::new(),
        }];
        for (oid, location) in self.tablespaces(storage)? {
            let ds =
                self.child("tblspc")?
                    .join(&oid.to_string())
                    .map_err(RestoreError::storage(format!(
                        "name tablespace {oid} of restore {}",
                        self.id
                    )))?;
            out.push(CloneArea {
                area: Area::Tablespace(oid),
                dir: storage
                    .mountpoint(&ds)
                    .map_err(RestoreError::storage(format!(
                        "find tablespace {oid} of restore {}",
                        self.id
                    )))?,
                location,
            });
        }
        Ok(out)
    }

    /// Points the clone's `tablespace_map` and `pg_tblspc` links at its own tablespace
    /// datasets, so that PostgreSQL started on it touches nothing outside the clone; returns
    /// those datasets' directories.
    pub fn point_tablespaces_home(
        &self,
        storage: &dyn Storage,
    ) -> Result<Vec<(u32, PathBuf)>, RestoreError> {
        let data = self.data_dir(storage)?;
        let dirs = self.tablespace_dirs(storage)?;
        point_tablespaces(&data, &dirs).map_err(RestoreError::io(format!(
            "point the tablespaces of {} at the clone's own datasets",
            data.display()
        )))?;
        Ok(dirs)
    }

    /// The clone's own directory of every tablespace: (oid, directory).
    pub fn tablespace_dirs(
        &self,
        storage: &dyn Storage,
    ) -> Result<Vec<(u32, PathBuf)>, RestoreError> {
        Ok(self
            .areas(storage)?
            .into_iter()
            .filter_map(|a| match a.area {
                Area::Tablespace(oid) => Some((oid, a.dir)),
                Area::Data => None,
            })
            .collect())
    }

    /// [`RestoreClone::destroy`], retried for a few seconds: a postmaster that just exited
    /// may hold the clone for a moment ("dataset is busy").
    pub fn destroy_patiently(&self, storage: &dyn Storage) -> Result<(), RestoreError> {
        let mut attempt = 0;
        loop {
            match self.destroy(storage) {
                Err(_) if attempt < 9 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    /// Destroys the clone and everything under it (and its `pg_wal` on the local disk).
    pub fn destroy(&self, storage: &dyn Storage) -> Result<(), RestoreError> {
        if let Ok(data) = self.data_dir(storage) {
            if let Err(e) = crate::pg::localwal::discard(&data) {
                tracing::warn!(clone = %self.dataset, "remove the local pg_wal of the clone: {e}");
            }
        }
        match storage.exists(&self.dataset) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => {
                return Err(RestoreError::storage(format!(
                    "look for restore {}",
                    self.id
                ))(e))
            }
        }
        storage
            .destroy(&self.dataset, true)
            .map_err(RestoreError::storage(format!(
                "{}: destroy the clone of restore {}",
                self.cluster, self.id
            )))
    }
}

/// Points the tablespaces of the copy in `data` at `dirs` (oid → its directory) before
/// PostgreSQL starts on it: `tablespace_map`, which recovery from a base backup reads (with
/// its `backup_label`), and the `pg_tblspc/<oid>` links, which a copy without one (a
/// roll-forward snapshot, shut down in recovery) uses as they are, and which would otherwise
/// point at the copy it was cloned from. In-place tablespaces (directories) are left alone.
pub fn point_tablespaces(data: &Path, dirs: &[(u32, PathBuf)]) -> std::io::Result<()> {
    let map = data.join("tablespace_map");
    let named: Vec<(u32, String)> = dirs
        .iter()
        .map(|(oid, dir)| (*oid, dir.display().to_string()))
        .collect();
    if named.is_empty() {
        match std::fs::remove_file(&map) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    } else {
        std::fs::write(&map, format_tablespace_map(&named))?;
    }
    let links = data.join("pg_tblspc");
    for (oid, dir) in dirs {
        let link = links.join(oid.to_string());
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => std::fs::remove_file(&link)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&links)?;
            }
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(dir, &link)?;
    }
    Ok(())
}

/// The `pg_tblspc/<oid>` links in `data` that point outside `dirs` (oid, target): a
/// tablespace created during a replay, whose files PostgreSQL put at the source's location
/// on this host rather than in a dataset of ours.
pub fn tablespaces_outside(
    data: &Path,
    dirs: &[(u32, PathBuf)],
) -> std::io::Result<Vec<(String, PathBuf)>> {
    let links = data.join("pg_tblspc");
    let listing = match std::fs::read_dir(&links) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for item in listing {
        let item = item?;
        if !item.file_type()?.is_symlink() {
            continue;
        }
        let name = item.file_name().to_string_lossy().into_owned();
        let target = std::fs::read_link(item.path())?;
        let ours = dirs
            .iter()
            .any(|(oid, dir)| oid.to_string() == name && *dir == target);
        if !ours {
            out.push((name, target));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespaces_are_pointed_at_the_copy_and_strays_are_found() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let links = data.join("pg_tblspc");
        std::fs::create_dir_all(&links).unwrap();
        std::fs::write(data.join("tablespace_map"), "16400 /src/ts\n").unwrap();
        std::os::unix::fs::symlink("/chain/ts", links.join("16400")).unwrap();
        std::fs::create_dir(links.join("16500")).unwrap();
        let dirs = vec![
            (16400, tmp.path().join("clone-ts")),
            (16500, tmp.path().join("in-place")),
        ];
        point_tablespaces(&data, &dirs).unwrap();
        assert_eq!(std::fs::read_link(links.join("16400")).unwrap(), dirs[0].1);
        assert!(std::fs::symlink_metadata(links.join("16500"))
            .unwrap()
            .is_dir());
        assert_eq!(
            parse_tablespace_map(&std::fs::read_to_string(data.join("tablespace_map")).unwrap())
                .unwrap(),
            vec![
                (16400, dirs[0].1.display().to_string()),
                (16500, dirs[1].1.display().to_string())
            ]
        );
        assert!(tablespaces_outside(&data, &dirs).unwrap().is_empty());
        std::os::unix::fs::symlink("/var/lib/new-ts", links.join("16600")).unwrap();
        assert_eq!(
            tablespaces_outside(&data, &dirs).unwrap(),
            vec![("16600".to_owned(), PathBuf::from("/var/lib/new-ts"))]
        );
        point_tablespaces(&data, &[]).unwrap();
        assert!(!data.join("tablespace_map").exists());
        // A copy without tablespaces needs no pg_tblspc.
        let bare = tmp.path().join("bare");
        std::fs::create_dir(&bare).unwrap();
        point_tablespaces(&bare, &[]).unwrap();
        assert!(tablespaces_outside(&bare, &[]).unwrap().is_empty());
    }

    #[test]
    fn tablespace_maps_round_trip() {
        let entries = vec![
            (16384, "/srv/ts one".to_owned()),
            (16385, "/srv/back\\slash".to_owned()),
        ];
        let text = format_tablespace_map(&entries);
        assert_eq!(text, "16384 /srv/ts one\n16385 /srv/back\\\\slash\n");
        assert_eq!(parse_tablespace_map(&text).unwrap(), entries);
        assert!(parse_tablespace_map("nonsense\n").is_err());
        assert!(parse_tablespace_map("x /a\n").is_err());
        assert!(parse_tablespace_map("\n").unwrap().is_empty());
    }
}
