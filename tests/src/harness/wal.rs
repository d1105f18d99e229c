//! WAL names and positions (16 MiB segments, PostgreSQL's default), and the check that the
//! archive holds exactly what PostgreSQL wrote.

use std::collections::BTreeMap;
use std::path::Path;

use walvault_proto::Lsn;

use std::path::PathBuf;
use std::time::Duration;

use super::{wait_until, Client, Pg, TestDir};

pub const SEGMENT_SIZE: u64 = 16 << 20;
const SEGMENTS_PER_XLOGID: u64 = 0x1_0000_0000 / SEGMENT_SIZE;

fn parts(name: &str) -> (u32, u64) {
    assert!(
        name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name:?} is not a WAL segment name"
    );
    let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex");
    let tli = u32::try_from(hex(&name[0..8])).expect("timeline fits u32");
    (
        tli,
        hex(&name[8..16]) * SEGMENTS_PER_XLOGID + hex(&name[16..24]),
    )
}

fn name_of(tli: u32, segno: u64) -> String {
    format!(
        "{tli:08X}{:08X}{:08X}",
        segno / SEGMENTS_PER_XLOGID,
        segno % SEGMENTS_PER_XLOGID
    )
}

/// The segment after `name` on the same timeline.
pub fn next_segment(name: &str) -> String {
    let (tli, segno) = parts(name);
    name_of(tli, segno + 1)
}

/// The LSN just past the end of segment `name`.
pub fn segment_end(name: &str) -> Lsn {
    Lsn((parts(name).1 + 1) * SEGMENT_SIZE)
}

/// Decodes a file of the archive (`<wal dataset>/<NAME>.zst`: a skippable metadata frame, then
/// a standard zstd frame) to the original bytes.
pub fn decode_archived(path: &Path) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    zstd::stream::decode_all(f).unwrap_or_else(|e| panic!("zstd-decode {}: {e}", path.display()))
}

/// `wal-list --json` as printed: `{"files": [...], "timelines": [...]}`.
pub fn wal_list_json(client: &Client, cluster: Option<&str>) -> serde_json::Value {
    let mut args = vec!["wal-list", "--json"];
    if let Some(c) = cluster {
        args.extend_from_slice(&["--cluster", c]);
    }
    let out = client.ok(&args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("`wal-list --json` is not JSON ({e}): {out}"))
}

/// The holes `wal-list --json` reports on timeline `timeline`'s history: (first, last, cause).
pub fn wal_list_holes(
    client: &Client,
    cluster: Option<&str>,
    timeline: u32,
) -> Vec<(String, String, String)> {
    let v = wal_list_json(client, cluster);
    let tl = v["timelines"]
        .as_array()
        .unwrap_or_else(|| panic!("`wal-list --json` has no timelines: {v}"))
        .iter()
        .find(|t| t["timeline"] == timeline)
        .cloned()
        .unwrap_or_default();
    tl["holes"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let s = |k: &str| h[k].as_str().unwrap_or_default().to_owned();
                    (s("first"), s("last"), s("cause"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `wal-list --json`'s files as `name -> entry`.
pub fn wal_list(client: &Client, cluster: Option<&str>) -> BTreeMap<String, serde_json::Value> {
    let v = wal_list_json(client, cluster);
    v["files"]
        .as_array()
        .unwrap_or_else(|| panic!("`wal-list --json` has no files array: {v}"))
        .iter()
        .map(|e| {
            let name = e["name"]
                .as_str()
                .unwrap_or_else(|| panic!("wal-list entry without a name: {e}"))
                .to_owned();
            (name, e.clone())
        })
        .collect()
}

/// Fetches `name` with `wal-fetch` into the test directory and returns its bytes.
pub fn fetch(td: &TestDir, client: &Client, name: &str) -> Vec<u8> {
    let dir = td.mkdir("fetched");
    let dest = dir.join(name);
    let _ = std::fs::remove_file(&dest);
    client.ok(&["wal-fetch", name, dest.to_str().expect("utf-8")]);
    let bytes = std::fs::read(&dest).unwrap_or_else(|e| panic!("read {}: {e}", dest.display()));
    // Keep the test directory small: 16 MiB per segment adds up.
    let _ = std::fs::remove_file(&dest);
    bytes
}

/// For every file PostgreSQL marked archived (`.done`) and still has in `pg_wal`: the file
/// fetched with `wal-fetch` (run by `client`), the file decoded from the WAL dataset, and the
/// `wal-list` entry (size, blake3) all match pg_wal's bytes. Returns how many were compared.
pub fn assert_archive_matches(td: &TestDir, pg: &Pg, client: &Client, wal_dir: &Path) -> usize {
    let listed = wal_list(client, None);
    let mut compared = 0;
    for name in pg.done_files() {
        let original = pg.wal_dir().join(&name);
        let Ok(expected) = std::fs::read(&original) else {
            // Removed by a checkpoint after it was archived: nothing to compare with.
            continue;
        };
        let fetched = fetch(td, client, &name);
        assert!(
            fetched == expected,
            "wal-fetch {name}: {} bytes differ from pg_wal's {} bytes",
            fetched.len(),
            expected.len()
        );
        let stored = decode_archived(&wal_dir.join(format!("{name}.zst")));
        assert!(
            stored == expected,
            "{}/{name}.zst decodes to {} bytes that differ from pg_wal's {} bytes",
            wal_dir.display(),
            stored.len(),
            expected.len()
        );
        let entry = listed
            .get(&name)
            .unwrap_or_else(|| panic!("wal-list does not list {name}"));
        assert_eq!(
            entry["size"].as_u64(),
            Some(expected.len() as u64),
            "wal-list size of {name}: {entry}"
        );
        let hash = blake3::hash(&expected).to_hex().to_string();
        assert_eq!(
            entry["blake3"].as_str().map(str::to_ascii_lowercase),
            Some(hash),
            "wal-list blake3 of {name}: {entry}"
        );
        compared += 1;
    }
    compared
}

/// Builds the archive settings for a PostgreSQL instance pushing with `client`.
pub fn archive_conf(client: &Client) -> Vec<String> {
    vec![
        "archive_mode = on".into(),
        format!(
            "archive_command = '{}'",
            client.shell_command("wal-push %p")
        ),
        // Keep pg_wal's copies so the test can compare them with the archive.
        "wal_keep_size = '2GB'".into(),
        "max_wal_size = '2GB'".into(),
    ]
}

/// Settings that make an instance archive into a local directory (`cp`): a source of real
/// segments that tests push by hand.
pub fn local_archive_conf(dir: &Path) -> Vec<String> {
    vec![
        "archive_mode = on".into(),
        format!(
            "archive_command = 'test ! -f {0}/%f && cp %p {0}/%f.tmp && mv {0}/%f.tmp {0}/%f'",
            dir.display()
        ),
        "wal_keep_size = '2GB'".into(),
    ]
}

/// A PostgreSQL instance archiving into a local directory: `n` real, complete segments of one
/// database system, oldest first. The instance is stopped afterwards.
pub fn source_segments(td: &TestDir, name: &str, n: usize) -> Vec<PathBuf> {
    let archive = td.mkdir_postgres(format!("{name}-archive"));
    let mut pg = Pg::init(td, name, &local_archive_conf(&archive));
    pg.start();
    pg.psql("CREATE TABLE t (x int)");
    let mut names = Vec::new();
    for i in 0..n {
        pg.psql(&format!(
            "INSERT INTO t SELECT generate_series(1, {})",
            1000 * (i + 1)
        ));
        names.push(pg.switch_wal());
    }
    let last = archive.join(names.last().expect("n > 0"));
    wait_until(
        &format!("{} in the local archive", last.display()),
        Duration::from_secs(120),
        || last.exists().then_some(()),
    );
    pg.stop();
    names.dedup();
    assert_eq!(
        names.len(),
        n,
        "pg_switch_wal did not switch every time: {names:?}"
    );
    names.iter().map(|n| archive.join(n)).collect()
}
