//! The harness alone, without walvault: a pool with a dataset, PostgreSQL 15 as `postgres`,
//! pgbench, checksums, a base backup, and that everything is cleaned up afterwards.

use std::process::Command;

use walvault_tests::harness::{e2e_ready, Pg, TestDir, Zpool};

fn pool_exists(name: &str) -> bool {
    let out = Command::new("zpool")
        .args(["list", "-H", "-o", "name"])
        .output()
        .expect("zpool list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == name)
}

fn postgres_running_on(data_dir: &str) -> bool {
    // Reading the process table only; nothing is killed by name.
    Command::new("pgrep")
        .args(["-u", "postgres", "-f", data_dir])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn harness_pool_postgres_and_cleanup() {
    if !e2e_ready() {
        return;
    }
    let (dir_path, pool_name, data_dirs);
    {
        let td = TestDir::new("harness_smoke");
        dir_path = td.path().to_owned();
        let Some(pool) = Zpool::create(&td) else {
            return;
        };
        pool_name = pool.name().to_owned();
        let mnt = pool.create_dataset("smoke/data");
        std::fs::write(mnt.join("hello"), b"hello").expect("write into the dataset");
        assert!(pool.datasets().contains(&format!("{pool_name}/smoke/data")));

        let mut pg = Pg::init(&td, "primary", &["shared_buffers = '32MB'".to_owned()]);
        pg.start();
        assert_eq!(pg.psql("SHOW server_version_num").get(..2), Some("15"));
        assert_eq!(pg.psql("SELECT current_user"), "postgres");
        pg.pgbench(&["-i", "-s", "1", "-q"]);
        pg.pgbench(&["-n", "-t", "50"]);
        let sums = pg.checksums();
        assert_eq!(
            sums.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "public.pgbench_accounts",
                "public.pgbench_branches",
                "public.pgbench_history",
                "public.pgbench_tellers"
            ]
        );
        assert!(
            sums["public.pgbench_accounts"].starts_with("100000 rows"),
            "{sums:?}"
        );
        assert_eq!(sums, pg.checksums(), "checksums are deterministic");

        // A base backup started as a second instance holds the same rows.
        let mut copy = Pg::basebackup(&td, "copy", &pg, &[], false);
        pg.switch_wal();
        // -X none left the copy without WAL: give it the primary's for this smoke test.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cp -p {0}/pg_wal/0* {1}/pg_wal/",
                pg.data_dir().display(),
                copy.data_dir().display()
            ))
            .status()
            .expect("copy WAL");
        assert!(status.success());
        copy.start();
        assert_eq!(copy.checksums(), sums);

        let (_, _, failed) = pg.archiver();
        assert_eq!(failed, 0);
        data_dirs = [pg.data_dir(), copy.data_dir()].map(|p| p.to_string_lossy().into_owned());
        assert!(data_dirs.iter().all(|d| postgres_running_on(d)));
    }
    assert!(!pool_exists(&pool_name), "pool {pool_name} is left behind");
    for d in &data_dirs {
        assert!(!postgres_running_on(d), "PostgreSQL of {d} still runs");
    }
    assert!(!dir_path.exists(), "{} is left behind", dir_path.display());
}
