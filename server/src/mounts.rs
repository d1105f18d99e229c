//! Which file system a path lives on, from `/proc/self/mountinfo`: the server tunes the
//! PostgreSQL it starts on a clone for FUSE (zfs-fuse), where every request the kernel makes
//! of the file system is served on the daemon's CPU.

use std::path::{Path, PathBuf};

/// The type of the file system `path` (absolute) is on, as mountinfo names it ("ext4",
/// "zfs", "fuse.zfs"); `None` when it cannot be told.
pub fn fs_type(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    fs_type_in(&text, path)
}

/// Whether `path` is on a FUSE file system.
pub fn is_fuse(path: &Path) -> bool {
    fs_type(path).is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
}

/// The type of the deepest mount holding `path`; of mounts on the same point, the last one
/// listed (it hides the others).
fn fs_type_in(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for line in mountinfo.lines() {
        // "<id> <parent> <dev> <root> <mount point> <options> [optional…] - <type> <source> …"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(point), Some(kind)) = (left.split(' ').nth(4), right.split(' ').next()) else {
            continue;
        };
        let point = unescape(point);
        let depth = point.components().count();
        if path.starts_with(&point) && best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, kind));
        }
    }
    best.map(|(_, kind)| kind.to_owned())
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
45 22 0:40 / /zfs-kstat rw,nosuid,nodev,relatime - fuse kstat rw,user_id=0
46 22 0:41 / /tank rw,relatime - fuse.zfs tank rw,user_id=0,default_permissions
47 46 0:42 / /tank/acme\\040db rw,relatime - fuse.zfs tank/acme rw,user_id=0
48 22 0:43 / /srv rw,relatime - ext4 /dev/sdb1 rw
49 22 0:44 / /srv rw,relatime master:3 - zfs pool/srv rw,xattr
50 22 0:45 / /srvx rw,relatime - xfs /dev/sdc1 rw
";

    #[test]
    fn the_deepest_mount_holding_a_path_decides() {
        let t = |p: &str| fs_type_in(MOUNTINFO, Path::new(p));
        assert_eq!(t("/var/tmp/walvault-wal").as_deref(), Some("ext4"));
        assert_eq!(t("/tank/x/data").as_deref(), Some("fuse.zfs"));
        assert_eq!(t("/tank/acme db/data").as_deref(), Some("fuse.zfs"));
        // The later of two mounts on one point hides the earlier.
        assert_eq!(t("/srv/pgdata").as_deref(), Some("zfs"));
        // Components, not string prefixes: /srvx is not under /srv.
        assert_eq!(t("/srvx/pgdata").as_deref(), Some("xfs"));
        assert_eq!(fs_type_in("", Path::new("/x")), None);
        assert_eq!(fs_type_in("garbage line\n", Path::new("/x")), None);
    }

    #[test]
    fn escapes_are_undone() {
        assert_eq!(unescape("/a\\040b\\134c"), PathBuf::from("/a b\\c"));
        assert_eq!(unescape("/trailing\\04"), PathBuf::from("/trailing\\04"));
        assert_eq!(unescape("/not\\999"), PathBuf::from("/not\\999"));
    }

    #[test]
    fn this_machines_mounts_are_read() {
        assert!(fs_type(Path::new("/")).is_some());
        assert!(!is_fuse(Path::new("/proc")));
    }
}
