//! The catalog is only an index of the storage: deleted, `catalog rebuild` restores it exactly.

use std::time::Duration;

use walvault_tests::harness::{
    e2e_ready,
    wal::{archive_conf, wal_list},
    Pg, Storage, TestDir, Walvault,
};

#[test]
fn catalog_rebuild_restores_the_same_catalog() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("rebuild");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = Walvault::start(&td, &storage);
    wv.tenant_create("acme", Some("1G"));
    wv.tenant_create("globex", None);
    // A cluster with no WAL yet must survive the rebuild too.
    for c in ["acme/db1", "acme/empty", "globex/orders"] {
        wv.cluster_create(c);
    }
    let mut pgs = Vec::new();
    let mut names = vec![
        "acme/db1".to_owned(),
        "acme/empty".into(),
        "globex/orders".into(),
    ];
    for (name, cluster) in [("acme", "acme/db1"), ("globex", "globex/orders")] {
        let agent = wv.agent(cluster);
        let mut pg = Pg::init(&td, name, &archive_conf(&agent));
        pg.start();
        pg.pgbench(&["-i", "-s", "1", "-q"]);
        let mut last = String::new();
        for _ in 0..3 {
            pg.pgbench(&["-n", "-t", "50"]);
            last = pg.switch_wal();
        }
        pg.wait_archived(&last, Duration::from_secs(300));
        pgs.push(pg);
        names.push(last);
    }
    // Nothing may be archiving while the server is down.
    for pg in &mut pgs {
        pg.stop();
    }
    let listed_before = wal_list(&wv.admin, Some("globex/orders"));
    assert!(listed_before.len() >= 3, "{listed_before:?}");

    wv.server.stop();
    let before = wv.server.catalog_dump();
    let catalog = td.join("catalog");
    assert!(
        catalog.exists(),
        "the catalog is not where server.toml says"
    );
    std::fs::remove_dir_all(&catalog).expect("delete the catalog");
    wv.server.catalog_rebuild();
    let after = wv.server.catalog_dump();
    if before != after {
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
        std::fs::write(td.join("catalog-before.json"), pretty(&before)).expect("write");
        std::fs::write(td.join("catalog-after.json"), pretty(&after)).expect("write");
        panic!(
            "the rebuilt catalog differs: compare {} and {}",
            td.join("catalog-before.json").display(),
            td.join("catalog-after.json").display()
        );
    }
    // Equal but empty would prove nothing: the dump must hold what was archived.
    let text = before.to_string();
    for needle in &names {
        assert!(
            text.contains(needle.as_str()),
            "the catalog dump lacks {needle}: {before}"
        );
    }

    // And the server serves from the rebuilt catalog.
    wv.server.restart();
    assert_eq!(wal_list(&wv.admin, Some("globex/orders")), listed_before);
}
