//! Restores that cannot lie (issue 9), with faults injected for real:
//! - an archived segment damaged at rest: `wal-fetch` fails with a status PostgreSQL treats
//!   as fatal, restores past it fail instead of promoting early (both deliveries, before and
//!   after the server knows), `verify` names the file, and a push of the good copy repairs it;
//! - the server killed in the middle of a recovery's fetches: recovery stops with a FATAL, and
//!   resumes to the right end once the server is back;
//! - the server SIGKILLed between publishing a segment and cataloguing it: after a restart the
//!   file is catalogued, `--latest` reaches it, and the catalog equals a fresh rebuild;
//! - a segment that passes its CRC but cannot be decoded: reported by `window` and `verify`,
//!   the rest of the cluster plans and restores normally;
//! - an instance restore whose server dies while it recovers, or while its startup process is
//!   stopped for the promotion: cleaned up at the next start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use walvault_tests::harness::{
    backup::{backup_ok, CLUSTER},
    chown_postgres,
    restore::{archive_now, wait_promoted, Lab, PointInTime},
    run, wait_until,
    wal::{fetch, wal_list},
    Run, PG_USER,
};

/// PostgreSQL gives up on a restore_command status above 125 (and on a signal).
const FATAL_STATUS: i32 = 200;

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Lets the agent's wal-fetch and wal-push give up on an unreachable server after `secs`.
fn set_retry(client_config: &Path, secs: u64) {
    let mut text = std::fs::read_to_string(client_config).expect("read the client config");
    text.push_str(&format!("\nretry_secs = {secs}\n"));
    std::fs::write(client_config, text).expect("write the client config");
}

/// `walvault verify --cluster C --json` as the operator: (succeeded, problems as
/// (kind, name)).
fn verify(lab: &Lab) -> (bool, Vec<(String, String)>) {
    let r = lab.op(&["verify", "--json"]);
    let v = json(&r.stdout);
    let reports = v.as_array().unwrap_or_else(|| panic!("{}", r.describe()));
    assert_eq!(reports.len(), 1, "{v}");
    let problems = reports[0]["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap_or_default().to_owned(),
                p["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        reports[0]["files_checked"].as_u64().unwrap_or(0) > 0,
        "verify checked no file: {v}"
    );
    (r.success(), problems)
}

/// The directory where the server keeps the cluster's archived files.
fn archived(lab: &Lab, name: &str) -> PathBuf {
    lab.d.storage.wal_dir(CLUSTER).join(format!("{name}.zst"))
}

/// Flips a byte in the middle of an archived file's compressed content (its metadata frame
/// stays intact): damage at rest.
fn damage(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let header = 65;
    assert!(bytes.len() > header + 16, "{} is too small", path.display());
    let at = header + (bytes.len() - header) / 2;
    bytes[at] ^= 0x5A;
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Whether a PostgreSQL log shows it opened for business (recovery ended and it promoted).
fn promoted(log: &str) -> bool {
    log.contains("selected new timeline ID")
        || log.contains("database system is ready to accept connections")
}

#[test]
fn a_segment_damaged_at_rest_fails_restores_until_its_good_copy_repairs_it() {
    let Some(mut lab) = Lab::start("integrity_damaged", Some(1)) else {
        return;
    };
    lab.d.wv.server.allow_errors("damaged");
    let backup = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    let victim = lab.d.primary.switch_wal();
    lab.d
        .primary
        .wait_archived(&victim, Duration::from_secs(120));
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    let t_past = PointInTime::between_commits(&lab.d.primary);
    let at_t_past = lab.d.primary.checksums();
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    let last = lab.d.primary.checksums();
    archive_now(&lab.d.primary);
    assert_ne!(at_t_past, last);

    // Keep the good copy (as a standby or the primary's pg_wal would have it), then damage
    // the archived one.
    let good_dir = lab.td().mkdir_postgres("good");
    let good = good_dir.join(&victim);
    std::fs::write(&good, fetch(lab.td(), &lab.d.agent.as_user(None), &victim)).expect("save");
    chown_postgres(&good);
    damage(&archived(&lab, &victim));

    // As an instance, before the server knows: wal-unpack stops recovery, the restore fails
    // naming the file, and leaves nothing.
    let r = lab.try_restore_instance(&["--latest"]);
    assert!(
        !r.success(),
        "an instance restore across a damaged segment: {}",
        r.describe()
    );
    assert!(
        r.stderr.contains(&victim) && r.stderr.contains("damaged"),
        "the failure does not name the damaged segment: {}",
        r.describe()
    );
    assert!(lab.restores().is_empty(), "{:?}", lab.restores());
    // The server may know now, if reading ahead of that recovery reached the segment. The
    // good copy repairs it either way; damaged again, the server does not know this time.
    lab.d.agent.ok(&["wal-push", good.to_str().expect("utf-8")]);
    damage(&archived(&lab, &victim));

    // Into a directory: PostgreSQL's restore_command fails with a fatal status, so recovery
    // stops instead of promoting with the data of before the segment.
    let mut pg = lab.empty_instance("across-damage");
    lab.restore_to_dir(pg.data_dir(), &["--latest"]);
    pg.append_conf(&["archive_mode = off".to_owned()]);
    pg.start_no_wait();
    assert!(
        pg.wait_stopped(Duration::from_secs(180)),
        "PostgreSQL still runs after restore_command failed on {victim}"
    );
    let log = pg.server_log();
    assert!(
        log.contains(&format!("could not restore file \"{victim}\"")),
        "recovery did not stop at {victim}:\n{log}"
    );
    assert!(!promoted(&log), "recovery ended early and promoted:\n{log}");

    // The server knows now (the fetch told it): plans across it are refused up front.
    refused_across(&lab, &victim, &t_past);
    // wal-fetch: the fatal status, one line naming the file.
    let dest = lab.td().mkdir_postgres("fetched").join(&victim);
    let r = lab
        .d
        .agent
        .run(&["wal-fetch", &victim, dest.to_str().expect("utf-8")]);
    assert_eq!(r.code, Some(FATAL_STATUS), "{}", r.describe());
    assert!(r.stderr.contains(&victim), "{}", r.describe());
    assert!(!dest.exists(), "wal-fetch wrote a damaged file");
    // verify names it.
    let (ok, problems) = verify(&lab);
    assert!(!ok, "verify passed with a damaged file");
    assert!(
        problems.contains(&("damaged".to_owned(), victim.clone())),
        "{problems:?}"
    );
    assert!(
        lab.d
            .wv
            .server
            .log_text()
            .lines()
            .any(|l| l.contains(" ERROR ") && l.contains("is damaged") && l.contains(&victim)),
        "the server's log has no ERROR naming the damaged {victim}"
    );

    // The good copy repairs it.
    lab.d.agent.ok(&["wal-push", good.to_str().expect("utf-8")]);
    assert!(
        lab.d.wv.server.log_text().matches("repaired").count() >= 2,
        "the second repair of {victim} is not in the server's log"
    );
    let (ok, problems) = verify(&lab);
    assert!(ok, "verify after the repair: {problems:?}");
    let inst = lab.restore_instance(&["--latest"]);
    assert_eq!(inst.info.backup_id, backup.id);
    assert_eq!(inst.checksums(), last, "--latest after the repair");
    lab.drop_restore(&inst.info.id);
    let (at, _) = lab.restore_and_start("past-repaired", &["--time", &t_past.utc]);
    assert_eq!(
        at.checksums(),
        at_t_past,
        "a time past the repaired segment"
    );
}

/// Restores across the damaged `victim` are refused up front, naming it.
fn refused_across(lab: &Lab, victim: &str, t_past: &PointInTime) {
    for args in [
        vec!["--latest", "--to", "instance"],
        vec!["--time", t_past.utc.as_str(), "--dry-run"],
    ] {
        let mut all = vec!["restore"];
        all.extend_from_slice(&args);
        let r = lab.op(&all);
        assert!(!r.success(), "{args:?}: {}", r.describe());
        assert!(
            r.stderr.contains(victim) && r.stderr.contains("damaged"),
            "{args:?}: {}",
            r.describe()
        );
    }
}

/// `restore_command` of a restored PGDATA, with `%f`/`%p` as `"$1"`/`"$2"` for a shell script.
fn restore_command_of(data: &Path) -> String {
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).expect("auto.conf");
    let line = auto
        .lines()
        .rfind(|l| l.trim_start().starts_with("restore_command"))
        .expect("restore_command");
    let value = line.split_once('=').expect("name = value").1.trim();
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .expect("quoted")
        .replace("''", "'");
    value
        .replace("%f", "\"$1\"")
        .replace("%p", "\"$2\"")
        .replace("%%", "%")
}

#[test]
fn a_server_stopped_in_the_middle_of_a_recovery_never_makes_it_promote_early() {
    let Some(mut lab) = Lab::start("integrity_server_gone", Some(1)) else {
        return;
    };
    set_retry(lab.d.agent.config(), 3);
    backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    let mut segments = Vec::new();
    for _ in 0..5 {
        lab.d.primary.pgbench(&["-n", "-t", "100"]);
        segments.push(lab.d.primary.switch_wal());
    }
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    let last = lab.d.primary.checksums();
    archive_now(&lab.d.primary);

    let mut pg = lab.empty_instance("recovering");
    lab.restore_to_dir(pg.data_dir(), &["--latest"]);
    pg.append_conf(&["archive_mode = off".to_owned()]);
    // A gate in front of restore_command: when recovery asks for the third segment it waits
    // until the test has killed the server, then fetches.
    let gate = lab.td().mkdir_postgres("gate");
    let script = gate.join("restore.sh");
    let at = &segments[2];
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = \"{at}\" ] && [ ! -f {g}/passed ]; then\n  touch {g}/reached\n  \
             while [ ! -f {g}/go ]; do sleep 0.1; done\n  touch {g}/passed\nfi\nexec {cmd}\n",
            g = gate.display(),
            cmd = restore_command_of(pg.data_dir())
        ),
    )
    .expect("write the gate");
    walvault_tests::harness::chmod(&script, 0o755);
    chown_postgres(&script);
    let auto = pg.data_dir().join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).expect("auto.conf");
    text.push_str(&format!("restore_command = '{} %f %p'\n", script.display()));
    std::fs::write(&auto, text).expect("auto.conf");

    pg.start_no_wait();
    wait_until(
        &format!("recovery to ask for {at}"),
        Duration::from_secs(120),
        || gate.join("reached").exists().then_some(()),
    );
    lab.d.wv.server.kill();
    std::fs::write(gate.join("go"), "").expect("open the gate");
    assert!(
        pg.wait_stopped(Duration::from_secs(120)),
        "PostgreSQL still runs with the server gone"
    );
    let log = pg.server_log();
    assert!(
        log.contains(&format!("could not restore file \"{at}\"")),
        "recovery did not stop at {at}:\n{log}"
    );
    assert!(!promoted(&log), "recovery ended early and promoted:\n{log}");

    // With the server back, the same copy recovers to the end.
    lab.d.wv.server.restart();
    pg.rotate_log();
    pg.start_no_wait();
    wait_promoted(&pg);
    assert_eq!(
        pg.checksums(),
        last,
        "the recovery resumed after the server came back"
    );
}

#[test]
fn a_server_killed_between_publishing_and_cataloguing_a_segment_catalogues_it_at_start() {
    let Some(mut lab) = Lab::start("integrity_push_killed", Some(1)) else {
        return;
    };
    backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    archive_now(&lab.d.primary);

    lab.d.wv.server.restart_with_fault(Some("push-after-link"));
    lab.d
        .primary
        .psql("CREATE TABLE marker AS SELECT 'in the segment the server died on' AS what");
    let victim = lab.d.primary.switch_wal();
    assert!(
        lab.d.wv.server.wait_exit(Duration::from_secs(120)),
        "the fault point did not fire"
    );
    let last = lab.d.primary.checksums();
    assert!(last.contains_key("public.marker"));
    // Published, not catalogued.
    assert!(
        lab.d
            .storage
            .archive_files(CLUSTER)
            .contains(&format!("{victim}.zst")),
        "{victim} was not published before the crash"
    );
    let dump = lab.d.wv.server.catalog_dump();
    assert!(
        !dump.to_string().contains(&victim),
        "{victim} was catalogued: the fault point is in the wrong place"
    );

    // The next start catalogues it before serving.
    lab.d.wv.server.restart_with_fault(None);
    assert!(
        wal_list(&lab.d.agent, None).contains_key(&victim),
        "{victim} is not listed after the restart"
    );
    let inst = lab.restore_instance(&["--latest"]);
    assert_eq!(inst.checksums(), last, "--latest does not reach {victim}");
    lab.drop_restore(&inst.info.id);

    // The catalog equals one rebuilt from the storage alone.
    lab.d.wv.server.stop();
    let before = lab.d.wv.server.catalog_dump();
    lab.d.wv.server.catalog_rebuild();
    let after = lab.d.wv.server.catalog_dump();
    assert_eq!(before, after, "the catalog differs from a fresh rebuild");
    lab.d.wv.server.restart();
}

/// The LSN (as a byte offset in its 16 MiB segment) of a 34-byte COMMIT record that fits in
/// one page of `segment`, as pg_waldump reads it.
fn simple_commit_offset(log: &walvault_tests::harness::Log, segment: &Path) -> usize {
    let r: Run = run(
        log,
        Command::new("runuser")
            .args(["-u", PG_USER, "--"])
            .arg(Path::new(walvault_tests::harness::PG_BIN).join("pg_waldump"))
            .args(["-r", "Transaction"])
            .arg(segment),
        Duration::from_secs(60),
    );
    // pg_waldump exits 1 at the end of valid WAL; its records are on stdout.
    for line in r.stdout.lines() {
        if !(line.contains("len (rec/tot):     34/    34") && line.contains("desc: COMMIT")) {
            continue;
        }
        let lsn = line
            .split("lsn: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .expect("an lsn");
        let (hi, lo) = lsn.split_once('/').expect("X/Y");
        let lsn = (u64::from_str_radix(hi, 16).expect("hex") << 32)
            | u64::from_str_radix(lo, 16).expect("hex");
        let off = (lsn % (16 << 20)) as usize;
        if off % 8192 + 34 <= 8192 {
            return off;
        }
    }
    panic!("no simple commit in {}:\n{}", segment.display(), r.stdout);
}

#[test]
fn a_segment_that_cannot_be_decoded_is_reported_and_the_rest_restores() {
    let Some(lab) = Lab::start("integrity_undecodable", Some(1)) else {
        return;
    };
    let (t, at_t) = backup_then_a_time(&lab);

    // The next segment goes to a local directory instead, to be altered before it is pushed.
    let local = lab.td().mkdir_postgres("local-archive");
    lab.d.primary.psql(&format!(
        "ALTER SYSTEM SET archive_command = 'test ! -f {0}/%f && cp %p {0}/%f'",
        local.display()
    ));
    lab.d.primary.psql("SELECT pg_reload_conf()");
    // Two transactions: the insert's commit is a plain one (no invalidations).
    lab.d.primary.psql("CREATE TABLE later AS SELECT 1 AS x");
    lab.d.primary.psql("INSERT INTO later VALUES (2)");
    let victim = lab.d.primary.switch_wal();
    let copy = local.join(&victim);
    wait_until(
        &format!("{victim} in the local archive"),
        Duration::from_secs(120),
        || copy.exists().then_some(()),
    );
    // A plain commit turned into a COMMIT PREPARED that does not say which prepared
    // transaction it ends, its CRC made right again: valid WAL to every check but a decoder's.
    let mut bytes = std::fs::read(&copy).expect("read the segment");
    let off = simple_commit_offset(lab.td().log(), &copy);
    assert_eq!(bytes[off + 17], 1, "not a transaction record (rmid)");
    bytes[off + 16] = (bytes[off + 16] & !0x70) | 0x30;
    let crc = crc32c::crc32c(&bytes[off + 24..off + 34]);
    let crc = crc32c::crc32c_append(crc, &bytes[off..off + 20]);
    bytes[off + 20..off + 24].copy_from_slice(&crc.to_le_bytes());
    let crafted_dir = lab.td().mkdir_postgres("crafted");
    let crafted = crafted_dir.join(&victim);
    std::fs::write(&crafted, bytes).expect("write the crafted segment");
    chown_postgres(&crafted);
    lab.d
        .agent
        .ok(&["wal-push", crafted.to_str().expect("utf-8")]);

    // Reported by window and verify.
    let window = wait_until(
        "the window to list the unreadable segment",
        Duration::from_secs(60),
        || {
            let w = lab.window();
            w.iter()
                .any(|t| t.unreadable.iter().any(|u| u.name == victim))
                .then_some(w)
        },
    );
    let tl1 = window.iter().find(|w| w.timeline == 1).expect("timeline 1");
    let u = tl1
        .unreadable
        .iter()
        .find(|u| u.name == victim)
        .expect("listed");
    assert!(u.reason.contains("cannot be decoded"), "{u:?}");
    assert!(
        tl1.holes.is_empty(),
        "an unreadable segment is no hole: {tl1:?}"
    );
    let (ok, problems) = verify(&lab);
    assert!(!ok);
    assert!(
        problems.contains(&("unreadable".to_owned(), victim.clone())),
        "{problems:?}"
    );
    // The rest of the cluster plans and restores normally.
    let r = lab.op(&["restore", "--latest", "--dry-run"]);
    assert!(r.success(), "{}", r.describe());
    let inst = lab.restore_instance(&["--time", &t.utc]);
    assert_eq!(inst.checksums(), at_t);
    lab.drop_restore(&inst.info.id);
}

#[test]
fn an_instance_restore_interrupted_by_a_crash_is_cleaned_up_at_start() {
    let Some(mut lab) = Lab::start("integrity_restore_killed", Some(1)) else {
        return;
    };
    backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    let last = lab.d.primary.checksums();
    archive_now(&lab.d.primary);

    lab.d
        .wv
        .server
        .restart_with_fault(Some("instance-recovering"));
    let r = lab.try_restore_instance(&["--latest"]);
    assert!(!r.success(), "{}", r.describe());
    assert!(lab.d.wv.server.wait_exit(Duration::from_secs(60)));

    lab.d.wv.server.restart_with_fault(None);
    assert!(
        lab.restores().is_empty(),
        "a restore interrupted by a crash is still listed: {:?}",
        lab.restores()
    );
    assert_no_socket_dir_left(&lab.d.wv.server.log_text());
    // Nothing holds the clone: the next restore works (and the lab finds no stray PostgreSQL).
    let inst = lab.restore_instance(&["--latest"]);
    assert_eq!(inst.checksums(), last);
    lab.drop_restore(&inst.info.id);
}

/// A full backup, pgbench, a time T between commits, more pgbench, archived: T and the
/// source's checksums at T.
fn backup_then_a_time(lab: &Lab) -> (PointInTime, BTreeMap<String, String>) {
    backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    let t = PointInTime::between_commits(&lab.d.primary);
    let at_t = lab.d.primary.checksums();
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    archive_now(&lab.d.primary);
    (t, at_t)
}

/// The server's log says it cleaned up an interrupted restore, and that restore's private
/// socket directory is gone with it.
fn assert_no_socket_dir_left(log: &str) {
    let line = log
        .lines()
        .find(|l| l.contains("a restore was interrupted by the server's stop"))
        .unwrap_or_else(|| panic!("no interrupted restore cleaned up:\n{log}"));
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("restore="))
        .unwrap_or_else(|| panic!("no restore id in {line:?}"))
        .trim_matches('"');
    let socket_dir = PathBuf::from(format!("/tmp/walvault-{id}"));
    assert!(!socket_dir.exists(), "{} is left", socket_dir.display());
}

/// PostgreSQL processes working under `dir` that are stopped (SIGSTOP, state `T`).
fn stopped_postgres_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let proc_dir = entry.path();
        let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let stopped = rest.split_whitespace().next() == Some("T");
        let in_dir = std::fs::read_link(proc_dir.join("cwd")).is_ok_and(|c| c.starts_with(dir));
        if stopped && in_dir && head.ends_with("(postgres") {
            let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

#[test]
fn an_instance_restore_killed_while_its_startup_process_is_stopped_is_cleaned_up_at_start() {
    let Some(mut lab) = Lab::start("integrity_promote_killed", Some(1)) else {
        return;
    };
    let (t, at_t) = backup_then_a_time(&lab);

    // Killed while it promotes, between stopping the startup process and resuming it.
    lab.d
        .wv
        .server
        .restart_with_fault(Some("instance-promote-frozen"));
    let r = lab.try_restore_instance(&["--time", &t.utc]);
    assert!(!r.success(), "{}", r.describe());
    assert!(lab.d.wv.server.wait_exit(Duration::from_secs(60)));
    let stopped = stopped_postgres_under(lab.td().path());
    assert!(
        stopped.iter().any(|c| c.contains("startup")),
        "the fault left no stopped startup process: {stopped:?}"
    );

    lab.d.wv.server.restart_with_fault(None);
    assert!(
        lab.restores().is_empty(),
        "a restore interrupted by a crash is still listed: {:?}",
        lab.restores()
    );
    let log = lab.d.wv.server.log_text();
    assert_no_socket_dir_left(&log);
    // Resumed before it was asked to stop, it heeded the fast shutdown.
    assert!(
        !log.contains("fast shutdown failed"),
        "the leftover instance did not stop at the fast shutdown: {log}"
    );
    assert_eq!(
        stopped_postgres_under(lab.td().path()),
        Vec::<String>::new()
    );
    let inst = lab.restore_instance(&["--time", &t.utc]);
    assert_eq!(inst.checksums(), at_t);
    lab.drop_restore(&inst.info.id);
}
