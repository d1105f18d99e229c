//! `walvault backup` and `walvault backups`: send a base backup, list a cluster's backups.

use walvault_proto::{pb, ClusterId, Lsn};

use crate::backup::{self, Options};
use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;
use crate::output::{human_bytes, utc_time};

pub async fn run(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    opts: Options,
    json: bool,
) -> Result<(), ClientError> {
    let info = backup::run(config, cluster, opts).await?;
    if json {
        crate::outln!("{}", to_json(&info));
    } else {
        crate::outln!(
            "backup {} ({}) complete: read {} in {:.1} s, sent {}, wrote {} ({} of {} files changed, {} deleted); WAL {} to {} on timeline {}",
            info.id,
            info.kind,
            human_bytes(info.bytes_read),
            info.duration_ms as f64 / 1000.0,
            human_bytes(info.bytes_sent),
            human_bytes(info.bytes_written),
            info.files_changed,
            info.files,
            info.files_deleted,
            Lsn(info.start_lsn),
            Lsn(info.stop_lsn),
            info.timeline,
        );
    }
    Ok(())
}

pub async fn list(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    json: bool,
) -> Result<(), ClientError> {
    let cluster = super::cluster_ref(config, cluster);
    let context = format!("list the backups of {}", super::describe(&cluster));
    let mut client = pb::backup_client::BackupClient::new(connect::channel(config).await?);
    let backups = client
        .list_backups(pb::ListBackupsRequest { cluster })
        .await
        .map_err(ClientError::server(context))?
        .into_inner()
        .backups;
    if json {
        let rows: Vec<_> = backups.iter().map(to_json).collect();
        crate::outln!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    crate::outln!(
        "{:<21} {:<11} {:<9} {:<9} {:<23} {:>12} {:>12} {:>3} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "ID",
        "KIND",
        "STATE",
        "CHECK",
        "STARTED",
        "START LSN",
        "STOP LSN",
        "TL",
        "TIME",
        "READ",
        "SENT",
        "WRITTEN",
        "SNAPSHOT"
    );
    for b in &backups {
        crate::outln!(
            "{:<21} {:<11} {:<9} {:<9} {:<23} {:>12} {:>12} {:>3} {:>7.1}s {:>10} {:>10} {:>10} {:>10}",
            b.id,
            b.kind,
            b.state,
            if b.state == "running" {
                "-"
            } else {
                b.verification.as_str()
            },
            utc_time(b.start_unix),
            Lsn(b.start_lsn).to_string(),
            if b.state == "running" {
                "-".to_owned()
            } else {
                Lsn(b.stop_lsn).to_string()
            },
            b.timeline,
            b.duration_ms as f64 / 1000.0,
            human_bytes(b.bytes_read),
            human_bytes(b.bytes_sent),
            human_bytes(b.bytes_written),
            human_bytes(b.snapshot_bytes),
        );
    }
    crate::outln!("{} backups", backups.len());
    for b in backups.iter().filter(|b| b.verification == "failed") {
        let why = b
            .receipt
            .as_ref()
            .map(|r| r.errors.join("; "))
            .unwrap_or_default();
        crate::outln!("{} FAILED its verification: {why}", b.id);
    }
    Ok(())
}

fn to_json(b: &pb::BackupInfo) -> serde_json::Value {
    serde_json::json!({
        "id": b.id,
        "kind": b.kind,
        "state": b.state,
        "label": b.label,
        "host": b.host,
        "start_lsn": Lsn(b.start_lsn).to_string(),
        "stop_lsn": Lsn(b.stop_lsn).to_string(),
        "timeline": b.timeline,
        "start_unix": b.start_unix,
        "stop_unix": b.stop_unix,
        "bytes_read": b.bytes_read,
        "bytes_sent": b.bytes_sent,
        "bytes_written": b.bytes_written,
        "blocks_written": b.blocks_written,
        "files": b.files,
        "files_changed": b.files_changed,
        "files_deleted": b.files_deleted,
        "duration_ms": b.duration_ms,
        "snapshot_bytes": b.snapshot_bytes,
        "base": (!b.base.is_empty()).then_some(&b.base),
        "verification": b.verification,
        "receipt": b.receipt.as_ref().map(|r| serde_json::json!({
            "verified": r.verified,
            "checked_unix": r.checked_unix,
            "checks": r.checks,
            "first_query_ms": r.first_query_ms,
            "duration_ms": r.duration_ms,
            "tables": r.tables,
            "indexes": r.indexes,
            "errors": r.errors,
        })),
    })
}
