//! Sessions against the `dir` backend and a temporary catalog: the protocol rules the
//! end-to-end tests cannot reach with a well-behaved client.

use std::sync::Arc;
use std::time::Duration;

use walvault_proto::manifest::hash_block;
use walvault_proto::{Area, ClusterId, Lsn, RelPath, TimelineId, WalFileName};

use super::*;
use crate::catalog::{ClusterBinding, WalRecord};
use crate::storage::dir::DirStorage;
use crate::tenancy::Tenancy;

const SEG: u32 = 16 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    backups: Backups,
    catalog: Catalog,
    cluster: ClusterId,
    data: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(DirStorage::open(&dir.path().join("store")).unwrap());
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let tenancy = Tenancy::new(storage.clone(), catalog.clone());
    tenancy
        .create_tenant(&"acme".parse().unwrap(), None, false)
        .unwrap();
    let cluster: ClusterId = "acme/db".parse().unwrap();
    tenancy.create_cluster(&cluster).unwrap();
    let archive = WalArchive::new(storage.clone(), catalog.clone());
    let backups = Backups::new(
        storage.clone(),
        catalog.clone(),
        archive,
        "nobody-here",
        Duration::from_millis(300),
        &crate::config::Limits::default(),
    );
    let data = storage
        .mountpoint(&ClusterLayout::of(&cluster).unwrap().data)
        .unwrap();
    Fixture {
        _dir: dir,
        backups,
        catalog,
        cluster,
        data,
    }
}

fn begin(f: &Fixture) -> Result<Session, BackupError> {
    f.backups.begin(BeginRequest {
        cluster: f.cluster.clone(),
        binding: ClusterBinding {
            system_identifier: 42,
            wal_segment_size: SEG,
            pg_major: 15,
        },
        label: "t".into(),
        tablespaces: vec![],
        host: "h".into(),
    })
}

fn block(index: u64, data: &[u8]) -> IncomingBlock {
    IncomingBlock {
        index,
        blake3: hash_block(data),
        zstd: false,
        data: data.to_vec(),
    }
}

fn path(s: &str) -> RelPath {
    s.parse().unwrap()
}

fn label(start: Lsn) -> String {
    format!(
        "START WAL LOCATION: {start} (file {})\nCHECKPOINT LOCATION: {start}\nSTART TIMELINE: 1\n",
        WalFileName::segment(TimelineId(1), start.0 / u64::from(SEG), SEG)
    )
}

fn finish(s: Session, start: Lsn) -> Result<crate::catalog::BackupRecord, BackupError> {
    s.finish(FinishRequest {
        stop_lsn: Lsn(start.0 + 0x100),
        stop_unix: 2,
        backup_label: label(start),
        tablespace_map: String::new(),
        bytes_read: 3,
        files: 1,
    })
}

fn archive_segment(f: &Fixture, start: Lsn) {
    let name = WalFileName::segment(TimelineId(1), start.0 / u64::from(SEG), SEG);
    f.catalog
        .put_wal(
            &f.cluster,
            &WalRecord {
                name: name.to_string(),
                size: 1,
                stored_size: 1,
                blake3: String::new(),
                archived_unix: 0,
            },
        )
        .unwrap();
}

#[test]
fn a_backup_writes_blocks_in_place_and_the_next_sends_only_changes() {
    let f = fixture();
    let start = Lsn(0x2000028);
    let mut s = begin(&f).unwrap();
    // A second backup of the same cluster is refused while the first runs, naming it.
    let err = begin(&f).unwrap_err().to_string();
    assert!(
        err.contains(s.id()) && err.contains("already running"),
        "{err}"
    );
    s.started(start, TimelineId(1), 1);
    s.file(Area::Data, path("base/1/100"), 0o600, false)
        .unwrap();
    s.blocks(vec![block(0, &[1; 8192]), block(1, &[2; 100])], 8292)
        .unwrap();
    s.file_end(8292).unwrap();
    // The WAL is not archived: the wait ends with an error naming the segment.
    let err = finish(s, start).unwrap_err().to_string();
    assert!(err.contains("000000010000000000000002"), "{err}");
    assert!(f.catalog.backups(&f.cluster).unwrap().is_empty());

    archive_segment(&f, start);
    let mut s = begin(&f).unwrap();
    s.started(start, TimelineId(1), 1);
    // Only block 1 changes; block 0 is the one the server holds.
    s.file(Area::Data, path("base/1/100"), 0o600, false)
        .unwrap();
    s.blocks(vec![block(1, &[3; 50])], 50).unwrap();
    s.file_end(8242).unwrap();
    let r = finish(s, start).unwrap();
    assert_eq!(r.kind, BackupKind::Full);
    let content = std::fs::read(f.data.join("base/1/100")).unwrap();
    assert_eq!(content.len(), 8242);
    assert_eq!(&content[..8192], &[1; 8192][..]);
    assert_eq!(&content[8192..], &[3; 50][..]);
    assert!(std::fs::read_to_string(f.data.join("backup_label"))
        .unwrap()
        .contains("START TIMELINE: 1"));
    assert_eq!(f.catalog.backups(&f.cluster).unwrap().len(), 1);
}

#[test]
fn bad_blocks_are_refused_with_the_file_and_block() {
    let f = fixture();
    let mut s = begin(&f).unwrap();
    s.file(Area::Data, path("base/1/7"), 0o600, false).unwrap();
    let mut b = block(3, &[9; 8192]);
    b.data[0] = 0;
    let err = s.blocks(vec![b], 8192).unwrap_err().to_string();
    assert!(
        err.contains("block 3 of data/base/1/7") && err.contains("blake3"),
        "{err}"
    );
    drop(s);

    // Blocks neither sent nor held, blocks past the end, short blocks in the middle.
    let mut s = begin(&f).unwrap();
    s.file(Area::Data, path("base/1/8"), 0o600, false).unwrap();
    s.blocks(vec![block(1, &[1; 8192])], 1).unwrap();
    let err = s.file_end(16384).unwrap_err().to_string();
    assert!(
        err.contains("block 0 of data/base/1/8 was not sent"),
        "{err}"
    );
    drop(s);
    let mut s = begin(&f).unwrap();
    s.file(Area::Data, path("base/1/9"), 0o600, false).unwrap();
    s.blocks(vec![block(0, &[1; 100])], 1).unwrap();
    let err = s.file_end(8192).unwrap_err().to_string();
    assert!(err.contains("has 100 bytes"), "{err}");
    drop(s);
    let mut s = begin(&f).unwrap();
    let err = s
        .file(Area::Tablespace(5), path("x"), 0o600, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tblspc/5 is not a tablespace announced"),
        "{err}"
    );
    let err = s
        .file(Area::Data, path("backup_label"), 0o600, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("written by the server"), "{err}");
}

#[test]
fn another_database_system_is_refused() {
    let f = fixture();
    drop(begin(&f).unwrap());
    let err = f
        .backups
        .begin(BeginRequest {
            cluster: f.cluster.clone(),
            binding: ClusterBinding {
                system_identifier: 43,
                wal_segment_size: SEG,
                pg_major: 15,
            },
            label: String::new(),
            tablespaces: vec![],
            host: String::new(),
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("system identifier 43") && err.contains("42"),
        "{err}"
    );
}

#[test]
fn an_interrupted_session_is_rehashed_before_it_is_trusted() {
    let f = fixture();
    let mut s = begin(&f).unwrap();
    s.file(Area::Data, path("base/1/100"), 0o600, false)
        .unwrap();
    s.blocks(vec![block(0, &[1; 8192])], 1).unwrap();
    s.file_end(8192).unwrap();
    drop(s);
    // Behind the manifest's back (as a write the crash kept while the entry was lost).
    std::fs::write(f.data.join("base/1/100"), [5u8; 8192]).unwrap();
    let s = begin(&f).unwrap();
    let entry = s
        .manifest()
        .map(|i| i.unwrap())
        .find(|i| i.path.as_str() == "base/1/100")
        .unwrap();
    assert_eq!(entry.entry.hashes, vec![hash_block(&[5; 8192])]);
}

/// A 4 MiB file the manifest knows (as a finished backup leaves it), and its blocks.
fn known_file(f: &Fixture, name: &str) -> Vec<Vec<u8>> {
    let blocks: Vec<Vec<u8>> = (0..512u32).map(|i| i.to_le_bytes().repeat(2048)).collect();
    let abs = f.data.join(name);
    std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
    std::fs::write(&abs, blocks.concat()).unwrap();
    let (size, hashes) = files::hash_file(&abs).unwrap();
    let entry = crate::catalog::FileEntry {
        directory: false,
        mode: 0o600,
        size,
        hashes,
    };
    f.catalog
        .put_file_entry(&f.cluster, Area::Data, &path(name), &entry, true)
        .unwrap();
    blocks
}

fn manifest_hashes(s: &Session, name: &str) -> Vec<[u8; 32]> {
    s.manifest()
        .map(|i| i.unwrap())
        .find(|i| i.path.as_str() == name)
        .unwrap()
        .entry
        .hashes
}

#[test]
fn an_interrupted_session_records_and_rehashes_only_the_blocks_it_touched() {
    let f = fixture();
    let mut blocks = known_file(&f, "base/1/200");
    let mut s = begin(&f).unwrap();
    s.file(Area::Data, path("base/1/200"), 0o600, false)
        .unwrap();
    blocks[300] = vec![9; 8192];
    s.blocks(vec![block(300, &blocks[300])], 1).unwrap();
    // The session dies here, before file_end: the manifest still has the old hash.
    drop(s);
    let touched = f.catalog.touched(&f.cluster).unwrap();
    let ranges: Vec<_> = touched[&(Area::Data, path("base/1/200"))]
        .ranges
        .iter()
        .map(|(a, b)| (*a, *b))
        .collect();
    assert_eq!(
        ranges,
        [(288, 304)],
        "one chunk of 16 blocks around block 300"
    );
    // A change no session made (nothing else writes here) shows what is not re-read.
    let abs = f.data.join("base/1/200");
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&abs).unwrap();
        file.write_all_at(&[7; 8192], 10 * 8192).unwrap();
    }
    let s = begin(&f).unwrap();
    let hashes = manifest_hashes(&s, "base/1/200");
    assert_eq!(
        hashes[300],
        hash_block(&blocks[300]),
        "the touched block is re-read"
    );
    assert_eq!(
        hashes[10],
        hash_block(&blocks[10]),
        "untouched blocks are not"
    );
    assert!(f.catalog.touched(&f.cluster).unwrap().is_empty());
}

#[test]
fn after_a_reboot_every_file_changed_since_the_session_began_is_rehashed() {
    let f = fixture();
    let blocks = known_file(&f, "base/1/200");
    let s = begin(&f).unwrap();
    drop(s);
    // The session began in another boot: its record of touched blocks may be incomplete.
    let mut open = f.catalog.open_session_of(&f.cluster).unwrap().unwrap();
    open.boot_id = Some("another-boot".into());
    f.catalog.open_session(&f.cluster, &open).unwrap();
    let abs = f.data.join("base/1/200");
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&abs).unwrap();
        file.write_all_at(&[7; 8192], 10 * 8192).unwrap();
    }
    let s = begin(&f).unwrap();
    let hashes = manifest_hashes(&s, "base/1/200");
    assert_eq!(hashes[10], hash_block(&[7; 8192]));
    assert_eq!(hashes[11], hash_block(&blocks[11]));
}

#[test]
fn a_shrunk_file_keeps_the_hashes_of_its_remaining_blocks() {
    let f = fixture();
    let blocks = known_file(&f, "base/1/200");
    let before = f
        .catalog
        .file_entry(&f.cluster, Area::Data, &path("base/1/200"))
        .unwrap()
        .unwrap();
    let mut s = begin(&f).unwrap();
    s.file(Area::Data, path("base/1/200"), 0o600, false)
        .unwrap();
    // Ends shorter, on a block boundary, without sending a block.
    s.file_end(100 * 8192).unwrap();
    drop(s);
    // As if the lazily written entry had been lost.
    f.catalog
        .put_file_entry(&f.cluster, Area::Data, &path("base/1/200"), &before, true)
        .unwrap();
    let old = files::hash_file(&f.data.join("base/1/200")).unwrap();
    let s = begin(&f).unwrap();
    let hashes = manifest_hashes(&s, "base/1/200");
    assert_eq!(hashes.len(), 100);
    assert_eq!(hashes[99], hash_block(&blocks[99]));
    assert_eq!(hashes, old.1);
}

#[test]
fn a_file_the_session_created_is_rehashed_only_where_it_was_written() {
    let f = fixture();
    let mut s = begin(&f).unwrap();
    s.file(Area::Data, path("base/1/300"), 0o600, false)
        .unwrap();
    // One block far into a new file: the rest is a hole, which a begin need not read.
    s.blocks(vec![block(100_000, &[3; 8192])], 1).unwrap();
    drop(s);
    let abs = f.data.join("base/1/300");
    assert_eq!(std::fs::metadata(&abs).unwrap().len(), 100_001 * 8192);
    let s = begin(&f).unwrap();
    let hashes = manifest_hashes(&s, "base/1/300");
    assert_eq!(hashes, files::hash_file(&abs).unwrap().1);
    assert_eq!(hashes[100_000], hash_block(&[3; 8192]));
}

proptest::proptest! {
    #[test]
    fn touched_ranges_cover_every_written_block_in_disjoint_chunks(
        batches in proptest::collection::vec(
            proptest::collection::vec(0u64..2000, 0..40), 0..20),
        max in 1u64..1800,
    ) {
        let mut marked = crate::catalog::Ranges::new();
        let mut recorded = crate::catalog::Ranges::new();
        for batch in &batches {
            for (a, b) in session::mark_runs(&mut marked, batch.iter().copied(), max) {
                recorded.insert(a, b);
            }
        }
        // What the catalog holds (replacing by start) is what the session believes.
        proptest::prop_assert_eq!(&recorded, &marked);
        let covered = |i: u64| marked.range(..=i).next_back().is_some_and(|(_, e)| *e > i);
        for i in batches.iter().flatten().filter(|i| **i < max) {
            proptest::prop_assert!(covered(*i), "block {} not recorded", i);
        }
        let mut last_end = 0;
        for (a, b) in &marked {
            proptest::prop_assert!(a % 16 == 0 && a < b && *b <= max);
            proptest::prop_assert!(*a >= last_end, "ranges overlap");
            proptest::prop_assert!(b % 16 == 0 || *b == max);
            last_end = *b;
        }
        let chunks: std::collections::BTreeSet<u64> =
            batches.iter().flatten().filter(|i| **i < max).map(|i| i / 16).collect();
        let marked_blocks: u64 = marked.iter().map(|(a, b)| b - a).sum();
        proptest::prop_assert!(marked_blocks <= chunks.len() as u64 * 16);
    }
}

#[test]
fn stamps_are_utc_and_sortable() {
    assert_eq!(utc_stamp(0), "19700101T000000Z");
    assert_eq!(utc_stamp(1_795_350_896), "20261122T123456Z");
    assert!(utc_stamp(1_795_350_896) < utc_stamp(1_795_350_897));
}
