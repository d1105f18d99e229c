//! What of a data directory and its tablespaces goes into a base backup.
//!
//! The rules follow pg_basebackup's (PostgreSQL's `basebackup.c`): WAL, the postmaster's
//! files, replication slots, temporary files and directories, relation cache init files, the
//! contents of runtime-only directories, temporary relations, and unlogged relations other
//! than their init fork stay behind. Directories are kept (PostgreSQL expects them), even when
//! their contents are not. Tablespace links under `pg_tblspc` are not followed: each
//! tablespace is its own area, and `tablespace_map` tells recovery where it lives.

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use walvault_proto::{Area, RelPath};

/// A file or directory to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    pub area: Area,
    pub path: RelPath,
    pub abs: PathBuf,
    pub directory: bool,
    pub mode: u32,
    /// Size when listed; the file may change while it is read.
    pub size: u64,
}

impl LocalEntry {
    /// pg_control is copied last (DESIGN §2, seed 004).
    pub fn is_pg_control(&self) -> bool {
        self.area == Area::Data && self.path.as_str() == "global/pg_control"
    }
}

/// A tablespace: its OID and where its directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: u32,
    pub location: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("read {path}: {source}")]
pub struct WalkError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// Directories at the top of PGDATA whose contents are runtime state.
const EMPTY_DIRS: [&str; 8] = [
    "pg_wal",
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files never copied, wherever they are.
const SKIPPED_FILES: [&str; 7] = [
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "postmaster.pid",
    "postmaster.opts",
    // Written by the backup itself (and the server), never taken from the source.
    "backup_label",
    "tablespace_map",
    "backup_manifest",
];

/// Every entry to back up, sorted by (area, path): the order of the server's manifest.
pub fn walk(pgdata: &Path, tablespaces: &[Tablespace]) -> Result<Vec<LocalEntry>, WalkError> {
    let mut out = Vec::new();
    walk_dir(pgdata, pgdata, Area::Data, &mut out)?;
    // pg_wal/archive_status must exist for the archiver of a restored cluster.
    if out
        .iter()
        .any(|e| e.area == Area::Data && e.path.as_str() == "pg_wal")
    {
        let status = pgdata.join("pg_wal/archive_status");
        if let Ok(m) = fs::metadata(&status) {
            if m.is_dir() {
                out.extend(entry(Area::Data, "pg_wal/archive_status", &status, &m));
            }
        }
    }
    for ts in tablespaces {
        walk_dir(
            &ts.location,
            &ts.location,
            Area::Tablespace(ts.oid),
            &mut out,
        )?;
    }
    out.sort_by(|a, b| (a.area, &a.path).cmp(&(b.area, &b.path)));
    out.dedup_by(|a, b| a.area == b.area && a.path == b.path);
    Ok(out)
}

/// `None` for a path the wire cannot carry (longer than 1024 bytes); warned about.
fn entry(area: Area, rel: &str, abs: &Path, m: &fs::Metadata) -> Option<LocalEntry> {
    let Ok(path) = rel.parse::<RelPath>() else {
        eprintln!("walvault: skipping {} (path too long)", abs.display());
        return None;
    };
    Some(LocalEntry {
        area,
        path,
        abs: abs.to_owned(),
        directory: m.is_dir(),
        mode: m.mode() & 0o7777,
        size: if m.is_dir() { 0 } else { m.len() },
    })
}

fn walk_dir(
    root: &Path,
    dir: &Path,
    area: Area,
    out: &mut Vec<LocalEntry>,
) -> Result<(), WalkError> {
    let err = |path: &Path| {
        let path = path.display().to_string();
        move |source| WalkError { path, source }
    };
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        // Dropped while we walk (a database, a tablespace directory): not part of the copy.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(dir)(e)),
    };
    let mut names = Vec::new();
    for item in listing {
        let item = item.map_err(err(dir))?;
        match item.file_name().into_string() {
            Ok(n) => names.push(n),
            Err(n) => {
                // A name that is not UTF-8 cannot be PostgreSQL's own.
                eprintln!(
                    "walvault: skipping {} (not a UTF-8 name)",
                    dir.join(n).display()
                );
            }
        }
    }
    let rel_dir = dir
        .strip_prefix(root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let in_db_dir = is_database_dir(area, &rel_dir);
    let names_set: HashSet<&str> = names.iter().map(String::as_str).collect();
    for name in &names {
        let rel = if rel_dir.is_empty() {
            name.clone()
        } else {
            format!("{rel_dir}/{name}")
        };
        if skip_name(name) || (in_db_dir && skip_relation_file(name, &names_set)) {
            continue;
        }
        // A data directory at the root of a ZFS dataset shows `.zfs` (snapdir=visible): not
        // PostgreSQL's, and a name the server's storage keeps for itself.
        if rel_dir.is_empty() && walvault_proto::manifest::is_reserved_name(name) {
            continue;
        }
        let abs = dir.join(name);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(err(&abs)(e)),
        };
        let top = area == Area::Data && rel_dir.is_empty();
        if meta.file_type().is_symlink() {
            // pg_wal may be a link to another disk: keep it as an empty directory.
            if top && name == "pg_wal" {
                if let Some(mut e) = fs::metadata(&abs)
                    .ok()
                    .and_then(|target| entry(area, &rel, &abs, &target))
                {
                    e.mode = 0o700;
                    out.push(e);
                }
            }
            // Tablespace links and anything else linked are not followed.
            continue;
        }
        if meta.is_file() {
            out.extend(entry(area, &rel, &abs, &meta));
        } else if meta.is_dir() {
            out.extend(entry(area, &rel, &abs, &meta));
            let runtime_only = top && EMPTY_DIRS.contains(&name.as_str());
            // In-place tablespaces are areas of their own.
            let in_place_tablespace = area == Area::Data && rel_dir == "pg_tblspc";
            let keep_contents = !runtime_only && !in_place_tablespace;
            if keep_contents {
                walk_dir(root, &abs, area, out)?;
            }
        }
    }
    Ok(())
}

fn skip_name(name: &str) -> bool {
    SKIPPED_FILES.contains(&name)
        || name.starts_with("pg_internal.init")
        || name.starts_with("pgsql_tmp")
}

/// `base/<oid>` in PGDATA, `PG_<v>_<catversion>/<oid>` in a tablespace.
fn is_database_dir(area: Area, rel_dir: &str) -> bool {
    let parts: Vec<&str> = rel_dir.split('/').collect();
    let oid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match area {
        Area::Data => parts.len() == 2 && parts[0] == "base" && oid(parts[1]),
        Area::Tablespace(_) => parts.len() == 2 && parts[0].starts_with("PG_") && oid(parts[1]),
    }
}

/// A relation file name: `<relfilenode>[_<fork>][.<segment>]`.
fn relation_parts(name: &str) -> Option<(&str, Option<&str>)> {
    let base = match name.split_once('.') {
        Some((b, seg)) if !seg.is_empty() && seg.bytes().all(|c| c.is_ascii_digit()) => b,
        Some(_) => return None,
        None => name,
    };
    let (node, fork) = match base.split_once('_') {
        Some((n, f)) if ["fsm", "vm", "init"].contains(&f) => (n, Some(f)),
        Some(_) => return None,
        None => (base, None),
    };
    (!node.is_empty() && node.bytes().all(|c| c.is_ascii_digit())).then_some((node, fork))
}

/// Temporary relations (`t<backend>_<relfilenode>…`) and the forks of unlogged relations
/// other than `_init` (recovery rebuilds them from it).
fn skip_relation_file(name: &str, siblings: &HashSet<&str>) -> bool {
    if let Some(rest) = name.strip_prefix('t') {
        if let Some((backend, rel)) = rest.split_once('_') {
            if !backend.is_empty()
                && backend.bytes().all(|c| c.is_ascii_digit())
                && relation_parts(rel).is_some()
            {
                return true;
            }
        }
    }
    match relation_parts(name) {
        Some((node, fork)) if fork != Some("init") => {
            siblings.contains(format!("{node}_init").as_str())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, rel.as_bytes()).unwrap();
    }

    #[test]
    fn follows_pg_basebackup_rules() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("data");
        let ts = dir.path().join("ts1");
        for f in [
            "PG_VERSION",
            "postgresql.conf",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "global/pg_control",
            "global/1262",
            "global/pg_internal.init",
            "base/5/1259",
            "base/5/1259_fsm",
            "base/5/1259.1",
            "base/5/pg_internal.init",
            "base/5/16384",
            "base/5/16384_vm",
            "base/5/16384_init",
            "base/5/16384.2",
            "base/5/t3_16390",
            "base/5/t3_16390_fsm",
            "base/pgsql_tmp/pgsql_tmp123.0",
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_replslot/slot/state",
            "pg_stat_tmp/global.stat",
            "pg_xact/0000",
            "pg_logical/replorigin_checkpoint",
        ] {
            touch(&pgdata, f);
        }
        fs::create_dir_all(pgdata.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(&ts, pgdata.join("pg_tblspc/16400")).unwrap();
        for f in [
            "PG_15_202209061/5/16401",
            "PG_15_202209061/5/16402_init",
            "PG_15_202209061/5/16402",
        ] {
            touch(&ts, f);
        }

        let got = walk(
            &pgdata,
            &[Tablespace {
                oid: 16400,
                location: ts.clone(),
            }],
        )
        .unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|e| {
                format!(
                    "{}:{}{}",
                    e.area,
                    e.path,
                    if e.directory { "/" } else { "" }
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "data:PG_VERSION",
                "data:base/",
                "data:base/5/",
                "data:base/5/1259",
                "data:base/5/1259.1",
                "data:base/5/1259_fsm",
                "data:base/5/16384_init",
                "data:global/",
                "data:global/1262",
                "data:global/pg_control",
                "data:pg_logical/",
                "data:pg_logical/replorigin_checkpoint",
                "data:pg_replslot/",
                "data:pg_stat_tmp/",
                "data:pg_tblspc/",
                "data:pg_wal/",
                "data:pg_wal/archive_status/",
                "data:pg_xact/",
                "data:pg_xact/0000",
                "data:postgresql.conf",
                "tblspc/16400:PG_15_202209061/",
                "tblspc/16400:PG_15_202209061/5/",
                "tblspc/16400:PG_15_202209061/5/16401",
                "tblspc/16400:PG_15_202209061/5/16402_init",
            ]
        );
        let control = got.iter().find(|e| e.is_pg_control()).unwrap();
        assert_eq!(control.size, "global/pg_control".len() as u64);
    }

    #[test]
    fn relation_names() {
        assert_eq!(relation_parts("16384"), Some(("16384", None)));
        assert_eq!(relation_parts("16384_vm.3"), Some(("16384", Some("vm"))));
        assert_eq!(relation_parts("16384_x"), None);
        assert_eq!(relation_parts("PG_VERSION"), None);
        assert_eq!(relation_parts("16384."), None);
    }
}
