//! The `zfs` command line as the backend speaks it: running a command (under the zfs-fuse
//! lock when it changes anything), recognising known stderr messages, and parsing `-H -p`
//! output strictly.

use std::collections::BTreeMap;
use std::process::Command;

use super::super::zfs_lock;
use super::super::{StorageError, PROPERTY_PREFIX};
use crate::process::{self, Argv, ProcessError};

/// Runs `zfs <args>` through the process runner and returns its stdout. On zfs-fuse, commands
/// that change anything hold the machine-wide lock of [`zfs_lock`] while they run (one command
/// at a time, never across a sleep, so that retries let other processes in).
pub(super) fn zfs<S: AsRef<str>>(args: &[S]) -> Result<String, ProcessError> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut cmd = Command::new("zfs");
    cmd.args(&args);
    let _guard = if zfs_lock::is_read_only(&args) {
        None
    } else {
        Some(zfs_lock::lock().map_err(|e| ProcessError::Spawn {
            argv: Argv(&cmd).to_string(),
            source: std::io::Error::new(
                e.kind(),
                format!("take the zfs-fuse lock {}: {e}", zfs_lock::LOCK_PATH),
            ),
        })?)
    };
    process::run_stdout(&mut cmd)
}

// The stderr wordings below are each provoked by the contract suite (`storage::contract`) on
// the ZFS it runs on; the zfs-fuse wordings are proven here, the OpenZFS-only ones where noted
// are proven by the same tests when they run on OpenZFS.

pub(super) fn is_busy(stderr: &str) -> bool {
    // "dataset is busy" (zfs-fuse; OpenZFS says "pool or dataset is busy"), or, while a file
    // is still open, umount's "target is busy" and zfs-fuse's "umount failed".
    stderr.contains("dataset is busy")
        || stderr.contains("target is busy")
        || stderr.contains("umount failed")
}

pub(super) fn is_not_found(stderr: &str) -> bool {
    // OpenZFS words a missing snapshot in `zfs destroy` as "could not find any snapshots".
    stderr.contains("dataset does not exist") || stderr.contains("could not find any snapshots")
}

/// Only `zfs set quota=` below current use fails like this. Over-quota writes fail with EDQUOT
/// in the writer, and `zfs create`/`clone` in a full parent fail to make the mountpoint (see
/// `undo_unmounted`); zfs-fuse still takes snapshots and property changes in a full dataset.
pub(super) fn is_quota(stderr: &str) -> bool {
    stderr.contains("size is less than current used or reserved space")
}

pub(super) fn is_has_clones(stderr: &str) -> bool {
    // `destroy ds` / `destroy ds@s` / `destroy -r ds@s` (zfs-fuse) / `rollback -r`.
    stderr.contains("has dependent clones")
        || stderr.contains("snapshot is cloned")
        || stderr.contains("clones of previous snapshots exist")
}

/// The first `'…'`-quoted word of a zfs message (`cannot create snapshot 'a/b@s': …`).
pub(super) fn quoted(stderr: &str) -> Option<&str> {
    let start = stderr.find('\'')? + 1;
    let len = stderr[start..].find('\'')?;
    Some(&stderr[start..start + len])
}

pub(super) fn parse_u64(what: &str, value: &str) -> Result<u64, StorageError> {
    value.parse().map_err(|_| StorageError::Parse {
        what: what.to_owned(),
        detail: format!("expected a number of bytes, got {value:?}"),
    })
}

pub(super) fn parse_i64(what: &str, value: &str) -> Result<i64, StorageError> {
    value.parse().map_err(|_| StorageError::Parse {
        what: what.to_owned(),
        detail: format!("expected an integer, got {value:?}"),
    })
}

/// One line of `zfs get -H -p -o name,property,value,source` (or without `name`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PropertyLine<'a> {
    pub(super) name: Option<&'a str>,
    pub(super) property: &'a str,
    pub(super) value: &'a str,
    pub(super) source: &'a str,
}

/// Splits `zfs get -H` output into lines. Values may contain tabs (ZFS stores them verbatim),
/// so the value is everything between the leading fields and the last tab.
pub(super) fn parse_get_lines<'a>(
    what: &str,
    output: &'a str,
    with_name: bool,
) -> Result<Vec<PropertyLine<'a>>, StorageError> {
    let mut out = Vec::new();
    for line in output.split('\n').filter(|l| !l.is_empty()) {
        let bad = || StorageError::Parse {
            what: what.to_owned(),
            detail: format!(
                "expected {} tab-separated fields in {line:?}",
                3 + usize::from(with_name)
            ),
        };
        let (name, rest) = if with_name {
            let (n, r) = line.split_once('\t').ok_or_else(bad)?;
            (Some(n), r)
        } else {
            (None, line)
        };
        let (property, rest) = rest.split_once('\t').ok_or_else(bad)?;
        let (value, source) = rest.rsplit_once('\t').ok_or_else(bad)?;
        if property.is_empty() || source.is_empty() || name == Some("") {
            return Err(bad());
        }
        out.push(PropertyLine {
            name,
            property,
            value,
            source,
        });
    }
    Ok(out)
}

/// The locally set `walvault:*` properties among `lines`, prefix stripped.
pub(super) fn local_user_properties<'a>(
    lines: impl IntoIterator<Item = &'a PropertyLine<'a>>,
) -> BTreeMap<String, String> {
    lines
        .into_iter()
        .filter(|l| l.source == "local")
        .filter_map(|l| {
            let key = l.property.strip_prefix(PROPERTY_PREFIX)?;
            Some((key.to_owned(), l.value.to_owned()))
        })
        .collect()
}
