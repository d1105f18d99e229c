//! Wrong identities, wrong files and bad luck: each is refused with a message naming the
//! problem, and nothing already archived is lost or changed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use walvault_tests::harness::{
    e2e_ready, wait_until,
    wal::{
        archive_conf, assert_archive_matches, decode_archived, fetch, source_segments, wal_list,
    },
    Certs, Client, ClientConfig, Pg, Storage, TestDir, Walvault,
};

/// Words any reasonable refusal of an identity acting outside its rights contains.
use walvault_tests::harness::NOT_ALLOWED;

/// Runs `args` and expects the documented refusal naming one of `words`.
fn refused(client: &Client, args: &[&str], words: &[&str]) -> String {
    client.run(args).assert_refused(words)
}

/// A refused `wal-fetch`: PostgreSQL must stop recovery on it, not take it for a missing file.
fn fetch_refused(client: &Client, args: &[&str], words: &[&str]) -> String {
    client
        .run(args)
        .assert_refused_with(i32::from(walvault_proto::RESTORE_FATAL_EXIT), words)
}

fn file_name(p: &Path) -> &str {
    p.file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 file name")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The archive holds `original` under its name, byte-identical, by wal-fetch and on disk.
fn assert_archived(td: &TestDir, client: &Client, wal_dir: &Path, original: &Path) {
    let name = file_name(original);
    let expected = std::fs::read(original).expect("read original");
    assert!(
        fetch(td, client, name) == expected,
        "wal-fetch {name} differs from the original"
    );
    assert!(
        decode_archived(&wal_dir.join(format!("{name}.zst"))) == expected,
        "the stored {name}.zst differs from the original"
    );
}

fn standard(td: &TestDir, storage: &Storage) -> Walvault {
    let wv = Walvault::start(td, storage);
    wv.tenant_create("acme", None);
    wv.tenant_create("globex", None);
    for c in ["acme/db1", "acme/db2", "globex/db1"] {
        wv.cluster_create(c);
    }
    wv
}

#[test]
fn no_client_certificate_is_refused() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("no_client_cert");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = standard(&td, &storage);
    // A refused handshake may be logged; it is this test's point.
    wv.server.allow_errors("certificate");
    let seg = &source_segments(&td, "src", 1)[0];
    let cfg = ClientConfig::new(&wv.server, &wv.certs.ca_cert(), None, Some("acme/db1"));
    let anonymous = Client::new(td.path(), td.log(), "anonymous", &cfg, None);
    refused(&anonymous, &["whoami"], &["certificate"]);
    refused(&anonymous, &["wal-push", path_str(seg)], &["certificate"]);
    refused(&anonymous, &["wal-list"], &["certificate"]);
    assert!(wal_list(&wv.admin, Some("acme/db1")).is_empty());
    assert!(storage.archive_files("acme/db1").is_empty());
}

#[test]
fn certificate_of_another_ca_is_refused() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("foreign_ca");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = standard(&td, &storage);
    wv.server.allow_errors("certificate");
    let seg = &source_segments(&td, "src", 1)[0];

    let other_storage = td.mkdir("other-storage");
    let (other, _) = Certs::init(
        &td,
        "other-ca",
        &["--storage", &format!("dir:{}", path_str(&other_storage))],
    );
    let stranger_id = other.issue(&["--agent", "acme/db1"], "stranger", false);
    // The stranger trusts our server's CA: only its own certificate is wrong.
    let cfg = ClientConfig::new(
        &wv.server,
        &wv.certs.ca_cert(),
        Some(&stranger_id),
        Some("acme/db1"),
    );
    let stranger = Client::new(td.path(), td.log(), "stranger", &cfg, None);
    refused(
        &stranger,
        &["wal-push", path_str(seg)],
        &["certificate", "unknown ca", "tls"],
    );
    refused(
        &stranger,
        &["wal-list"],
        &["certificate", "unknown ca", "tls"],
    );
    assert!(wal_list(&wv.admin, Some("acme/db1")).is_empty());

    // The legitimate agent is unaffected.
    let agent = wv.agent("acme/db1").as_user(None);
    agent.ok(&["wal-push", path_str(seg)]);
    assert_archived(&td, &agent, &storage.wal_dir("acme/db1"), seg);

    // `init` never overwrites an existing CA: every certificate issued would be orphaned.
    let ca_key = std::fs::read(wv.certs.dir.join("ca.key")).expect("read ca.key");
    let again = walvault_tests::harness::run(
        td.log(),
        std::process::Command::new(walvault_tests::harness::binary("walvault-server"))
            .args(["init", "--dir", path_str(&wv.certs.dir), "--storage"])
            .arg(format!("dir:{}", path_str(&other_storage))),
        Duration::from_secs(60),
    );
    assert!(
        !again.success(),
        "init overwrote an existing CA: {}",
        again.describe()
    );
    assert_eq!(
        std::fs::read(wv.certs.dir.join("ca.key")).expect("read ca.key"),
        ca_key
    );
}

#[test]
fn agents_are_confined_to_their_cluster() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("confined");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = standard(&td, &storage);
    wv.server.allow_errors("may not");
    let seg = &source_segments(&td, "src", 1)[0];
    let name = file_name(seg);
    let a = wv.agent("acme/db1").as_user(None);
    let b = wv.agent("acme/db2").as_user(None);
    a.ok(&["wal-push", path_str(seg)]);
    b.ok(&["wal-push", path_str(seg)]);

    for other in ["acme/db2", "globex/db1"] {
        refused(
            &a,
            &["--cluster", other, "wal-push", path_str(seg)],
            NOT_ALLOWED,
        );
        refused(&a, &["--cluster", other, "wal-list"], NOT_ALLOWED);
        let dest = td.join(format!("stolen-{}", other.replace('/', "-")));
        fetch_refused(
            &a,
            &["--cluster", other, "wal-fetch", name, path_str(&dest)],
            NOT_ALLOWED,
        );
        assert!(
            !dest.exists(),
            "a refused wal-fetch wrote {}",
            dest.display()
        );
    }
    assert!(storage.archive_files("globex/db1").is_empty());
    assert!(wal_list(&wv.admin, Some("globex/db1")).is_empty());
    assert_eq!(storage.archive_files("acme/db2"), [format!("{name}.zst")]);
    assert_archived(&td, &a, &storage.wal_dir("acme/db1"), seg);
    assert_archived(&td, &b, &storage.wal_dir("acme/db2"), seg);
}

#[test]
fn same_name_twice_is_idempotent_and_other_content_is_refused() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("same_name");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = standard(&td, &storage);
    wv.server.allow_errors("different content");
    let seg = &source_segments(&td, "src", 2)[1];
    let agent = wv.agent("acme/db1").as_user(None);
    let wal_dir = storage.wal_dir("acme/db1");

    agent.ok(&["wal-push", path_str(seg)]);
    // PostgreSQL retries a push whose answer it did not get: the same bytes must succeed.
    agent.ok(&["wal-push", path_str(seg)]);
    assert_archived(&td, &agent, &wal_dir, seg);

    // Same name, a byte changed inside a page (headers intact): a different history.
    let mut other = std::fs::read(seg).expect("read segment");
    let at = 5 * 8192 + 4000;
    other[at] ^= 0xff;
    let other_path = td.mkdir("modified").join(file_name(seg));
    std::fs::write(&other_path, &other).expect("write modified segment");
    refused(
        &agent,
        &["wal-push", path_str(&other_path)],
        &["different", "already archived", "conflict", "differs"],
    );
    assert_archived(&td, &agent, &wal_dir, seg);
    assert_eq!(wal_list(&agent, None).len(), 1);
}

#[test]
fn segment_of_another_database_system_is_refused() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("other_system");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = standard(&td, &storage);
    wv.server.allow_errors("database system");
    let ours = source_segments(&td, "ours", 3);
    let stranger = source_segments(&td, "stranger", 3);
    let agent = wv.agent("acme/db1").as_user(None);
    let wal_dir = storage.wal_dir("acme/db1");
    for seg in &ours[..2] {
        agent.ok(&["wal-push", path_str(seg)]);
    }
    // The stranger's third segment has exactly the name ours would archive next.
    assert_eq!(file_name(&stranger[2]), file_name(&ours[2]));
    refused(
        &agent,
        &["wal-push", path_str(&stranger[2])],
        &["system identifier", "database system"],
    );
    assert!(!wal_dir
        .join(format!("{}.zst", file_name(&ours[2])))
        .exists());
    agent.ok(&["wal-push", path_str(&ours[2])]);
    for seg in &ours {
        assert_archived(&td, &agent, &wal_dir, seg);
    }
}

#[test]
fn truncated_and_wrong_size_segments_are_refused() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("wrong_size");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = standard(&td, &storage);
    wv.server.allow_errors("bytes");
    let seg = &source_segments(&td, "src", 1)[0];
    let name = file_name(seg);
    let agent = wv.agent("acme/db1").as_user(None);
    let wal_dir = storage.wal_dir("acme/db1");
    let bytes = std::fs::read(seg).expect("read segment");

    let truncated = td.mkdir("truncated").join(name);
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    refused(
        &agent,
        &["wal-push", path_str(&truncated)],
        &["size", "truncated", "bytes"],
    );

    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 8192]);
    let oversized = td.mkdir("oversized").join(name);
    std::fs::write(&oversized, &longer).expect("write");
    refused(
        &agent,
        &["wal-push", path_str(&oversized)],
        &["size", "bytes"],
    );

    let empty = td.mkdir("empty").join(name);
    std::fs::write(&empty, b"").expect("write");
    refused(
        &agent,
        &["wal-push", path_str(&empty)],
        &["size", "short", "bytes", "empty"],
    );

    assert!(
        storage.archive_files("acme/db1").is_empty(),
        "{:?}",
        storage.archive_files("acme/db1")
    );
    assert!(wal_list(&agent, None).is_empty());
    agent.ok(&["wal-push", path_str(seg)]);
    assert_archived(&td, &agent, &wal_dir, seg);
}

#[test]
fn names_that_are_not_wal_names_are_refused() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("bad_names");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = standard(&td, &storage);
    wv.server.allow_errors("name");
    let seg = &source_segments(&td, "src", 1)[0];
    let agent = wv.agent("acme/db1").as_user(None);
    let wal_dir = storage.wal_dir("acme/db1");
    agent.ok(&["wal-push", path_str(seg)]);
    let bytes = std::fs::read(seg).expect("read segment");

    // Real WAL content under names that are not WAL file names.
    let dir = td.mkdir("badnames");
    for bad in [
        "not-a-wal",
        "00000001000000000000000g",
        "0000000100000000000000011",
        "000000010000000000000002.zst",
        ".000000010000000000000002",
    ] {
        let p = dir.join(bad);
        std::fs::write(&p, &bytes).expect("write");
        refused(&agent, &["wal-push", path_str(&p)], &["name"]);
    }
    // Names with `/` or `..` would leave the archive if used as paths.
    let dest = td.join("fetched-bad");
    for bad in [
        "../000000010000000000000001",
        "..",
        "a/b",
        "000000010000000000000001/../../../etc/passwd",
        "/etc/passwd",
        "",
    ] {
        fetch_refused(&agent, &["wal-fetch", bad, path_str(&dest)], &["name"]);
        assert!(!dest.exists(), "wal-fetch {bad:?} wrote {}", dest.display());
    }
    assert_eq!(
        storage.archive_files("acme/db1"),
        [format!("{}.zst", file_name(seg))]
    );
    assert_archived(&td, &agent, &wal_dir, seg);
}

/// How a push ended when the server was SIGKILLed during it.
#[derive(Debug, PartialEq, Eq)]
enum Cut {
    /// The push had already succeeded.
    Finished,
    /// The server had stored the file but the client never heard so (it failed).
    AfterStoring,
    /// The push failed and the file was not stored: cut off mid-way.
    MidWay,
}

/// Pushes `seg` in the background and SIGKILLs the server while the push is in flight: as
/// soon as a temporary file appears in the WAL dataset (e.g. under `.incoming/`), or after
/// `delay` if none does first.
fn kill_during_push(
    wv: &mut Walvault,
    agent: &Client,
    seg: &Path,
    wal_dir: &Path,
    delay: Duration,
) -> Cut {
    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(entries(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
    let stored = wal_dir.join(format!("{}.zst", file_name(seg)));
    let before = entries(wal_dir);
    let mut child = agent
        .command(&["wal-push", path_str(seg)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walvault wal-push");
    let started = Instant::now();
    let mut trigger = "timer";
    while started.elapsed() < delay {
        if child.try_wait().ok().flatten().is_some() {
            trigger = "push ended";
            break;
        }
        let now = entries(wal_dir);
        if now.iter().any(|p| !before.contains(p) && *p != stored) {
            trigger = "temporary file in the dataset";
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    wv.server.kill();
    let was_stored = stored.exists();
    let seen: Vec<_> = entries(wal_dir)
        .iter()
        .filter_map(|p| {
            p.strip_prefix(wal_dir)
                .ok()
                .map(|p| p.display().to_string())
        })
        .collect();
    let out = child.wait_with_output().expect("wait for wal-push");
    eprintln!(
        "push of {} killed after {:?} ({trigger}); dataset holds {seen:?}; push: {} {}",
        file_name(seg),
        started.elapsed(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    match (out.status.success(), was_stored) {
        (true, _) => Cut::Finished,
        (false, true) => Cut::AfterStoring,
        (false, false) => Cut::MidWay,
    }
}

#[test]
fn server_killed_during_a_push_leaves_no_partial_file() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("killed_push");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = standard(&td, &storage);
    let segs = source_segments(&td, "src", 8);
    // Uncompressed: 16 MiB on the wire makes the push long enough to be cut.
    let agent = wv.agent_with("acme/db1", "none").as_user(None);
    let wal_dir = storage.wal_dir("acme/db1");

    let t = Instant::now();
    agent.ok(&["wal-push", path_str(&segs[0])]);
    let push_time = t.elapsed();

    let mut cut = None;
    for (i, seg) in segs.iter().enumerate().skip(1) {
        // From about half a push's time, sooner on each attempt, until one is cut mid-way.
        let delay = push_time.mul_f64(0.6 * 0.8_f64.powi(i as i32 - 1));
        let outcome = kill_during_push(&mut wv, &agent, seg, &wal_dir, delay);
        if outcome == Cut::MidWay {
            cut = Some(seg);
            break;
        }
        wv.server.restart();
    }
    let seg = cut.expect("no push was ever cut off mid-way by the kill");

    // Nothing but complete files at the top of the dataset, each its original's bytes.
    for f in storage.archive_files("acme/db1") {
        let name = f
            .strip_suffix(".zst")
            .unwrap_or_else(|| panic!("{f} in {} is not an archived .zst file", wal_dir.display()));
        let original = segs
            .iter()
            .find(|s| file_name(s) == name)
            .unwrap_or_else(|| panic!("{f} is not a segment we pushed"));
        assert!(
            decode_archived(&wal_dir.join(&f)) == std::fs::read(original).expect("read"),
            "{f} is not complete and identical after the kill"
        );
    }

    wv.server.restart();
    agent.ok(&["wal-push", path_str(seg)]);
    for s in segs.iter().take_while(|s| s != &seg).chain([seg]) {
        assert_archived(&td, &agent, &wal_dir, s);
    }
}

#[test]
fn full_quota_fails_pushes_until_raised() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("quota");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = Walvault::start(&td, &storage);
    wv.server.allow_errors("quota");
    wv.tenant_create("small", Some("8M"));
    wv.cluster_create("small/db1");
    let agent = wv.agent("small/db1");
    let mut pg = Pg::init(&td, "primary", &archive_conf(&agent));
    pg.start();
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    // Random text compresses about 2:1, so a few rounds overflow 8M even as zstd.
    pg.psql("CREATE TABLE junk (v text)");
    let mut rounds = 0;
    wait_until(
        "an archive failure from the full quota",
        Duration::from_secs(600),
        || {
            rounds += 1;
            pg.pgbench(&["-n", "-t", "20"]);
            pg.psql("INSERT INTO junk SELECT md5(random()::text) FROM generate_series(1, 100000)");
            pg.switch_wal();
            let (_, _, failed) = pg.archiver();
            (failed > 0).then_some(())
        },
    );
    eprintln!("quota hit after {rounds} rounds");
    // archive_command's stderr is in PostgreSQL's log: it must say why.
    wait_until(
        "the quota error in postgres.log",
        Duration::from_secs(60),
        || {
            pg.server_log()
                .lines()
                .any(|l| l.contains("walvault") && l.to_lowercase().contains("quota"))
                .then_some(())
        },
    );

    wv.admin.ok(&["tenant", "set-quota", "small", "1G"]);
    // A new segment wakes the archiver, which otherwise waits a minute after failures.
    pg.pgbench(&["-n", "-t", "50"]);
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(600));

    let root = agent.as_user(None);
    let compared = assert_archive_matches(&td, &pg, &root, &storage.wal_dir("small/db1"));
    assert!(compared >= 3, "compared only {compared} segments");
}
