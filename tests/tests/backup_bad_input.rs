//! Base backups that must be refused: of another database system than the archive's, a
//! second one of a cluster while one runs, with an agent certificate of another cluster, and
//! blocks whose blake3 does not match their data (sent by a raw gRPC client, since the real
//! client never does that). Each refusal leaves no snapshot and no listed backup, and a
//! normal backup works afterwards.

use std::process::Stdio;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use walvault_proto::pb::{self, backup_request::Part as Req, backup_response::Part as Resp};
use walvault_tests::harness::{
    backup::{
        backup_args, backup_ok, list_backups, parse_info, run_backup, Deployment, Target, BLOCK,
    },
    wait_until, Client, Pg,
};

/// Words any reasonable refusal of an identity acting outside its rights contains.
use walvault_tests::harness::NOT_ALLOWED;

/// Nothing claims to be a backup: no snapshot under `db`, nothing listed.
fn assert_no_backup(d: &Deployment, agent: &Client) {
    wait_until(
        "the server to list no backup",
        Duration::from_secs(30),
        || list_backups(agent, None).is_empty().then_some(()),
    );
    let snaps = d.snapshots();
    assert!(snaps.is_empty(), "snapshots left: {snaps:?}");
}

/// Makes the primary archive a segment, which binds the cluster to its system identifier.
fn archive_one_segment(pg: &Pg) {
    pg.psql("CREATE TABLE bound (x int); INSERT INTO bound VALUES (1)");
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, Duration::from_secs(120));
}

#[test]
fn backup_of_another_database_system_is_refused() {
    let Some(mut d) = Deployment::start("backup_other_system", None) else {
        return;
    };
    d.wv.server.allow_errors("system identifier");
    archive_one_segment(&d.primary);
    let mut stranger = Pg::init(&d.td, "stranger", &[]);
    stranger.start();
    stranger.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) x");

    let err = run_backup(&d.agent, &stranger, &[]).assert_refused(&["system identifier"]);
    let theirs = stranger.psql("SELECT system_identifier FROM pg_control_system()");
    eprintln!("refused: {err} (stranger's system identifier {theirs})");
    assert_no_backup(&d, &d.agent);

    // The cluster's own database system still backs up.
    let info = backup_ok(&d.agent, &d.primary, &[]);
    assert_eq!(info.state, "complete");
    assert_eq!(list_backups(&d.agent, None).len(), 1);
}

#[test]
fn second_concurrent_backup_is_refused_naming_the_first() {
    let Some(mut d) = Deployment::start("backup_concurrent", Some(3)) else {
        return;
    };
    d.wv.server.allow_errors("already");
    d.wv.server.allow_errors("running");
    let args = backup_args(&d.primary, &["--max-rate", "2M", "--quiet"]);
    let first = d
        .agent
        .direct_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the first backup");
    struct KillOnDrop(Option<std::process::Child>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(c) = &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut first = KillOnDrop(Some(first));
    let running = wait_until(
        "the first backup to be listed as running",
        Duration::from_secs(60),
        || {
            list_backups(&d.agent, None)
                .into_iter()
                .find(|b| b.state == "running")
        },
    );
    let err = run_backup(&d.agent, &d.primary, &[]).assert_refused(&[running.id.as_str()]);
    eprintln!("second backup refused: {err}");
    let still = list_backups(&d.agent, None);
    assert!(
        still.len() == 1 && still[0].id == running.id && still[0].state == "running",
        "the refused backup disturbed the running one: {still:?}"
    );

    let out = first
        .0
        .take()
        .expect("child")
        .wait_with_output()
        .expect("wait for the first backup");
    assert!(
        out.status.success(),
        "the first backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = parse_info(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(info.id, running.id);
    assert_eq!(info.state, "complete");
    let listed = list_backups(&d.agent, None);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, running.id);
}

#[test]
fn agent_of_another_cluster_cannot_back_up() {
    let Some(mut d) = Deployment::start("backup_confined", None) else {
        return;
    };
    d.wv.server.allow_errors("may not");
    d.wv.tenant_create("globex", None);
    d.wv.cluster_create("acme/db2");
    d.wv.cluster_create("globex/db1");
    let db2 = d.wv.agent("acme/db2");
    archive_one_segment(&d.primary);

    let with_cluster = |client: &Client, cluster: &str| {
        let mut args = vec!["--cluster".to_owned(), cluster.to_owned()];
        args.extend(backup_args(&d.primary, &[]));
        let r = client.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let err = r.assert_refused(NOT_ALLOWED);
        eprintln!("backup for {cluster} refused: {err}");
        let r = client.run(&["--cluster", cluster, "backups", "--json"]);
        let err = r.assert_refused(NOT_ALLOWED);
        eprintln!("backups of {cluster} refused: {err}");
    };
    with_cluster(&d.agent, "acme/db2");
    with_cluster(&d.agent, "globex/db1");
    with_cluster(&db2, "acme/db1");

    assert_no_backup(&d, &d.agent);
    assert!(list_backups(&db2, None).is_empty());
    for c in ["acme/db2", "globex/db1"] {
        let snaps = d.storage.db_snapshots(d.td.log(), c);
        assert!(snaps.is_empty(), "snapshots of {c}: {snaps:?}");
    }
    let info = backup_ok(&d.agent, &d.primary, &[]);
    assert_eq!(info.state, "complete");
}

/// A raw Backup.RunBackup stream with the agent's certificate.
struct RawBackup {
    tx: tokio::sync::mpsc::Sender<pb::BackupRequest>,
    rx: tonic::Streaming<pb::BackupResponse>,
    id: String,
    block_size: u32,
}

const STEP: Duration = Duration::from_secs(60);

async fn next(
    rx: &mut tonic::Streaming<pb::BackupResponse>,
) -> Result<Option<pb::BackupResponse>, tonic::Status> {
    tokio::time::timeout(STEP, rx.message())
        .await
        .expect("the server answers in time")
}

impl RawBackup {
    /// Sends begin, reads accepted and the whole manifest, sends started.
    async fn begin(agent: &Client, system_identifier: u64, start_lsn: u64) -> Self {
        let config = walvault::config::ClientConfig::load(agent.config()).expect("load config");
        let channel = walvault::connect::channel(&config)
            .await
            .expect("mTLS channel to the server");
        let mut client = pb::backup_client::BackupClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let send = |part| pb::BackupRequest { part: Some(part) };
        tx.send(send(Req::Begin(pb::BeginBackup {
            cluster: Some(pb::ClusterRef {
                tenant: "acme".into(),
                cluster: "db1".into(),
            }),
            system_identifier,
            pg_major: 15,
            wal_segment_size: 16 << 20,
            label: "raw".into(),
            tablespaces: Vec::new(),
            host: "raw-test".into(),
        })))
        .await
        .expect("queue begin");
        let mut rx = tokio::time::timeout(STEP, client.run_backup(ReceiverStream::new(rx)))
            .await
            .expect("RunBackup answers in time")
            .expect("RunBackup is accepted")
            .into_inner();
        let (id, block_size) = match next(&mut rx).await {
            Ok(Some(pb::BackupResponse {
                part: Some(Resp::Accepted(a)),
            })) => (a.backup_id, a.block_size),
            other => panic!("expected `accepted` first, got {other:?}"),
        };
        let mut entries = 0u64;
        loop {
            match next(&mut rx).await {
                Ok(Some(pb::BackupResponse {
                    part: Some(Resp::Entry(_)),
                })) => entries += 1,
                Ok(Some(pb::BackupResponse {
                    part: Some(Resp::ManifestEnd(_)),
                })) => break,
                other => panic!("expected manifest entries then manifest_end, got {other:?}"),
            }
        }
        eprintln!("raw backup {id} accepted (block size {block_size}, {entries} manifest entries)");
        tx.send(send(Req::Started(pb::BackupStarted {
            start_lsn,
            timeline: 1,
            start_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs() as i64,
        })))
        .await
        .expect("queue started");
        Self {
            tx,
            rx,
            id,
            block_size,
        }
    }

    async fn send(&self, part: Req) {
        // A send fails once the server closed the stream; the response tells why.
        let _ = self.tx.send(pb::BackupRequest { part: Some(part) }).await;
    }

    /// Sends one file of one block of `data`, announced with hash `blake3`.
    async fn send_file(&self, path: &str, data: &[u8], blake3: [u8; 32], end: bool) {
        self.send(Req::File(pb::FileHeader {
            area: "data".into(),
            path: path.into(),
            mode: 0o600,
            directory: false,
        }))
        .await;
        self.send(Req::Blocks(pb::FileBlocks {
            blocks: vec![pb::Block {
                index: 0,
                blake3: blake3.to_vec(),
                compression: pb::Compression::None as i32,
                data: data.to_vec(),
            }],
        }))
        .await;
        if end {
            self.send(Req::FileEnd(pb::FileEnd {
                size: data.len() as u64,
            }))
            .await;
        }
    }

    /// Reads the response stream to its end: `Err(status)` or `Ok(finished)` if it says so.
    async fn outcome(mut self, close: bool) -> Result<Option<pb::BackupInfo>, tonic::Status> {
        if close {
            drop(self.tx);
        }
        match tokio::time::timeout(STEP, self.rx.message()).await {
            Err(_) => panic!("the server neither answered nor closed the stream in time"),
            Ok(Err(status)) => Err(status),
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some(pb::BackupResponse {
                part: Some(Resp::Finished(info)),
            }))) => Ok(Some(info)),
            Ok(Ok(Some(other))) => panic!("unexpected message {other:?}"),
        }
    }
}

#[test]
fn block_with_wrong_blake3_is_refused_and_leaves_no_backup() {
    let Some(mut d) = Deployment::start("backup_bad_block", None) else {
        return;
    };
    d.wv.server.allow_errors("blake3");
    d.wv.server.allow_errors("finish");
    archive_one_segment(&d.primary);
    let sysid = d.primary.system_identifier();
    let lsn = d.primary.current_lsn();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");

    // A block whose hash is that of other bytes.
    let data = vec![0x5a_u8; BLOCK];
    let wrong = *blake3::hash(b"other bytes").as_bytes();
    let (id, outcome) = rt.block_on(async {
        let raw = RawBackup::begin(&d.agent, sysid, lsn.0).await;
        assert_eq!(raw.block_size as usize, BLOCK);
        let id = raw.id.clone();
        raw.send_file("base/1/99999", &data, wrong, true).await;
        (id, raw.outcome(false).await)
    });
    let status = match outcome {
        Err(s) => s,
        Ok(info) => panic!("a block with a wrong blake3 was not refused: {info:?}"),
    };
    eprintln!("raw backup {id} with a bad block ended with {status:?}");
    let msg = status.message().to_lowercase();
    assert!(
        msg.contains("blake3") && msg.contains("base/1/99999"),
        "the error should name the blake3 mismatch and the file: {status:?}"
    );
    assert_no_backup(&d, &d.agent);

    // A client that sends good blocks but closes its stream without `finish`.
    let outcome = rt.block_on(async {
        let raw = RawBackup::begin(&d.agent, sysid, lsn.0).await;
        raw.send_file("base/1/99998", &data, *blake3::hash(&data).as_bytes(), true)
            .await;
        raw.outcome(true).await
    });
    eprintln!("raw backup without finish ended with {outcome:?}");
    assert!(
        !matches!(outcome, Ok(Some(_))),
        "a backup without `finish` was reported finished: {outcome:?}"
    );
    assert_no_backup(&d, &d.agent);

    // A normal backup of the cluster works, and holds none of the raw clients' files.
    let info = backup_ok(&d.agent, &d.primary, &[]);
    assert_eq!(info.state, "complete");
    assert_eq!(list_backups(&d.agent, None).len(), 1);
    let clone = d.clone_backup(&info.id, "check");
    for f in ["base/1/99999", "base/1/99998"] {
        assert!(
            !clone.data.join(f).exists(),
            "backup {} holds {f}, which only a refused backup sent",
            info.id
        );
    }
}

/// blake3 of every file under `dir`, by relative path.
fn tree_hashes(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let e = e.expect("entry");
            let p = e.path();
            let t = e.file_type().expect("type");
            if t.is_dir() {
                walk(root, &p, out);
            } else if t.is_file() {
                let bytes =
                    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                let rel = p.strip_prefix(root).expect("inside").display().to_string();
                out.insert(rel, blake3::hash(&bytes).to_hex().to_string());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A raw client names the storage's own files (`.zfs`, `.walvault-*`) as backup files and in
/// deletes: every one is refused, naming the reason, and the earlier backup is unchanged.
fn reserved_names_are_refused(dir_backend: bool) {
    let name = if dir_backend {
        "reserved_names_dir"
    } else {
        "reserved_names"
    };
    let Some(mut d) = Deployment::start_on(name, None, "", dir_backend) else {
        return;
    };
    d.wv.server.allow_errors("keeps for itself");
    archive_one_segment(&d.primary);
    let first = backup_ok(&d.agent, &d.primary, &[]);
    let before = tree_hashes(&d.clone_backup(&first.id, "before").data);
    assert!(before.contains_key("PG_VERSION"), "{before:?}");
    let sysid = d.primary.system_identifier();
    let lsn = d.primary.current_lsn();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let data = b"99\n".to_vec();
    let own = [
        format!(".walvault-snapshots/{}/data/PG_VERSION", first.id),
        ".walvault-dataset.json".to_owned(),
        format!(".zfs/snapshot/{}/PG_VERSION", first.id),
        ".zfs".to_owned(),
    ];
    for path in &own {
        for delete in [false, true] {
            let outcome = rt.block_on(async {
                let raw = RawBackup::begin(&d.agent, sysid, lsn.0).await;
                if delete {
                    raw.send(Req::Delete(pb::DeleteFile {
                        area: "data".into(),
                        path: path.clone(),
                    }))
                    .await;
                } else {
                    raw.send_file(path, &data, *blake3::hash(&data).as_bytes(), true)
                        .await;
                }
                raw.outcome(false).await
            });
            let status = match outcome {
                Err(s) => s,
                Ok(info) => panic!("{path} (delete: {delete}) was not refused: {info:?}"),
            };
            assert!(
                status.message().contains("keeps for itself"),
                "{path}: the refusal should say why: {status:?}"
            );
        }
    }
    let listed = list_backups(&d.agent, None);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        tree_hashes(&d.clone_backup(&first.id, "after").data),
        before,
        "backup {} changed",
        first.id
    );
    let snaps = d.snapshots();
    assert!(
        snaps.iter().any(|s| s.ends_with(&first.id)),
        "the backup's snapshot is gone: {snaps:?}"
    );
}

#[test]
fn reserved_names_are_refused_on_zfs() {
    reserved_names_are_refused(false);
}

#[test]
fn reserved_names_are_refused_on_the_dir_backend() {
    reserved_names_are_refused(true);
}

/// The tenant's bytes in use, as the server reports them.
fn tenant_used(d: &Deployment, tenant: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(d.wv.admin.ok(&["tenant", "list", "--json"]).trim()).expect("JSON");
    v.as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == tenant))
        .and_then(|t| t["used_bytes"].as_u64())
        .unwrap_or_else(|| panic!("tenant {tenant} not in {v}"))
}

#[test]
fn a_full_quota_fails_the_backup_until_it_is_raised() {
    let Some(mut d) = Deployment::start("backup_quota", Some(3)) else {
        return;
    };
    d.wv.server.allow_errors("quota");
    archive_one_segment(&d.primary);
    // Room for a few MiB more: the backup's blocks (tens of MiB) cannot fit.
    let quota = tenant_used(&d, "acme") + (4 << 20);
    d.wv.admin
        .ok(&["tenant", "set-quota", "acme", &quota.to_string()]);
    let err = run_backup(&d.agent, &d.primary, &[]).assert_refused(&["quota"]);
    eprintln!("refused: {err}");
    assert!(
        err.contains("tenant acme") && err.contains("MiB"),
        "the refusal should name the tenant and its quota: {err}"
    );
    assert_no_backup(&d, &d.agent);

    // A higher quota, and the same backup goes through and restores.
    d.wv.admin.ok(&["tenant", "set-quota", "acme", "2G"]);
    let info = backup_ok(&d.agent, &d.primary, &[]);
    let expected = d.primary.checksums();
    d.restore_point_archived("after-quota");
    let r = d.restore(&info.id, "after", &Target::Name("after-quota".into()));
    assert_eq!(
        r.pg.checksums(),
        expected,
        "the backup taken after the quota was raised differs from the source"
    );
}
