//! `walvault wal-list`: what the archive holds for a cluster: every file, then per timeline
//! the stretches it holds without a break and every hole (missing, damaged or pruned).

use serde_json::{json, Value};
use walvault_proto::{pb, ClusterId, Lsn};

use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;
use crate::output::{human_bytes, utc_time};

pub async fn run(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    json: bool,
) -> Result<(), ClientError> {
    let cluster = super::cluster_ref(config, cluster);
    let context = format!("list the WAL archive of {}", super::describe(&cluster));
    let mut client = pb::archive_client::ArchiveClient::new(connect::channel(config).await?);
    let listing = client
        .list_wal(pb::ListWalRequest { cluster })
        .await
        .map_err(ClientError::server(context))?
        .into_inner();
    if json {
        let files: Vec<_> = listing
            .files
            .iter()
            .map(|f| {
                json!({
                    "name": f.name,
                    "size": f.size,
                    "stored_size": f.stored_size,
                    "blake3": hex::encode(&f.blake3),
                    "archived_at_unix": f.archived_at_unix,
                })
            })
            .collect();
        let timelines: Vec<_> = listing.timelines.iter().map(timeline_json).collect();
        crate::outln!("{}", json!({ "files": files, "timelines": timelines }));
        return Ok(());
    }
    crate::outln!(
        "{:<40} {:>10} {:>10} {:>6}  {:<23}",
        "NAME",
        "SIZE",
        "STORED",
        "RATIO",
        "ARCHIVED"
    );
    let (mut size, mut stored) = (0u64, 0u64);
    for f in &listing.files {
        size += f.size;
        stored += f.stored_size;
        crate::outln!(
            "{:<40} {:>10} {:>10} {:>5.1}x  {:<23}",
            f.name,
            human_bytes(f.size),
            human_bytes(f.stored_size),
            f.size as f64 / f.stored_size.max(1) as f64,
            utc_time(f.archived_at_unix),
        );
    }
    crate::outln!(
        "{} files, {} of WAL stored in {}",
        listing.files.len(),
        human_bytes(size),
        human_bytes(stored)
    );
    for t in &listing.timelines {
        print_timeline(t);
    }
    Ok(())
}

fn print_timeline(t: &pb::TimelineLedger) {
    let holes = t.holes.iter().filter(|h| h.cause != "pruned").count();
    crate::outln!(
        "timeline {}: {} stretches, {}",
        t.timeline,
        t.stretches.len(),
        match holes {
            0 => "no hole".to_owned(),
            1 => "1 HOLE".to_owned(),
            n => format!("{n} HOLES"),
        }
    );
    // Stretches and holes in the order of the history.
    let mut rows: Vec<(&str, String)> = Vec::new();
    for s in &t.stretches {
        rows.push((
            &s.first,
            format!("  {} … {} ({} segments)", s.first, s.last, s.segments),
        ));
    }
    for h in &t.holes {
        rows.push((&h.first, format!("  {}", hole_line(h))));
    }
    rows.sort_by(|a, b| a.0[8..].cmp(&b.0[8..]));
    for (_, line) in rows {
        crate::outln!("{line}");
    }
}

/// One hole on one line: what, where, and what to do.
pub fn hole_line(h: &pb::WalHole) -> String {
    format!(
        "{} {} … {} ({} segments, after LSN {}): {}",
        h.cause.to_uppercase(),
        h.first,
        h.last,
        h.segments,
        Lsn(h.start_lsn),
        h.message
    )
}

pub fn hole_json(h: &pb::WalHole) -> Value {
    json!({
        "history": h.history,
        "first": h.first,
        "last": h.last,
        "segments": h.segments,
        "cause": h.cause,
        "detail": h.detail,
        "start_lsn": Lsn(h.start_lsn).to_string(),
        "message": h.message,
    })
}

fn timeline_json(t: &pb::TimelineLedger) -> Value {
    json!({
        "timeline": t.timeline,
        "stretches": t.stretches.iter().map(|s| json!({
            "first": s.first,
            "last": s.last,
            "segments": s.segments,
        })).collect::<Vec<_>>(),
        "holes": t.holes.iter().map(hole_json).collect::<Vec<_>>(),
    })
}
