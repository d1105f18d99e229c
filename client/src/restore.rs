//! A point-in-time restore written out by this client (`--to dir:PATH`): the server plans and
//! clones, then streams the snapshot's files; we place the areas (PGDATA and tablespaces,
//! remapped as asked), write the blocks, and add what recovery needs.
//!
//! The session: send `start`; read `planned`; check everything we can before writing (the
//! tablespace mappings, the target directories, the settings); with `--delta`, send the
//! manifest of what the directories hold; then apply the server's files on a blocking thread
//! while the stream is read, so that network and disk overlap. Local paths the snapshot does
//! not name are deleted only once the server said `done`: an interrupted restore deletes
//! nothing and can be run again with `--delta`.

pub mod local;
pub mod preflight;
pub mod recovery;
pub mod tablespace;
pub mod target;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use walvault_proto::pb::{self, restore_dir_request, restore_dir_response};
use walvault_proto::ClusterId;

use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;
use crate::progress::Progress;
use recovery::Standby;
use tablespace::{AreaDirs, TablespaceMapping};
use target::Target;
use writer::{Writer, Written};

/// What to restore: the target, timeline, snapshot and action.
#[derive(Debug, Clone)]
pub struct Request {
    pub target: Target,
    /// 0: the latest timeline.
    pub timeline: u32,
    /// A snapshot chosen by hand instead of the planner's.
    pub backup: Option<String>,
    pub action: pb::RecoveryAction,
    /// Stop just before the target.
    pub exclusive: bool,
}

impl Request {
    pub fn to_pb(&self, cluster: Option<pb::ClusterRef>) -> pb::RestoreRequest {
        pb::RestoreRequest {
            cluster,
            target: Some(self.target.to_pb()),
            timeline: self.timeline,
            backup: self.backup.clone().unwrap_or_default(),
            action: self.action as i32,
            exclusive: self.exclusive,
        }
    }
}

/// How a directory restore writes.
#[derive(Debug, Clone, Default)]
pub struct DirOptions {
    /// PGDATA (absolute).
    pub path: PathBuf,
    /// PATH already holds a copy: rewrite only the blocks that differ.
    pub delta: bool,
    pub tablespace_map: Vec<TablespaceMapping>,
    pub standby: Option<Standby>,
    /// Instead of `walvault wal-fetch` with this configuration.
    pub restore_command: Option<String>,
    pub progress: bool,
}

/// A finished directory restore.
#[derive(Debug, Clone)]
pub struct DirRestore {
    pub plan: pb::RestorePlan,
    pub dirs: AreaDirs,
    pub done: pb::RestoreDirDone,
    pub written: Written,
    /// What was appended to postgresql.auto.conf.
    pub settings: Vec<(String, String)>,
    /// Set up as a standby (standby.signal).
    pub standby: bool,
    /// From the request to the last fsync.
    pub elapsed: Duration,
}

/// Messages to the writer thread; it finishes (and deletes) only when told so.
enum ToWriter {
    Part(Box<restore_dir_response::Part>),
    Finish,
}

fn request(part: restore_dir_request::Part) -> pb::RestoreDirRequest {
    pb::RestoreDirRequest { part: Some(part) }
}

/// Runs a directory restore to its end.
pub async fn run_dir(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    req: &Request,
    opts: &DirOptions,
) -> Result<DirRestore, ClientError> {
    let began = Instant::now();
    preflight::refuse_root()?;
    let mut stale: Vec<PathBuf> = preflight::check_target_dir(&opts.path, opts.delta)?
        .into_iter()
        .collect();
    let cluster_ref = crate::commands::cluster_ref(config, cluster);
    let describe = crate::commands::describe(&cluster_ref);
    let context = format!("restore {describe} into {}", opts.path.display());

    let mut client = pb::restore_client::RestoreClient::new(connect::channel(config).await?);
    let (out, out_rx) = mpsc::channel::<pb::RestoreDirRequest>(64);
    let start = pb::RestoreDirStart {
        request: Some(req.to_pb(cluster_ref.clone())),
        delta: opts.delta,
        host: crate::backup::hostname(),
        path: opts.path.to_string_lossy().into_owned(),
    };
    let closed = || ClientError::Integrity(format!("{context}: the server closed the stream"));
    out.send(request(restore_dir_request::Part::Start(start)))
        .await
        .map_err(|_| closed())?;
    let mut inbound = client
        .restore_to_dir(ReceiverStream::new(out_rx))
        .await
        .map_err(ClientError::server(context.clone()))?
        .into_inner();
    let plan = match inbound
        .message()
        .await
        .map_err(ClientError::server(context.clone()))?
    {
        Some(pb::RestoreDirResponse {
            part: Some(restore_dir_response::Part::Planned(p)),
        }) => p,
        _ => {
            return Err(ClientError::Integrity(format!(
                "{context}: the server sent no plan"
            )))
        }
    };

    // Everything that can be refused is refused here, before the first write; returning drops
    // the stream and the server cleans up.
    let dirs = tablespace::place_areas(&plan.areas, &opts.path, &opts.tablespace_map)?;
    for (_, dir) in dirs.tablespaces() {
        stale.extend(preflight::check_target_dir(dir, opts.delta)?);
    }
    // Recovery must not end early: a segment up to the plan's last one that the archive
    // cannot give stops it. A standby follows the archive instead and never ends recovery.
    let through = (opts.standby.is_none() && !plan.through_segment.is_empty())
        .then_some(plan.through_segment.as_str());
    let restore_command = match &opts.restore_command {
        Some(c) => c.clone(),
        None => default_restore_command(config, cluster_ref.as_ref(), through)?,
    };
    let settings =
        recovery::recovery_settings(&plan.settings, &restore_command, opts.standby.as_ref())?;
    let block =
        recovery::auto_conf_block(&plan.restore_id, &plan.backup_id, &plan.target, &settings)?;

    let partial = |e: ClientError| partial_copy(e, &opts.path);
    for pid_file in &stale {
        std::fs::remove_file(pid_file)
            .map_err(ClientError::io(format!("remove {}", pid_file.display())))?;
    }
    for a in dirs.iter() {
        create_area_dir(&a.dir)?;
    }
    let local = if opts.delta {
        let scan_dirs = dirs.clone();
        let tx = out.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            local::scan(&scan_dirs, |e| {
                tx.blocking_send(request(restore_dir_request::Part::Local(e)))
                    .map_err(|_| {
                        ClientError::Integrity("the server closed the restore stream".into())
                    })
            })
        })
        .await
        .map_err(|e| ClientError::Integrity(format!("the walk failed: {e}")))?;
        match scanned {
            Ok(s) => Some(s),
            Err(e) => return Err(server_reason(&mut inbound, &context).await.unwrap_or(e)),
        }
    } else {
        None
    };
    let entries = local.as_ref().map_or(0, |(_, n)| *n);
    if out
        .send(request(restore_dir_request::Part::LocalEnd(pb::LocalEnd {
            entries,
        })))
        .await
        .is_err()
    {
        return Err(server_reason(&mut inbound, &context)
            .await
            .unwrap_or_else(closed));
    }

    let counter = Arc::new(AtomicU64::new(0));
    let writer = Writer::new(dirs.clone(), local.map(|(m, _)| m), counter.clone())?;
    let (to_writer, from_reader) = mpsc::channel::<ToWriter>(16);
    let writing = tokio::task::spawn_blocking(move || apply(writer, from_reader));
    let progress = Progress::start(opts.progress, plan.bytes_total, counter, "restored");

    let outcome = receive(&mut inbound, &to_writer, &context).await;
    if outcome.is_ok() {
        let _ = to_writer.send(ToWriter::Finish).await;
    }
    drop(to_writer);
    let written = writing
        .await
        .map_err(|e| ClientError::Integrity(format!("the writer failed: {e}")));
    progress.finish();
    drop(out);
    let (written, done) = match (written, outcome) {
        (Ok(Ok(Some(w))), Ok(done)) => (w, done),
        (Err(e), _) | (Ok(Err(e)), _) => return Err(partial(e)),
        (Ok(Ok(_)), Err(e)) => return Err(partial(e)),
        (Ok(Ok(None)), Ok(_)) => {
            return Err(partial(ClientError::Integrity(format!(
                "{context}: the writer stopped early"
            ))))
        }
    };
    let standby = opts.standby.is_some();
    let recovery_dirs = dirs.clone();
    tokio::task::spawn_blocking(move || recovery::write_recovery(&recovery_dirs, &block, standby))
        .await
        .map_err(|e| ClientError::Integrity(format!("writing the recovery settings failed: {e}")))?
        .map_err(partial)?;
    Ok(DirRestore {
        plan,
        dirs,
        done,
        written,
        settings,
        standby,
        elapsed: began.elapsed(),
    })
}

/// Hands the server's files to the writer until `done`; an error if the stream ends or fails
/// first (or the writer stopped, whose own error then says why).
async fn receive(
    inbound: &mut tonic::Streaming<pb::RestoreDirResponse>,
    to_writer: &mpsc::Sender<ToWriter>,
    context: &str,
) -> Result<pb::RestoreDirDone, ClientError> {
    loop {
        let part = match inbound.message().await {
            Ok(Some(pb::RestoreDirResponse { part: Some(part) })) => part,
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(status) => return Err(ClientError::server(context)(status)),
        };
        match part {
            restore_dir_response::Part::Done(done) => return Ok(done),
            restore_dir_response::Part::Planned(_) => {
                return Err(ClientError::Integrity(format!(
                    "{context}: the server planned twice"
                )))
            }
            part => {
                if to_writer
                    .send(ToWriter::Part(Box::new(part)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    Err(ClientError::Integrity(format!(
        "{context}: the server ended the stream before the restore was done"
    )))
}

/// The writer thread: applies the server's messages in order; finishes only when told.
fn apply(mut w: Writer, mut rx: mpsc::Receiver<ToWriter>) -> Result<Option<Written>, ClientError> {
    while let Some(m) = rx.blocking_recv() {
        match m {
            ToWriter::Part(part) => match *part {
                restore_dir_response::Part::File(h) => w.apply_file(&h)?,
                restore_dir_response::Part::Blocks(b) => w.apply_blocks(&b)?,
                restore_dir_response::Part::FileEnd(e) => w.apply_file_end(&e)?,
                _ => {}
            },
            ToWriter::Finish => return w.finish().map(Some),
        }
    }
    Ok(None)
}

/// restore_command running this very program with this configuration and cluster.
fn default_restore_command(
    config: &ClientConfig,
    cluster: Option<&pb::ClusterRef>,
    through: Option<&str>,
) -> Result<String, ClientError> {
    let exe = std::env::current_exe().map_err(ClientError::io(
        "find this program's path for restore_command",
    ))?;
    let config_path = std::fs::canonicalize(&config.path).map_err(ClientError::io(format!(
        "resolve {}",
        config.path.display()
    )))?;
    let cluster = cluster.map(|c| format!("{}/{}", c.tenant, c.cluster));
    Ok(recovery::restore_command(
        &exe,
        &config_path,
        cluster.as_deref(),
        through,
    ))
}

/// Creates an area's directory (mode 0700) if it is not there.
fn create_area_dir(dir: &Path) -> Result<(), ClientError> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(ClientError::io(format!("create {}", dir.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(ClientError::io(
        format!("set the mode of {}", dir.display()),
    ))
}

/// An error after the first write: the directory holds part of the snapshot.
fn partial_copy(e: ClientError, path: &Path) -> ClientError {
    let hint = format!(
        "{} now holds a partial copy: run the same restore with --delta to complete it",
        path.display()
    );
    match e {
        ClientError::Server {
            context,
            code,
            message,
        } => ClientError::Server {
            context,
            code,
            message: format!("{message}; {hint}"),
        },
        other => ClientError::Integrity(format!("{other}; {hint}")),
    }
}

/// The server's status after our side of the stream failed, if it says one soon.
async fn server_reason(
    inbound: &mut tonic::Streaming<pb::RestoreDirResponse>,
    context: &str,
) -> Option<ClientError> {
    match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Ok(Err(status)) => Some(ClientError::server(context)(status)),
        _ => None,
    }
}
