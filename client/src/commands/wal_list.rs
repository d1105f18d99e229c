//! `walvault wal-list`: what the archive holds for a cluster.

use walvault_proto::{pb, ClusterId};

use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;
use crate::output::human_bytes;

pub async fn run(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    json: bool,
) -> Result<(), ClientError> {
    let cluster = super::cluster_ref(config, cluster);
    let context = format!("list the WAL archive of {}", super::describe(&cluster));
    let mut client = pb::archive_client::ArchiveClient::new(connect::channel(config).await?);
    let files = client
        .list_wal(pb::ListWalRequest { cluster })
        .await
        .map_err(ClientError::server(context))?
        .into_inner()
        .files;
    if json {
        let rows: Vec<_> = files
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name,
                    "size": f.size,
                    "stored_size": f.stored_size,
                    "blake3": hex::encode(&f.blake3),
                    "archived_at_unix": f.archived_at_unix,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<40} {:>10} {:>10} {:>6}",
        "NAME", "SIZE", "STORED", "RATIO"
    );
    let (mut size, mut stored) = (0u64, 0u64);
    for f in &files {
        size += f.size;
        stored += f.stored_size;
        println!(
            "{:<40} {:>10} {:>10} {:>5.1}x",
            f.name,
            human_bytes(f.size),
            human_bytes(f.stored_size),
            f.size as f64 / f.stored_size.max(1) as f64
        );
    }
    println!(
        "{} files, {} of WAL stored in {}",
        files.len(),
        human_bytes(size),
        human_bytes(stored)
    );
    Ok(())
}
