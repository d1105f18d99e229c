//! Retention policies (issue 5): set and shown through the real server over mutual TLS;
//! operators are confined to their tenant, agents may not touch policies, and policies
//! survive a catalog rebuild.

use serde_json::Value;
use walvault_tests::harness::{e2e_ready, Storage, TestDir, Walvault, NOT_ALLOWED};

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn policies_per_tenant_and_cluster_and_who_may_touch_them() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("policy");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let mut wv = Walvault::start(&td, &storage);
    wv.server.allow_errors("may not");
    wv.tenant_create("acme", None);
    wv.tenant_create("globex", Some("1G"));
    wv.cluster_create("acme/db1");
    wv.cluster_create("globex/db1");
    let acme = wv.operator("acme", None);
    let globex = wv.operator("globex", None);
    let agent = wv.agent("acme/db1").as_user(None);

    // The tenant's policy, then a cluster override on top of it.
    let t = json(&acme.ok(&[
        "policy", "set", "--tenant", "acme", "--window", "14", "--daily", "5", "--json",
    ]));
    assert_eq!(t["tenant_policy"]["recovery_window_days"], 14, "{t}");
    assert_eq!(t["tenant_policy"]["keep_daily"], 5, "{t}");
    let c = json(&acme.ok(&[
        "--cluster",
        "acme/db1",
        "policy",
        "set",
        "--window",
        "none",
        "--min-backups",
        "5",
        "--rollforward-minutes",
        "15",
        "--json",
    ]));
    assert_eq!(c["effective"]["rollforward_minutes"], 15, "{c}");
    assert_eq!(c["effective"]["rollforward_mib"], Value::Null, "{c}");
    assert_eq!(c["effective"]["recovery_window_days"], Value::Null, "{c}");
    assert_eq!(c["effective"]["keep_daily"], 5, "{c}");
    assert_eq!(c["effective"]["min_backups"], 5, "{c}");
    assert_eq!(c["cluster_override"]["no_recovery_window"], true, "{c}");

    // Another tenant's operator can neither read nor change it; an agent touches no policy.
    for args in [
        vec!["policy", "show", "--tenant", "acme"],
        vec!["policy", "set", "--tenant", "acme", "--window", "1"],
        vec!["--cluster", "acme/db1", "policy", "show"],
        vec!["--cluster", "acme/db1", "policy", "set", "--reset"],
    ] {
        globex.run(&args).assert_refused(NOT_ALLOWED);
        agent.run(&args).assert_refused(NOT_ALLOWED);
    }
    let after = json(&acme.ok(&["--cluster", "acme/db1", "policy", "show", "--json"]));
    assert_eq!(after, c, "a refused change changed the policy");
    // globex's own, with its quota; the admin sees everything.
    let g = json(&globex.ok(&["policy", "show", "--tenant", "globex", "--json"]));
    assert_eq!(g["quota_bytes"], 1u64 << 30, "{g}");
    wv.admin.ok(&["policy", "show", "--tenant", "acme"]);

    // Bad input is refused with the reason and changes nothing.
    let e = acme
        .run(&["policy", "set", "--tenant", "acme", "--window", "0"])
        .assert_refused(&["--window"]);
    assert!(e.contains("days"), "{e}");
    let e = acme
        .run(&[
            "policy",
            "set",
            "--tenant",
            "acme",
            "--rollforward-minutes",
            "20000",
        ])
        .assert_refused(&["roll forward every 20000 minutes"]);
    assert!(e.contains("at most 10080"), "{e}");
    acme.run(&["policy", "show"]).assert_refused(&["--tenant"]);
    acme.run(&["policy", "show", "--tenant", "nobody"])
        .assert_refused(NOT_ALLOWED);

    // Both survive a catalog rebuild (they are kept on the datasets too).
    wv.server.stop();
    wv.server.catalog_rebuild();
    wv.server.restart();
    let again = json(&acme.ok(&["--cluster", "acme/db1", "policy", "show", "--json"]));
    assert_eq!(again, c, "the policy changed across a catalog rebuild");

    // A reset inherits the tenant's policy again.
    let r = json(&acme.ok(&[
        "--cluster",
        "acme/db1",
        "policy",
        "set",
        "--reset",
        "--json",
    ]));
    assert_eq!(r["effective"]["recovery_window_days"], 14, "{r}");
}
