//! The storage contract: one set of tests, written against `&dyn Storage`, run against
//! [`DirStorage`] on a temporary directory and against [`ZfsStorage`] on a real, file-backed
//! zfs-fuse/OpenZFS pool. Every typed error a backend maps from ZFS's stderr is provoked here.
//!
//! Each ZFS test creates its own pool (`wvst<pid>x<n>`, a 256 MiB sparse file) so tests run in
//! parallel, and a drop guard destroys it even when the test panics. Commands that change
//! pools take the machine-wide zfs-fuse lock (`zfs_lock`), as the backend's own commands do.
//! Without a usable `zpool` the ZFS tests are skipped with a printed reason, but fail when
//! `CI` is set.
//!
//! A few tests poll instead of asserting at once: ZFS updates space accounting when a
//! transaction group syncs, seconds after the write.

#![allow(clippy::unwrap_used)] // tests: a panic with its location is the failure report

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

mod pool;
use pool::TestPool;

use super::dir::DirStorage;
use super::zfs::{ZfsStorage, PROPERTY_VALUE_MAX};
use super::{zfs_lock, DatasetOptions, DatasetPath, Storage, StorageError};

const MIB: u64 = 1 << 20;

/// Runs a `zfs`/`zpool` command that changes something under the machine-wide zfs-fuse lock
/// (zfs-fuse wedges when processes create, mount or destroy concurrently; see `zfs_lock`).
fn locked_output(cmd: &mut Command) -> std::io::Result<Output> {
    let _lock = zfs_lock::lock()?;
    cmd.output()
}

/// One backend under test, and whatever must outlive it (a pool, a directory).
struct Fixture {
    storage: Box<dyn Storage>,
    reopen: Box<dyn Fn() -> Box<dyn Storage>>,
    _pool: Option<TestPool>,
    _dir: Option<TempDir>,
}

impl Fixture {
    fn s(&self) -> &dyn Storage {
        self.storage.as_ref()
    }
}

fn with_dir(test: fn(&Fixture)) {
    let dir = tempfile::Builder::new()
        .prefix("walvault-dir-")
        .tempdir()
        .unwrap();
    let root = dir.path().join("root");
    let storage = DirStorage::open(&root).unwrap();
    let fixture = Fixture {
        storage: Box::new(storage),
        reopen: Box::new(move || Box::new(DirStorage::open(&root).unwrap())),
        _pool: None,
        _dir: Some(dir),
    };
    test(&fixture);
}

fn with_zfs(test: fn(&Fixture)) {
    let Some(pool) = TestPool::create() else {
        return;
    };
    let root = format!("{}/wv", pool.name);
    let storage = ZfsStorage::open(&root).unwrap();
    let fixture = Fixture {
        storage: Box::new(storage),
        reopen: Box::new(move || Box::new(ZfsStorage::open(&root).unwrap())),
        _pool: Some(pool),
        _dir: None,
    };
    test(&fixture);
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn p(path: &str) -> DatasetPath {
    if path.is_empty() {
        return DatasetPath::root();
    }
    DatasetPath::new(path.split('/')).unwrap()
}

fn create(s: &dyn Storage, path: &str) {
    s.create(&p(path), &DatasetOptions::default()).unwrap();
}

fn write(s: &dyn Storage, ds: &str, file: &str, content: &str) {
    let path = s.mountpoint(&p(ds)).unwrap().join(file);
    let mut f = File::create(&path).unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f.sync_all().unwrap();
}

fn read(s: &dyn Storage, ds: &str, file: &str) -> Option<String> {
    fs::read_to_string(s.mountpoint(&p(ds)).unwrap().join(file)).ok()
}

fn names(s: &dyn Storage, ds: &str) -> Vec<String> {
    s.snapshots(&p(ds))
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect()
}

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Waits until `cond` holds, failing after `timeout` with `what`.
fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Writes up to `max` bytes into a new file, returning the first error.
fn fill(dir: &Path, file: &str, max: u64) -> std::io::Result<()> {
    let mut f = File::create(dir.join(file))?;
    // Varying bytes: a constant pattern would compress to nothing with compression on.
    let mut buf = vec![0u8; 128 * 1024];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut written = 0;
    while written < max {
        for b in buf.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        f.write_all(&buf)?;
        written += buf.len() as u64;
    }
    f.sync_all()
}

// ---------------------------------------------------------------------------------------------
// The contract.

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod dir_backend {
            $( #[test] fn $name() { super::with_dir(super::$name) } )*
        }
        mod zfs_backend {
            $( #[test] fn $name() { super::with_zfs(super::$name) } )*
        }
    };
}

contract!(
    create_exists_children_mountpoint,
    typed_errors,
    properties_round_trip,
    quota_and_space,
    writing_past_a_quota,
    recursive_snapshot_covers_children,
    snapshot_properties_and_order,
    clone_is_independent,
    rollback_restores_and_drops_later_snapshots,
    destroy_with_and_without_recursion,
);

fn create_exists_children_mountpoint(f: &Fixture) {
    let s = f.s();
    let root = DatasetPath::root();
    assert!(s.exists(&root).unwrap());
    assert!(s.children(&root).unwrap().is_empty());
    assert!(!s.exists(&p("t")).unwrap());

    create(s, "t");
    assert!(s.exists(&p("t")).unwrap());
    let mp = s.mountpoint(&p("t")).unwrap();
    assert!(mp.is_dir(), "{mp:?}");
    assert!(mp.starts_with(s.mountpoint(&root).unwrap()), "{mp:?}");

    // Plain files and directories are not datasets.
    write(s, "t", "file", "x");
    fs::create_dir(mp.join("plain-dir")).unwrap();
    s.create(
        &p("t/b"),
        &DatasetOptions {
            recordsize: Some(16384),
            dedup: Some(false),
            quota: None,
        },
    )
    .unwrap();
    // 1M is more than zfs-fuse takes: the backend falls back to its maximum.
    let opts = DatasetOptions {
        recordsize: Some(1 << 20),
        dedup: Some(true),
        quota: Some(64 * MIB),
    };
    s.create(&p("t/a"), &opts).unwrap();
    create(s, "t/a/x");
    assert_eq!(s.children(&p("t")).unwrap(), ["a", "b"]);
    assert_eq!(s.children(&root).unwrap(), ["t"]);
    assert_eq!(s.children(&p("t/a")).unwrap(), ["x"]);
    assert!(s.children(&p("t/a/x")).unwrap().is_empty());
    assert_eq!(s.space(&p("t/a")).unwrap().quota, Some(64 * MIB));
    assert_eq!(s.space(&p("t/b")).unwrap().quota, None);

    // Nested datasets live inside their parent's directory.
    let nested = s.mountpoint(&p("t/a/x")).unwrap();
    assert_eq!(nested, mp.join("a").join("x"));
    write(s, "t/a/x", "inner", "deep");
    assert_eq!(fs::read_to_string(mp.join("a/x/inner")).unwrap(), "deep");
    assert_eq!(read(s, "t", "file").as_deref(), Some("x"));

    // Reopening sees the same tree.
    let again = (f.reopen)();
    assert_eq!(again.children(&p("t")).unwrap(), ["a", "b"]);
    assert_eq!(again.mountpoint(&p("t/a/x")).unwrap(), nested);
}

fn typed_errors(f: &Fixture) {
    let s = f.s();
    for bad in ["..", ".", "", "a/b", "a b", "x@y", "é", &"n".repeat(65)] {
        assert!(
            matches!(DatasetPath::new([bad]), Err(StorageError::InvalidName(_))),
            "{bad:?}"
        );
        assert!(
            matches!(
                DatasetPath::root().join(bad),
                Err(StorageError::InvalidName(_))
            ),
            "{bad:?}"
        );
    }

    create(s, "t");
    let e = s.create(&p("t"), &DatasetOptions::default()).unwrap_err();
    assert!(
        matches!(&e, StorageError::DatasetExists(d) if *d == p("t")),
        "{e}"
    );
    let e = s
        .create(&DatasetPath::root(), &DatasetOptions::default())
        .unwrap_err();
    assert!(matches!(&e, StorageError::DatasetExists(_)), "{e}");
    let e = s
        .create(&p("missing/child"), &DatasetOptions::default())
        .unwrap_err();
    assert!(
        matches!(&e, StorageError::DatasetNotFound(d) if *d == p("missing")),
        "{e}"
    );

    let missing = p("missing");
    let not_found = |r: Result<(), StorageError>, op: &str| {
        let e = r.unwrap_err();
        assert!(
            matches!(&e, StorageError::DatasetNotFound(d) if *d == missing),
            "{op}: {e}"
        );
    };
    assert!(!s.exists(&missing).unwrap());
    not_found(s.children(&missing).map(drop), "children");
    not_found(s.mountpoint(&missing).map(drop), "mountpoint");
    not_found(s.space(&missing).map(drop), "space");
    not_found(s.properties(&missing).map(drop), "properties");
    not_found(s.snapshots(&missing).map(drop), "snapshots");
    not_found(s.set_quota(&missing, Some(MIB)), "set_quota");
    not_found(s.set_property(&missing, "k", "v"), "set_property");
    not_found(s.destroy(&missing, false), "destroy");
    not_found(s.destroy(&missing, true), "destroy -r");
    not_found(
        s.snapshot(&missing, "s", false, &BTreeMap::new()),
        "snapshot",
    );
    not_found(s.destroy_snapshot(&missing, "s", false), "destroy_snapshot");
    not_found(s.rollback(&missing, "s"), "rollback");
    not_found(s.clone_snapshot(&missing, "s", &p("c")), "clone_snapshot");

    for bad in ["a/b", "..", "x@y", ""] {
        let e = s
            .snapshot(&p("t"), bad, false, &BTreeMap::new())
            .unwrap_err();
        assert!(matches!(e, StorageError::InvalidName(_)), "{bad:?}: {e}");
        let e = s.destroy_snapshot(&p("t"), bad, false).unwrap_err();
        assert!(matches!(e, StorageError::InvalidName(_)), "{bad:?}: {e}");
    }
    for bad in ["Bad", "a b", "", "k=v"] {
        let e = s.set_property(&p("t"), bad, "v").unwrap_err();
        assert!(matches!(e, StorageError::InvalidName(_)), "{bad:?}: {e}");
    }
    let e = s.set_property(&p("t"), "k", "two\nlines").unwrap_err();
    assert!(matches!(e, StorageError::InvalidName(_)), "{e}");
    let e = s.destroy(&DatasetPath::root(), true).unwrap_err();
    assert!(matches!(e, StorageError::InvalidName(_)), "{e}");

    s.snapshot(&p("t"), "s", false, &BTreeMap::new()).unwrap();
    let e = s
        .snapshot(&p("t"), "s", false, &BTreeMap::new())
        .unwrap_err();
    assert!(
        matches!(&e, StorageError::SnapshotExists { dataset, snapshot } if *dataset == p("t") && snapshot == "s"),
        "{e}"
    );
    let snapshot_missing = |r: Result<(), StorageError>, op: &str| {
        let e = r.unwrap_err();
        assert!(
            matches!(&e, StorageError::SnapshotNotFound { dataset, snapshot } if *dataset == p("t") && snapshot == "nope"),
            "{op}: {e}"
        );
    };
    snapshot_missing(
        s.destroy_snapshot(&p("t"), "nope", false),
        "destroy_snapshot",
    );
    snapshot_missing(
        s.destroy_snapshot(&p("t"), "nope", true),
        "destroy_snapshot -r",
    );
    snapshot_missing(s.rollback(&p("t"), "nope"), "rollback");
    snapshot_missing(s.clone_snapshot(&p("t"), "nope", &p("c")), "clone_snapshot");
    assert!(!s.exists(&p("c")).unwrap());
}

fn properties_round_trip(f: &Fixture) {
    let s = f.s();
    create(s, "t");
    create(s, "t/child");
    let long = "v".repeat(PROPERTY_VALUE_MAX);
    let expected = props(&[
        ("label", "nightly backup of  orders "),
        ("start-lsn", "0/16B3D88"),
        ("size.bytes", "123"),
        ("note:x", "größe\tmit tab"),
        ("long", &long),
    ]);
    for (k, v) in &expected {
        s.set_property(&p("t"), k, v).unwrap();
    }
    assert_eq!(s.properties(&p("t")).unwrap(), expected);
    // Only properties set on the dataset itself count, not inherited ones.
    assert!(s.properties(&p("t/child")).unwrap().is_empty());

    s.set_property(&p("t"), "label", "changed").unwrap();
    // An empty value removes the property (ZFS cannot store empty user properties).
    s.set_property(&p("t"), "size.bytes", "").unwrap();
    s.set_property(&p("t"), "never-set", "").unwrap();
    let mut expected = expected;
    expected.insert("label".into(), "changed".into());
    expected.remove("size.bytes");
    assert_eq!(s.properties(&p("t")).unwrap(), expected);

    let e = s
        .set_property(&p("t"), "long", &format!("{long}v"))
        .unwrap_err();
    assert!(matches!(e, StorageError::InvalidName(_)), "{e}");

    s.set_property(&DatasetPath::root(), "format", "1").unwrap();
    // Properties survive a restart.
    let again = (f.reopen)();
    assert_eq!(again.properties(&p("t")).unwrap(), expected);
    assert_eq!(
        again.properties(&DatasetPath::root()).unwrap(),
        props(&[("format", "1")])
    );
}

fn quota_and_space(f: &Fixture) {
    let s = f.s();
    s.create(
        &p("q"),
        &DatasetOptions {
            quota: Some(64 * MIB),
            ..Default::default()
        },
    )
    .unwrap();
    let space = s.space(&p("q")).unwrap();
    assert_eq!(space.quota, Some(64 * MIB));
    assert!(space.available <= 64 * MIB, "{space:?}");

    s.set_quota(&p("q"), None).unwrap();
    assert_eq!(s.space(&p("q")).unwrap().quota, None);
    // 0 means "no quota", as in ZFS.
    s.set_quota(&p("q"), Some(0)).unwrap();
    assert_eq!(s.space(&p("q")).unwrap().quota, None);

    s.set_quota(&p("q"), Some(32 * MIB)).unwrap();
    create(s, "q/c");
    // The parent's quota bounds its descendants.
    let child = s.space(&p("q/c")).unwrap();
    assert_eq!(child.quota, None);
    assert!(child.available <= 32 * MIB, "{child:?}");

    fill(&s.mountpoint(&p("q/c")).unwrap(), "data", 4 * MIB).unwrap();
    eventually(
        "4 MiB accounted to q/c and to q",
        Duration::from_secs(60),
        || {
            let c = s.space(&p("q/c")).unwrap();
            let q = s.space(&p("q")).unwrap();
            c.used >= 4 * MIB
                && q.used >= c.used
                && q.available <= 28 * MIB
                && c.available <= 28 * MIB
        },
    );

    let e = s.set_quota(&p("q"), Some(MIB)).unwrap_err();
    assert!(
        matches!(&e, StorageError::QuotaExceeded { dataset } if *dataset == p("q")),
        "{e}"
    );
    assert_eq!(s.space(&p("q")).unwrap().quota, Some(32 * MIB));
}

fn writing_past_a_quota(f: &Fixture) {
    let s = f.s();
    s.create(
        &p("w"),
        &DatasetOptions {
            quota: Some(2 * MIB),
            ..Default::default()
        },
    )
    .unwrap();
    let result = fill(&s.mountpoint(&p("w")).unwrap(), "big", 16 * MIB);
    if s.backend() == "zfs" {
        // The write itself fails: zfs-fuse (like OpenZFS) returns EDQUOT, errno 122 on Linux,
        // "Disk quota exceeded" — not ENOSPC.
        let e = result.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
        eventually("w is full", Duration::from_secs(60), || {
            s.space(&p("w")).unwrap().available == 0
        });
    } else {
        // The dir backend does not enforce quotas (the domain checks `space()` first); it
        // reports the dataset as full.
        result.unwrap();
        let space = s.space(&p("w")).unwrap();
        assert_eq!(space.available, 0, "{space:?}");
        assert!(space.used > 2 * MIB, "{space:?}");
    }
}

fn recursive_snapshot_covers_children(f: &Fixture) {
    let s = f.s();
    for ds in ["r", "r/a", "r/a/b", "r/c"] {
        create(s, ds);
        write(s, ds, "f", &format!("{ds} v1"));
    }
    let meta = props(&[("backup", "b-1"), ("label", "with spaces")]);
    s.snapshot(&p("r"), "s1", true, &meta).unwrap();
    for ds in ["r", "r/a", "r/a/b", "r/c"] {
        let snaps = s.snapshots(&p(ds)).unwrap();
        assert_eq!(snaps.len(), 1, "{ds}: {snaps:?}");
        assert_eq!(snaps[0].name, "s1");
        // Every snapshot of the set carries the properties (what `zfs snapshot -r -o` does).
        assert_eq!(snaps[0].properties, meta, "{ds}");
    }
    s.snapshot(&p("r"), "s2", false, &BTreeMap::new()).unwrap();
    assert_eq!(names(s, "r"), ["s1", "s2"]);
    assert_eq!(names(s, "r/a"), ["s1"]);

    // The child's snapshot holds the child's content at that instant.
    write(s, "r/a/b", "f", "r/a/b v2");
    create(s, "restore");
    s.clone_snapshot(&p("r/a/b"), "s1", &p("restore/b"))
        .unwrap();
    assert_eq!(read(s, "restore/b", "f").as_deref(), Some("r/a/b v1"));

    // A name taken in a descendant fails the whole recursive snapshot, naming the descendant.
    s.snapshot(&p("r/a/b"), "s3", false, &BTreeMap::new())
        .unwrap();
    let e = s
        .snapshot(&p("r"), "s3", true, &BTreeMap::new())
        .unwrap_err();
    assert!(
        matches!(&e, StorageError::SnapshotExists { dataset, snapshot } if *dataset == p("r/a/b") && snapshot == "s3"),
        "{e}"
    );
    assert_eq!(names(s, "r"), ["s1", "s2"]);
    assert_eq!(names(s, "r/a"), ["s1"]);

    // A clone of one snapshot of the set blocks destroying the set, and nothing goes.
    let e = s.destroy_snapshot(&p("r"), "s1", true).unwrap_err();
    assert!(matches!(e, StorageError::HasClones { .. }), "{e}");
    assert_eq!(names(s, "r"), ["s1", "s2"]);
    assert_eq!(names(s, "r/a/b"), ["s1", "s3"]);
    s.destroy(&p("restore"), true).unwrap();
    s.destroy_snapshot(&p("r"), "s1", true).unwrap();
    for ds in ["r/a", "r/c"] {
        assert!(names(s, ds).is_empty(), "{ds}");
    }
    assert_eq!(names(s, "r"), ["s2"]);
    assert_eq!(names(s, "r/a/b"), ["s3"]);
}

fn snapshot_properties_and_order(f: &Fixture) {
    let s = f.s();
    create(s, "o");
    assert!(s.snapshots(&p("o")).unwrap().is_empty());
    s.set_property(&p("o"), "owner", "acme").unwrap();
    let started = now_unix();
    // Not alphabetical, and all within the same second or two: order must be creation order.
    let order = ["zeta", "alpha", "mid", "0", "beta"];
    for (i, name) in order.iter().enumerate() {
        write(s, "o", "f", name);
        let meta = props(&[
            ("seq", &i.to_string()),
            ("label", "a label  with spaces"),
            ("empty", ""),
        ]);
        s.snapshot(&p("o"), name, false, &meta).unwrap();
    }
    let snaps = s.snapshots(&p("o")).unwrap();
    assert_eq!(
        snaps.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        order
    );
    for (i, snap) in snaps.iter().enumerate() {
        // The dataset's own properties are not the snapshot's (ZFS would show them as
        // inherited); empty values are not stored.
        assert_eq!(
            snap.properties,
            props(&[("seq", &i.to_string()), ("label", "a label  with spaces")])
        );
        assert!(
            snap.created_unix >= started - 5 && snap.created_unix <= now_unix() + 5,
            "{snap:?}"
        );
    }
    assert_eq!(s.properties(&p("o")).unwrap(), props(&[("owner", "acme")]));
    // Reopening keeps order and properties (`used` may move while ZFS syncs, so not compared).
    let again = (f.reopen)();
    let strip = |v: Vec<super::SnapshotInfo>| {
        v.into_iter()
            .map(|i| (i.name, i.created_unix, i.properties))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(again.snapshots(&p("o")).unwrap()), strip(snaps));

    // What is learnt later goes on the snapshot itself, next to what it was taken with.
    s.set_snapshot_property(&p("o"), "mid", "receipt", r#"{"verified":true}"#)
        .unwrap();
    let mid = s
        .snapshots(&p("o"))
        .unwrap()
        .into_iter()
        .find(|i| i.name == "mid")
        .unwrap();
    assert_eq!(
        mid.properties,
        props(&[
            ("seq", "2"),
            ("label", "a label  with spaces"),
            ("receipt", r#"{"verified":true}"#)
        ])
    );
    assert!(matches!(
        s.set_snapshot_property(&p("o"), "nope", "receipt", "x"),
        Err(StorageError::SnapshotNotFound { .. })
    ));
}

fn clone_is_independent(f: &Fixture) {
    let s = f.s();
    create(s, "src");
    s.set_property(&p("src"), "kind", "cluster").unwrap();
    write(s, "src", "f", "v1");
    s.snapshot(&p("src"), "s", false, &props(&[("backup", "b1")]))
        .unwrap();
    write(s, "src", "f", "v2");
    write(s, "src", "g", "new");

    create(s, "restores");
    s.clone_snapshot(&p("src"), "s", &p("restores/r1")).unwrap();
    assert!(s.exists(&p("restores/r1")).unwrap());
    assert_eq!(read(s, "restores/r1", "f").as_deref(), Some("v1"));
    assert_eq!(read(s, "restores/r1", "g"), None);
    assert!(s.properties(&p("restores/r1")).unwrap().is_empty());
    assert!(s.snapshots(&p("restores/r1")).unwrap().is_empty());

    // Writable, without touching the origin or the snapshot.
    write(s, "restores/r1", "f", "v3");
    write(s, "restores/r1", "h", "clone only");
    assert_eq!(read(s, "src", "f").as_deref(), Some("v2"));
    assert_eq!(read(s, "src", "h"), None);
    s.clone_snapshot(&p("src"), "s", &p("restores/r2")).unwrap();
    assert_eq!(read(s, "restores/r2", "f").as_deref(), Some("v1"));
    assert_eq!(s.children(&p("restores")).unwrap(), ["r1", "r2"]);

    let e = s
        .clone_snapshot(&p("src"), "s", &p("restores/r1"))
        .unwrap_err();
    assert!(
        matches!(&e, StorageError::DatasetExists(d) if *d == p("restores/r1")),
        "{e}"
    );
    let e = s.clone_snapshot(&p("src"), "s", &p("nope/r")).unwrap_err();
    assert!(
        matches!(&e, StorageError::DatasetNotFound(d) if *d == p("nope")),
        "{e}"
    );

    // The origin cannot go while clones depend on it.
    let e = s.destroy_snapshot(&p("src"), "s", false).unwrap_err();
    assert!(
        matches!(&e, StorageError::HasClones { dataset } if *dataset == p("src")),
        "{e}"
    );
    let e = s.destroy(&p("src"), true).unwrap_err();
    assert!(
        matches!(&e, StorageError::HasClones { dataset } if *dataset == p("src")),
        "{e}"
    );
    assert_eq!(names(s, "src"), ["s"]);

    s.destroy(&p("restores"), true).unwrap();
    s.destroy_snapshot(&p("src"), "s", false).unwrap();
    assert!(names(s, "src").is_empty());
}

fn rollback_restores_and_drops_later_snapshots(f: &Fixture) {
    let s = f.s();
    create(s, "rb");
    create(s, "rb/child");
    s.set_property(&p("rb"), "k", "v").unwrap();
    write(s, "rb", "f", "1");
    write(s, "rb/child", "c", "1");
    s.snapshot(&p("rb"), "s1", false, &BTreeMap::new()).unwrap();
    write(s, "rb", "f", "2");
    write(s, "rb", "g", "2");
    s.snapshot(&p("rb"), "s2", false, &BTreeMap::new()).unwrap();
    write(s, "rb", "f", "3");
    write(s, "rb", "h", "3");
    write(s, "rb/child", "c", "2");

    s.rollback(&p("rb"), "s2").unwrap();
    assert_eq!(read(s, "rb", "f").as_deref(), Some("2"));
    assert_eq!(read(s, "rb", "g").as_deref(), Some("2"));
    assert_eq!(read(s, "rb", "h"), None);
    assert_eq!(names(s, "rb"), ["s1", "s2"]);

    s.rollback(&p("rb"), "s1").unwrap();
    assert_eq!(read(s, "rb", "f").as_deref(), Some("1"));
    assert_eq!(read(s, "rb", "g"), None);
    assert_eq!(names(s, "rb"), ["s1"]);
    // Child datasets and the dataset's properties are not part of its snapshot.
    assert_eq!(s.children(&p("rb")).unwrap(), ["child"]);
    assert_eq!(read(s, "rb/child", "c").as_deref(), Some("2"));
    assert_eq!(s.properties(&p("rb")).unwrap(), props(&[("k", "v")]));
    // Still writable after a rollback.
    write(s, "rb", "after", "x");

    // A clone of a later snapshot blocks the rollback, which then changes nothing.
    s.snapshot(&p("rb"), "s3", false, &BTreeMap::new()).unwrap();
    s.clone_snapshot(&p("rb"), "s3", &p("rbclone")).unwrap();
    let e = s.rollback(&p("rb"), "s1").unwrap_err();
    assert!(
        matches!(&e, StorageError::HasClones { dataset } if *dataset == p("rb")),
        "{e}"
    );
    assert_eq!(names(s, "rb"), ["s1", "s3"]);
    assert_eq!(read(s, "rb", "after").as_deref(), Some("x"));
}

fn destroy_with_and_without_recursion(f: &Fixture) {
    let s = f.s();
    for ds in ["d", "d/a", "d/a/b", "keep"] {
        create(s, ds);
        write(s, ds, "f", ds);
    }
    s.snapshot(&p("d"), "s", true, &BTreeMap::new()).unwrap();

    let e = s.destroy(&p("d"), false).unwrap_err();
    assert!(
        matches!(&e, StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::DirectoryNotEmpty),
        "{e}"
    );
    assert!(s.exists(&p("d/a/b")).unwrap());
    assert_eq!(names(s, "d"), ["s"]);

    // Without recursion a leaf goes, with its snapshots.
    s.destroy(&p("d/a/b"), false).unwrap();
    assert!(!s.exists(&p("d/a/b")).unwrap());
    assert!(s.children(&p("d/a")).unwrap().is_empty());
    assert_eq!(names(s, "d/a"), ["s"]);

    s.destroy(&p("d"), true).unwrap();
    assert!(!s.exists(&p("d")).unwrap());
    assert!(!s.exists(&p("d/a")).unwrap());
    assert_eq!(s.children(&DatasetPath::root()).unwrap(), ["keep"]);
    assert_eq!(read(s, "keep", "f").as_deref(), Some("keep"));
    let e = s.destroy(&p("d"), true).unwrap_err();
    assert!(
        matches!(&e, StorageError::DatasetNotFound(d) if *d == p("d")),
        "{e}"
    );

    // The name is free again, without the old snapshots.
    create(s, "d");
    assert!(s.snapshots(&p("d")).unwrap().is_empty());
    assert_eq!(read(s, "d", "f"), None);
}

// ---------------------------------------------------------------------------------------------
// ZFS only: behaviours of zfs-fuse the backend works around.

mod zfs_only;
