//! Restores that must be refused: targets outside the restorable window (the error states the
//! window), identities of another tenant or cluster, and arguments that make no sense. Each
//! refusal is exit 1 (or clap's 2 for a malformed command line) with a message naming the
//! problem, and leaves nothing behind: no listed restore, no clone, no file in the target
//! directory.

use std::path::Path;

use walvault_proto::Lsn;
use walvault_tests::harness::{
    backup::{backup_ok, CLUSTER},
    chown_postgres,
    restore::{archive_now, Lab, PointInTime, TimelineWindow, NOT_ALLOWED},
    Run, Storage, PG_USER,
};

/// A small cluster with one full backup whose WAL is archived; returns the backup's id.
fn backed_up(lab: &Lab) -> String {
    let pg = &lab.d.primary;
    pg.psql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)");
    let id = backup_ok(&lab.d.agent, pg, &[]).id;
    pg.psql("INSERT INTO t VALUES (1001)");
    archive_now(pg);
    id
}

/// The directory is still empty.
fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "a refused restore left {left:?} in {}",
        dir.display()
    );
}

/// Nothing was created: no restore listed, no clone under the cluster's `restores`.
fn assert_nothing_restored(lab: &Lab) {
    let listed = lab.restores();
    assert!(listed.is_empty(), "refused restores are listed: {listed:?}");
    if let Storage::Zfs(pool) = &lab.d.storage {
        let clones: Vec<String> = pool
            .datasets()
            .into_iter()
            .filter(|d| d.contains(&format!("{CLUSTER}/restores/")))
            .collect();
        assert!(
            clones.is_empty(),
            "refused restores left clones: {clones:?}"
        );
    }
}

/// A malformed command line: exit 1 (or clap's 2), naming one of `words`.
fn assert_usage_error(r: &Run, words: &[&str]) {
    assert!(
        matches!(r.code, Some(1 | 2)),
        "expected a refusal: {}",
        r.describe()
    );
    let lower = r.stderr.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "the error should name the problem (one of {words:?}): {}",
        r.describe()
    );
}

/// The refusal states the window: that it is the window (or its oldest backup), and where
/// it starts (the date of its first restorable moment, its LSN, or that backup).
fn assert_states_window(err: &str, w: &TimelineWindow, backup: &str) {
    let lower = err.to_lowercase();
    assert!(
        lower.contains("window") || err.contains(backup),
        "the error does not speak of the window nor of backup {backup}: {err}"
    );
    let date = w.from_time.get(..10).filter(|d| d.len() == 10);
    assert!(
        date.is_some_and(|d| err.contains(d)) || err.contains(&w.from_lsn) || err.contains(backup),
        "the error does not say where the window starts ({} / {} / {backup}): {err}",
        w.from_time,
        w.from_lsn
    );
}

#[test]
fn out_of_window() {
    let Some(mut lab) = Lab::start("restore_out_of_window", None) else {
        return;
    };
    lab.d.wv.server.allow_errors("window");
    let pg = &lab.d.primary;
    pg.psql("CREATE TABLE early (x int); INSERT INTO early VALUES (1)");
    // Archived WAL covers this moment, but no backup is consistent before it.
    let before_backup = PointInTime::between_commits(pg);
    let backup = backed_up(&lab);
    let future = PointInTime::query(pg, "clock_timestamp() + interval '1 day'");
    let window = lab.window();
    eprintln!("window: {window:?}");
    assert_eq!(window.len(), 1, "{window:?}");
    let w = &window[0];
    assert_eq!(w.oldest_backup.as_deref(), Some(backup.as_str()), "{w:?}");
    assert!(
        before_backup.micros < w.from_micros,
        "the time before the backup is inside the window: {w:?}"
    );
    let past_end = Lsn(w.end().0 + (1 << 30)).to_string();

    let dir = lab.empty_instance("refused").data_dir().to_owned();
    for target in [
        ["--time", before_backup.utc.as_str()],
        ["--time", future.utc.as_str()],
        ["--lsn", past_end.as_str()],
    ] {
        let words = [backup.as_str(), "window"];
        let err = lab.try_restore_to_dir(&dir, &target).assert_refused(&words);
        eprintln!("{target:?} to a directory refused: {err}");
        assert_states_window(&err, w, &backup);
        let err = lab.try_restore_instance(&target).assert_refused(&words);
        eprintln!("{target:?} as an instance refused: {err}");
        assert_states_window(&err, w, &backup);
    }
    assert_empty(&dir);
    assert_nothing_restored(&lab);
}

#[test]
fn other_tenant_refused() {
    let Some(mut lab) = Lab::start("restore_other_tenant", None) else {
        return;
    };
    for w in NOT_ALLOWED {
        lab.d.wv.server.allow_errors(w);
    }
    lab.d.wv.tenant_create("globex", None);
    lab.d.wv.cluster_create("acme/db2");
    lab.d.wv.cluster_create("globex/db1");
    let backup = backed_up(&lab);
    let globex = lab.d.wv.operator("globex", Some(PG_USER));
    let db2 = lab.d.wv.agent("acme/db2");
    // A live restore of the cluster, for the others to try to drop.
    let inst = lab.restore_instance(&["--latest"]);
    assert_eq!(inst.info.backup_id, backup);

    let dir = lab.empty_instance("refused").data_dir().to_owned();
    let to_dir = format!("dir:{}", dir.display());
    let mut words = NOT_ALLOWED.to_vec();
    words.push("tenant");
    for (who, client) in [
        ("an operator of globex", &globex),
        ("the agent of acme/db2", &db2),
    ] {
        let on_cluster = |args: &[&str]| {
            let mut all = vec!["--cluster", CLUSTER];
            all.extend_from_slice(args);
            client.run(&all)
        };
        for args in [
            &["restore", "--latest", "--to", &to_dir, "--json", "--quiet"][..],
            &["restore", "--latest", "--to", "instance", "--json"][..],
            &["window", "--json"][..],
        ] {
            let err = on_cluster(args).assert_refused(&words);
            eprintln!("{who}: {args:?} refused: {err}");
        }
        let mut drop_words = words.clone();
        drop_words.extend_from_slice(&["not found", "no restore", "no such", "unknown"]);
        let err = client
            .run(&["restores", "drop", &inst.info.id])
            .assert_refused(&drop_words);
        eprintln!("{who}: restores drop {} refused: {err}", inst.info.id);
        assert_eq!(
            inst.psql("SELECT 1"),
            "1",
            "the restore's instance stopped after {who} tried to drop it"
        );
    }
    // The cluster's own agent may write restores to its host, not start instances.
    let err = lab
        .d
        .agent
        .run(&["restore", "--latest", "--to", "instance", "--json"])
        .assert_refused(&[&words[..], &["operator"]].concat());
    eprintln!("the agent of {CLUSTER} asking for an instance refused: {err}");

    // The cluster's own operator may.
    let r = lab.try_restore_instance(&["--latest", "--dry-run"]);
    assert!(r.success(), "{}", r.describe());
    assert!(
        r.stdout.contains(&backup),
        "the dry run does not name backup {backup}: {}",
        r.stdout
    );
    assert_empty(&dir);
    let listed = lab.restores();
    assert_eq!(
        listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [inst.info.id.as_str()],
        "{listed:?}"
    );
    lab.drop_restore(&inst.info.id);
    assert_nothing_restored(&lab);
}

#[test]
fn bad_arguments() {
    let Some(mut lab) = Lab::start("restore_bad_arguments", None) else {
        return;
    };
    lab.d.wv.server.allow_errors("nosuch");
    lab.d.wv.server.allow_errors("restore point");
    backed_up(&lab);
    let dir = lab.empty_instance("target").data_dir().to_owned();
    let now = PointInTime::now(&lab.d.primary);

    let r = lab.try_restore_to_dir(&dir, &["--time", &now.utc, "--lsn", "0/3000000"]);
    assert_usage_error(&r, &["--time", "--lsn", "target"]);
    let r = lab.try_restore_to_dir(&dir, &["--time", "yesterday"]);
    assert_usage_error(&r, &["yesterday"]);
    let r = lab.d.agent.run(&["restore", "--latest", "--to", "nowhere"]);
    assert_usage_error(&r, &["nowhere"]);
    let r = lab.try_restore_instance(&["--latest", "--delta"]);
    assert_usage_error(&r, &["delta"]);
    let err = lab
        .try_restore_to_dir(&dir, &["--name", "nosuchpoint"])
        .assert_refused(&["nosuchpoint"]);
    eprintln!("unknown restore point refused: {err}");
    assert_empty(&dir);

    // A directory that holds something is not overwritten without --delta.
    let occupied = lab.empty_instance("occupied").data_dir().to_owned();
    let precious = occupied.join("precious.txt");
    std::fs::write(&precious, "do not lose me").expect("write");
    chown_postgres(&precious);
    let err = lab
        .try_restore_to_dir(&occupied, &["--latest"])
        .assert_refused(&["empty", "--delta", &occupied.display().to_string()]);
    eprintln!("restore into a non-empty directory refused: {err}");
    assert_eq!(
        std::fs::read_to_string(&precious).expect("the file survives"),
        "do not lose me"
    );
    assert_eq!(std::fs::read_dir(&occupied).expect("read").count(), 1);

    let err = lab
        .op(&["restores", "drop", "nosuchid"])
        .assert_refused(&["nosuchid"]);
    eprintln!("dropping an unknown restore refused: {err}");
    assert_nothing_restored(&lab);
}
