//! One tenant cannot hurt the others (issue 10). A hostile client holding the valid agent
//! certificate of `acme/db1` (a compromised database host), written here against the gRPC
//! contract, repeats what was tried on the server: stalled and oversized pushes, a backup that
//! stops talking, one that announces hundreds of tablespaces or a block far past any file's
//! end, one that leaves a sparse gigabyte file behind, restores that never read, a delta restore's manifest of a gigabyte of hashes. Each is
//! refused or cut off after the idle limit; what it held (leases, clones, threads) is
//! released; the server's peak RSS, read from /proc, stays under the bound the README states;
//! and throughout, another tenant's `walvault wal-push` loop keeps succeeding, its latency
//! recorded with and without the hostile load.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::wrappers::ReceiverStream;
use walvault_proto::pb::{self, backup_request::Part as BackupReq, push_wal_request};
use walvault_tests::harness::bench::rss_kib;
use walvault_tests::harness::{
    backup::{backup_ok, list_backups, Deployment},
    restore::{archive_now, restore_ports, restore_section},
    wal::source_segments,
    Client,
};

/// The idle limit of this test's server: short, so that cut-offs are quick to see.
const IDLE_SECS: u64 = 4;
/// The bound of the README: the server's peak RSS over its RSS before the hostile load.
const RSS_BOUND_MIB: u64 = 320;

/// Another tenant's archive_command, one process per segment, timed: every push must succeed.
struct Victim {
    client: Client,
    segments: Vec<PathBuf>,
}

impl Victim {
    /// Pushes the segments in turn, one every `every`, until `stop` (or all are pushed); the
    /// latency of each.
    fn push_all(&self, stop: &AtomicBool, every: Duration) -> Vec<Duration> {
        let mut took = Vec::new();
        for seg in &self.segments {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let due = Instant::now() + every;
            let t = Instant::now();
            let r = self.client.run(&["wal-push", seg.to_str().expect("utf-8")]);
            took.push(t.elapsed());
            assert!(
                r.success(),
                "the other tenant's push failed under the hostile load: {}",
                r.describe()
            );
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        took
    }
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn cluster_ref() -> Option<pb::ClusterRef> {
    Some(pb::ClusterRef {
        tenant: "acme".into(),
        cluster: "db1".into(),
    })
}

async fn channel(agent: &Client) -> tonic::transport::Channel {
    let config = walvault::config::ClientConfig::load(agent.config()).expect("load config");
    walvault::connect::channel(&config)
        .await
        .expect("mTLS channel to the server")
}

/// A push that sends its header and `send` bytes, then nothing: the server's answer.
async fn stalled_push(agent: &Client, name: &str, size: u64, send: usize) -> tonic::Status {
    let mut client = pb::archive_client::ArchiveClient::new(channel(agent).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::PushWalRequest {
        part: Some(push_wal_request::Part::Header(pb::PushWalHeader {
            cluster: cluster_ref(),
            name: name.into(),
            size,
            blake3: vec![7; 32],
            compression: pb::Compression::None as i32,
        })),
    })
    .await
    .expect("queue the header");
    if send > 0 {
        tx.send(pb::PushWalRequest {
            part: Some(push_wal_request::Part::Chunk(vec![0u8; send])),
        })
        .await
        .expect("queue a chunk");
    }
    // `tx` stays open: the stream neither ends nor goes on.
    let r = client.push_wal(ReceiverStream::new(rx)).await;
    drop(tx);
    match r {
        Ok(ok) => panic!("a stalled push of {name} was accepted: {ok:?}"),
        Err(s) => s,
    }
}

#[test]
fn a_hostile_agent_is_refused_or_cut_off_and_the_other_tenants_archive_meanwhile() {
    let extra = format!(
        "[limits]\nidle_timeout_secs = {IDLE_SECS}\n\n{}",
        restore_section(restore_ports(4))
    );
    let Some(mut d) = Deployment::start_with("hostile", Some(1), &extra) else {
        return;
    };
    d.wv.server.allow_errors("time index");
    let first = backup_ok(&d.agent, &d.primary, &[]);
    d.primary.pgbench(&["-n", "-t", "50"]);
    archive_now(&d.primary);
    d.wv.tenant_create("globex", None);
    d.wv.cluster_create("globex/db1");
    let victim = Victim {
        client: d.wv.agent("globex/db1"),
        segments: source_segments(&d.td, "globex-src", 32),
    };
    let pid = d.wv.server.pid().expect("the server runs");
    let sysid = d.primary.system_identifier();

    // Without the hostile load: the other tenant's latency and the server's memory.
    let calm = Victim {
        client: victim.client.clone(),
        segments: victim.segments[..8].to_vec(),
    }
    .push_all(&AtomicBool::new(false), Duration::ZERO);
    let calm = &calm[..];
    let (rss_before, _) = rss_kib(pid);
    let victim = Victim {
        segments: victim.segments[8..].to_vec(),
        ..victim
    };

    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let loaded = std::thread::scope(|scope| {
        let pusher = scope.spawn(|| victim.push_all(&stop, Duration::from_millis(1500)));
        let agent = &d.agent;
        rt.block_on(async {
            // A push declaring more than the cluster's segments can be: refused at once.
            let s = stalled_push(agent, "000000010000000000000099", 1 << 30, 0).await;
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
            assert!(s.message().contains("at most 16777216"), "{s:?}");

            // Ten stalled pushes at once: four (limits.pushes_per_cluster) are taken and cut
            // off after the idle limit, the others refused at once, retryably.
            let t = Instant::now();
            let stalled: Vec<_> = (0..10)
                .map(|i| {
                    let name = format!("0000000100000000000000A{i}");
                    async move { stalled_push(agent, &name, 16 << 20, 1 << 20).await }
                })
                .collect();
            let answers = futures::future::join_all(stalled).await;
            let refused = answers
                .iter()
                .filter(|s| s.code() == tonic::Code::Unavailable)
                .count();
            let cut = answers
                .iter()
                .filter(|s| s.code() == tonic::Code::DeadlineExceeded)
                .count();
            eprintln!(
                "10 stalled pushes: {refused} refused, {cut} cut off after {:.1?}",
                t.elapsed()
            );
            assert_eq!(refused, 6, "{answers:?}");
            assert_eq!(cut, 4, "{answers:?}");
            assert!(answers
                .iter()
                .filter(|s| s.code() == tonic::Code::Unavailable)
                .all(|s| s.message().contains("limits.pushes_per_cluster")));
        });

        // A backup that stops talking is cut off, its lease freed: the next one starts at once.
        rt.block_on(async {
            let mut client = pb::backup_client::BackupClient::new(channel(agent).await);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(begin(sysid, 300)).await.expect("queue begin");
            let s = client
                .run_backup(ReceiverStream::new(rx))
                .await
                .expect_err("300 tablespaces were accepted");
            assert!(s.message().contains("limits.max_tablespaces"), "{s:?}");

            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(begin(sysid, 100)).await.expect("queue begin");
            let mut resp = client
                .run_backup(ReceiverStream::new(rx))
                .await
                .expect("a backup announcing 100 tablespaces begins")
                .into_inner();
            // Read the acceptance and the manifest, then say nothing.
            let t = Instant::now();
            let end = loop {
                match resp.message().await {
                    Ok(Some(_)) => continue,
                    other => break other,
                }
            };
            eprintln!("a silent backup ended after {:.1?}: {end:?}", t.elapsed());
            assert!(
                matches!(&end, Err(s) if s.code() == tonic::Code::DeadlineExceeded),
                "{end:?}"
            );
            drop(tx);
        });
        assert!(
            d.storage
                .tablespace_datasets(d.td.log(), "acme/db1")
                .is_empty(),
            "announced tablespaces got datasets before any file of them was sent"
        );
        let t = Instant::now();
        let next = backup_ok(&d.agent, &d.primary, &[]);
        eprintln!("the next backup ran at once, in {:.1?}", t.elapsed());
        assert_ne!(next.id, first.id);

        // A block far past the largest file a backup may send.
        rt.block_on(async {
            let end = hostile_backup(agent, sysid, "base/1/99999", 1 << 27, None).await;
            assert!(
                matches!(&end, Err(s) if s.message().contains("limits.max_file_bytes")),
                "{end:?}"
            );
        });

        // A 1 GiB file (the largest allowed) of one block at its end, left by a backup that
        // goes away: the next begin reads what was written, not the file's size.
        rt.block_on(async {
            let last = (1 << 30) / 8192 - 1;
            hostile_backup(agent, sysid, "base/1/99998", last, Some(1 << 30)).await
        })
        .expect_err("a file of one block out of 131072 was accepted");
        let t = Instant::now();
        backup_ok(&d.agent, &d.primary, &[]);
        let log = d.wv.server.log_text();
        let hashed: Vec<u64> = log
            .lines()
            .filter(|l| l.contains("re-hashed what an unfinished backup touched"))
            .filter_map(|l| l.split("bytes_hashed=").nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse().ok())
            .collect();
        eprintln!(
            "after a 1 GiB sparse file, the next backup took {:.1?}, its begin re-hashed {hashed:?} bytes",
            t.elapsed()
        );
        assert!(
            hashed.last().is_some_and(|b| *b <= 256 << 10),
            "the begin after an interrupted 1 GiB file re-hashed {hashed:?} bytes"
        );

        // Restores that never read: four (limits.restores_per_cluster) are taken and cut off
        // after the idle limit, with their clones, while their clients still hold on; the
        // rest are refused at once.
        rt.block_on(async {
            let starts: Vec<_> = (0..8)
                .map(|_| tokio::spawn(silent_restore(agent.clone())))
                .collect();
            tokio::time::sleep(Duration::from_secs(IDLE_SECS * 2 + 4)).await;
            let a = agent.clone();
            let listed = tokio::task::spawn_blocking(move || a.ok(&["restores", "--json"]))
                .await
                .expect("list restores");
            assert_eq!(
                listed.trim(),
                "[]",
                "restores that never read still hold clones after the idle limit"
            );
            let mut refused = 0;
            for s in starts {
                if let Err(st) = s.await.expect("a silent restore") {
                    assert_eq!(st.code(), tonic::Code::Unavailable, "{st:?}");
                    assert!(
                        st.message().contains("limits.restores_per_cluster"),
                        "{st:?}"
                    );
                    refused += 1;
                }
            }
            eprintln!("8 restores that never read: {refused} refused, the others cut off");
            assert_eq!(refused, 4);
        });

        // A delta restore's manifest with more hashes than any file may have.
        rt.block_on(async {
            let mut client = pb::restore_client::RestoreClient::new(channel(agent).await);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(dir_start(true)).await.expect("queue start");
            let mut resp = client
                .restore_to_dir(ReceiverStream::new(rx))
                .await
                .expect("accepted")
                .into_inner();
            let _plan = resp.message().await.expect("a plan");
            let t = tokio::spawn(async move {
                // 1 GiB of hashes, a MiB per message, for one file: refused long before.
                for i in 0..1024u64 {
                    let e = pb::ManifestEntry {
                        area: "data".into(),
                        path: "base/1/1259".into(),
                        directory: false,
                        mode: 0o600,
                        size: 1 << 40,
                        first_block: i * 32_768,
                        hashes: vec![0u8; 32 * 32_768],
                    };
                    let m = pb::RestoreDirRequest {
                        part: Some(pb::restore_dir_request::Part::Local(e)),
                    };
                    if tx.send(m).await.is_err() {
                        return i;
                    }
                }
                1024
            });
            let end = loop {
                match resp.message().await {
                    Ok(Some(_)) => continue,
                    other => break other,
                }
            };
            let sent = t.await.expect("the sender");
            eprintln!("a delta manifest of 1 GiB of hashes: refused after {sent} MiB: {end:?}");
            assert!(
                matches!(&end, Err(s) if s.message().contains("more blocks than a file may have")),
                "{end:?}"
            );
        });

        stop.store(true, Ordering::Relaxed);
        pusher.join().expect("the other tenant's pusher")
    });
    let (rss_after, peak) = rss_kib(pid);
    let (p50_calm, p99_calm) = (percentile(calm, 0.5), percentile(calm, 0.99));
    let (p50, p99) = (percentile(&loaded, 0.5), percentile(&loaded, 0.99));
    eprintln!(
        "server RSS: {} MiB before, peak {} MiB, {} MiB after; the other tenant's wal-push: \
         p50 {p50_calm:.0?} / p99 {p99_calm:.0?} calm ({} pushes), p50 {p50:.0?} / p99 {p99:.0?} \
         under the hostile load ({} pushes, all succeeded)",
        rss_before / 1024,
        peak / 1024,
        rss_after / 1024,
        calm.len(),
        loaded.len()
    );
    assert!(
        !loaded.is_empty(),
        "the other tenant pushed nothing meanwhile"
    );
    assert!(
        peak.saturating_sub(rss_before) / 1024 < RSS_BOUND_MIB,
        "the server's peak RSS rose {} MiB over {} MiB",
        peak.saturating_sub(rss_before) / 1024,
        rss_before / 1024
    );
    assert_eq!(list_backups(&d.agent, None).len(), 3);
}

fn begin(system_identifier: u64, tablespaces: u32) -> pb::BackupRequest {
    pb::BackupRequest {
        part: Some(BackupReq::Begin(pb::BeginBackup {
            cluster: cluster_ref(),
            system_identifier,
            pg_major: 15,
            wal_segment_size: 16 << 20,
            label: "hostile\nlabel".into(),
            tablespaces: (16_400..16_400 + tablespaces).collect(),
            host: "hostile".into(),
        })),
    }
}

/// A backup that sends one file holding one block at `index` (and a `file_end` of `size`),
/// then goes away; how the server ended it.
async fn hostile_backup(
    agent: &Client,
    sysid: u64,
    path: &str,
    index: u64,
    size: Option<u64>,
) -> Result<(), tonic::Status> {
    let mut client = pb::backup_client::BackupClient::new(channel(agent).await);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(begin(sysid, 0)).await.expect("queue begin");
    let mut resp = client
        .run_backup(ReceiverStream::new(rx))
        .await
        .expect("begins")
        .into_inner();
    let data = vec![1u8; 8192];
    let mut parts = vec![
        BackupReq::Started(pb::BackupStarted {
            start_lsn: 0x300_0028,
            timeline: 1,
            start_unix: 1,
        }),
        BackupReq::File(pb::FileHeader {
            area: "data".into(),
            path: path.into(),
            mode: 0o600,
            directory: false,
        }),
        BackupReq::Blocks(pb::FileBlocks {
            blocks: vec![pb::Block {
                index,
                blake3: blake3::hash(&data).as_bytes().to_vec(),
                compression: pb::Compression::None as i32,
                data,
            }],
        }),
    ];
    parts.extend(size.map(|size| BackupReq::FileEnd(pb::FileEnd { size })));
    for part in parts {
        // The server may already have refused the stream.
        let _ = tx.send(pb::BackupRequest { part: Some(part) }).await;
    }
    drop(tx);
    loop {
        match resp.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(()),
            Err(s) => return Err(s),
        }
    }
}

fn dir_start(delta: bool) -> pb::RestoreDirRequest {
    pb::RestoreDirRequest {
        part: Some(pb::restore_dir_request::Part::Start(pb::RestoreDirStart {
            request: Some(pb::RestoreRequest {
                cluster: cluster_ref(),
                target: Some(pb::RestoreTarget {
                    kind: Some(pb::restore_target::Kind::Latest(true)),
                }),
                ..Default::default()
            }),
            delta,
            host: "hostile\nhost".into(),
            path: "/nowhere".into(),
        })),
    }
}

/// A directory restore that reads its plan and then nothing for a long while; `Err` if the
/// server refused it outright.
async fn silent_restore(agent: Client) -> Result<(), tonic::Status> {
    let mut client = pb::restore_client::RestoreClient::new(channel(&agent).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(dir_start(false)).await.expect("queue start");
    tx.send(pb::RestoreDirRequest {
        part: Some(pb::restore_dir_request::Part::LocalEnd(pb::LocalEnd {
            entries: 0,
        })),
    })
    .await
    .expect("queue local_end");
    let mut resp = client
        .restore_to_dir(ReceiverStream::new(rx))
        .await?
        .into_inner();
    // The plan, then stop reading for longer than the idle limit.
    resp.message().await?;
    tokio::time::sleep(Duration::from_secs(IDLE_SECS * 4)).await;
    drop(resp);
    drop(tx);
    Ok(())
}
