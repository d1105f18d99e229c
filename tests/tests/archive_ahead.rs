//! `archive_command = 'walvault wal-push %p'` with look-ahead on (`push_ahead`): a backlog
//! built while the server is down drains; every archived segment is byte-identical; the
//! archiver's failures rise only while the server is away; and with the client and the
//! server SIGKILLed at random moments during look-ahead pushes, no segment PostgreSQL was
//! told is archived is missing from the archive.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use walvault_tests::harness::{
    e2e_ready, run,
    wal::{archive_conf, assert_archive_matches},
    Pg, Storage, TestDir, Walvault,
};

/// A small xorshift generator: random enough for kill timings, its seed in the log.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn status(pg: &Pg) -> serde_json::Value {
    let path = pg.wal_dir().join("walvault.spool/status.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the look-ahead status {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

#[test]
fn look_ahead_drains_a_backlog_and_never_acknowledges_early() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("archive_ahead");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = Walvault::start(&td, &storage);
    wv.tenant_create("acme", None);
    wv.cluster_create("acme/db1");
    let agent = wv.agent("acme/db1");
    let mut config = std::fs::read_to_string(agent.config()).expect("agent config");
    // Short retries, so that an outage shows in pg_stat_archiver within seconds.
    config.push_str("push_ahead = 6\npush_parallel = 3\nretry_secs = 2\n");
    std::fs::write(agent.config(), config).expect("write agent config");

    let mut pg = Pg::init(&td, "primary", &archive_conf(&agent));
    pg.start();
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(300));
    let (_, _, failed_healthy) = pg.archiver();
    assert_eq!(
        failed_healthy, 0,
        "failures with the server up: see postgres.log"
    );

    // A backlog while the server is down.
    wv.server.stop();
    for _ in 0..10 {
        pg.pgbench(&["-n", "-t", "50"]);
        pg.switch_wal();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while pg.archiver().2 == 0 {
        assert!(
            Instant::now() < deadline,
            "no archive failure with the server down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let backlog = pg.ready_segments().len();
    assert!(backlog >= 8, "only {backlog} segments waiting");
    // The status is the last call's view; PostgreSQL calls again within a minute.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let down = status(&pg);
        assert!(
            down["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "the status shows no error while the server is down: {down}"
        );
        if down["ready"].as_u64() >= Some(8) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the status never showed the backlog of {backlog}: {down}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    wv.server.restart();
    let (_, _, failed_down) = pg.archiver();
    // PostgreSQL retries by itself within a minute; a new segment wakes it at once.
    let last = pg.switch_wal();
    // Watch the spool as the backlog drains: files pushed ahead wait there for their call.
    let spool = pg.wal_dir().join("walvault.spool");
    let mut most_acks = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while pg.archiver().0.as_str() < last.as_str() {
        assert!(Instant::now() < deadline, "the backlog did not drain");
        let acks = std::fs::read_dir(&spool)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".ack"))
                    .count()
            })
            .unwrap_or(0);
        most_acks = most_acks.max(acks);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        most_acks >= 2,
        "no segment was pushed ahead while {backlog} waited (at most {most_acks} in the spool)"
    );
    let drained = status(&pg);
    assert!(drained["last_error"].is_null(), "{drained}");
    assert!(
        drained["ready"].as_u64() < Some(backlog as u64),
        "the status still shows the backlog: {drained}"
    );

    // Healthy again: more segments, no new failure.
    for _ in 0..8 {
        pg.pgbench(&["-n", "-t", "50"]);
        pg.switch_wal();
    }
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(300));
    let (_, _, failed_after) = pg.archiver();
    assert!(
        failed_after <= failed_down + 1,
        "archive failures rose from {failed_down} to {failed_after} with the server up \
         (one may be the archiver's call that was under way at the restart)"
    );

    // SIGKILL the clients and, now and then, the server while segments pile up.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    td.log()
        .line(&format!("kill timings: xorshift seed {seed}"));
    let mut rng = Rng(seed);
    let pattern = format!("{}.*wal-push", agent.config().display());
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for _ in 0..16 {
                pg.pgbench(&["-n", "-t", "40"]);
                pg.switch_wal();
            }
        });
        let mut kills = 0;
        while !writer.is_finished() {
            std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
            run(
                td.log(),
                std::process::Command::new("pkill").args(["-KILL", "-f", &pattern]),
                Duration::from_secs(10),
            );
            kills += 1;
            if kills % 5 == 0 {
                wv.server.restart();
            }
        }
        writer.join().expect("the pgbench thread");
        td.log().line(&format!("{kills} rounds of kills"));
    });
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(600));

    let root = agent.as_user(None);
    let compared = assert_archive_matches(&td, &pg, &root, &storage.wal_dir("acme/db1"));
    assert!(compared >= 30, "compared only {compared} segments");
    let end = status(&pg);
    assert!(end["last_success_unix"].as_u64().is_some(), "{end}");
}
