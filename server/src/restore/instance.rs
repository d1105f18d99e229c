//! Instance delivery: PostgreSQL started on the clone, on this server, as the configured OS
//! user, recovered to the target and (by default) promoted.
//!
//! Recovery is always told to pause at a target, and the server promotes with `pg_promote()`:
//! on PostgreSQL 15 `recovery_target_action = promote` waits for an end-of-recovery
//! checkpoint, which pausing first avoids (DESIGN §8). A `latest` restore has no target, so
//! PostgreSQL promotes by itself at the end of the archive.
//!
//! A restore proves it reached its plan before it is reported ready: `wal-unpack` stops
//! recovery with a FATAL (rather than letting it end early) when a segment up to the plan's
//! last one is missing or damaged, and the LSN recovery replayed to is compared with the one
//! the plan must reach; falling short fails the restore and destroys the clone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use walvault_proto::Lsn;

use super::plan::Action;
use super::{Planned, RestoreClone, RestoreError, RestoreView, Restores};
use crate::backup::files::Owner;
use crate::pg::{self, Goal, Instance, InstanceSpec, PgBinaries};

/// An instance this server process started.
#[derive(Debug)]
pub struct Running {
    instance: Instance,
    port: u16,
    socket_dir: PathBuf,
}

impl Running {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stop(self) -> Result<(), String> {
        let r = self.instance.stop().map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&self.socket_dir);
        r
    }
}

/// The private directory of instance restore `id`'s Unix socket (short: socket paths are
/// limited to about 100 bytes).
fn socket_dir(id: impl std::fmt::Display) -> PathBuf {
    PathBuf::from(format!("/tmp/walvault-{id}"))
}

/// Stops a postmaster left on a clone by an earlier server process, if any, and removes its
/// socket directory.
pub fn stop_leftover(
    restores: &Restores,
    record: &crate::catalog::RestoreRecord,
    c: &RestoreClone,
) -> Result<(), String> {
    let Ok(data) = c.data_dir(restores.storage()) else {
        return Ok(());
    };
    if pg::is_running(&data) {
        let bins = PgBinaries::locate(&restores.config().pg_bin, record.pg_major)
            .map_err(|e| e.to_string())?;
        pg::stop_dir(&bins, &data, restores.pg_user()).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_dir_all(socket_dir(&record.id));
    Ok(())
}

/// The restore_command of an instance on this server: the server's own binary unpacks
/// archived files straight from the cluster's WAL directory.
pub(crate) fn restore_command(
    restores: &Restores,
    planned: &Planned,
    wal_ahead: Option<&Path>,
) -> Result<String, RestoreError> {
    let exe =
        crate::process::own_binary().map_err(RestoreError::io("find walvault-server's binary"))?;
    let wal = restores.archive().wal_dir_path(&planned.cluster)?;
    let ahead = wal_ahead
        .map(|d| format!(" --ahead {}", shell_quote(&d.display().to_string())))
        .unwrap_or_default();
    Ok(format!(
        "{} wal-unpack --require-through {}{ahead} {} %f %p",
        shell_quote(&exe.display().to_string()),
        planned.through_name(),
        shell_quote(&wal.display().to_string())
    ))
}

/// Whether recovery got as far as the plan says it must: `None` when it did, else why not.
fn short_of_plan(planned: &Planned, reached: &pg::Reached) -> Option<String> {
    let want = planned.plan.reach;
    let got = reached
        .replay_lsn
        .as_deref()
        .and_then(|l| l.parse::<Lsn>().ok());
    match got {
        Some(l) if l >= want => None,
        Some(l) => Some(format!(
            "recovery replayed WAL only up to {l}, short of {want}, which the plan must reach \
             ({}); the archive could not give the rest",
            planned.plan.target
        )),
        None => Some(format!(
            "recovery did not say how far it replayed, so reaching {want} ({}) is not proven",
            planned.plan.target
        )),
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace(['"', '\\', '$', '`'], "_"))
    }
}

/// Clones, starts and recovers; returns once the target is reached. Nothing is left behind
/// on failure.
pub fn start(
    restores: &Restores,
    planned: &Planned,
    progress: &mut dyn FnMut(&str),
    cancelled: &dyn Fn() -> bool,
) -> Result<RestoreView, RestoreError> {
    let started = Instant::now();
    let id = planned.id.clone();
    let fail = |detail: String| RestoreError::Instance {
        id: id.clone(),
        cluster: planned.cluster.clone(),
        detail,
    };
    if let Some(c) = &planned.plan.creates_tablespace {
        return Err(RestoreError::CreatesTablespace {
            cluster: planned.cluster.clone(),
            oid: c.oid,
            location: c.location.clone(),
            lsn: c.lsn,
        });
    }
    let bins = PgBinaries::locate(&restores.config().pg_bin, planned.pg_major)
        .map_err(|e| fail(e.to_string()))?;
    progress(&format!(
        "cloning backup {} of {}",
        planned.plan.backup.id, planned.cluster
    ));
    let c = restores.open_clone(planned, "instance", "", "")?;
    let mut running: Option<Running> = None;
    let result = (|| {
        let data = c.data_dir(restores.storage())?;
        let dirs = c.point_tablespaces_home(restores.storage())?;
        let cfg = restores.config();
        let wal_ahead = restores.move_pg_wal_out(&data, &format!("{}-{id}", planned.cluster))?;
        let port = pg::free_port(&cfg.listen_address, cfg.ports, &restores.ports_taken()).ok_or(
            RestoreError::NoPort {
                id: id.clone(),
                lo: cfg.ports.0,
                hi: cfg.ports.1,
            },
        )?;
        let socket_dir = socket_dir(&id);
        make_private_dir(&socket_dir, restores.pg_user())?;
        let spec = InstanceSpec {
            pgdata: data.clone(),
            port,
            listen_address: cfg.listen_address.clone(),
            socket_dir: socket_dir.clone(),
            log_file: data.join("walvault-restore.log"),
            os_user: restores.pg_user().to_owned(),
            superuser: cfg.superuser.clone(),
        };
        let has_target = !planned.latest;
        let mut settings: Vec<(String, String)> = planned
            .plan
            .settings
            .iter()
            .filter(|(k, _)| k != "recovery_target_action")
            .cloned()
            .collect();
        let action = planned.action;
        if has_target {
            let pg_action = match action {
                Action::Shutdown => "shutdown",
                Action::Promote | Action::Pause => "pause",
            };
            settings.push(("recovery_target_action".into(), pg_action.into()));
        }
        settings.push((
            "restore_command".into(),
            restore_command(restores, planned, wal_ahead.as_deref())?,
        ));
        settings.extend(cfg.tuning(planned.pg_major, crate::mounts::is_fuse(&data)));
        pg::prepare(&spec, &id, &settings, "recovery.signal").map_err(|e| fail(e.to_string()))?;
        progress(&format!(
            "starting PostgreSQL {} on port {port}",
            planned.pg_major
        ));
        let ahead = restores.read_ahead(
            planned,
            super::prefetch::CopyDirs {
                data: data.clone(),
                tablespaces: dirs.clone(),
            },
            wal_ahead.as_deref(),
            &format!("restore {id}"),
        );
        let instance = Instance::start(&bins, spec).map_err(|e| fail(e.to_string()))?;
        crate::fault::point("instance-recovering");
        let conninfo = instance.conninfo();
        running = Some(Running {
            instance,
            port,
            socket_dir,
        });
        let Some(r) = running.as_ref() else {
            return Err(fail("the instance vanished".into()));
        };
        let deadline = Instant::now() + cfg.wait;
        let goal = match (has_target, action) {
            (false, _) => Goal::Promoted,
            (true, Action::Shutdown) => Goal::ShutDown,
            (true, _) => Goal::Paused,
        };
        let reached = r
            .instance
            .wait_for_unless(goal, deadline, progress, cancelled)
            .map_err(|e| fail(e.to_string()))?;
        drop(ahead);
        // A shut-down instance cannot be asked; PostgreSQL itself fails a recovery that ends
        // before its target, and wal-unpack one that lacks a segment it needs.
        if goal != Goal::ShutDown {
            if let Some(why) = short_of_plan(planned, &reached) {
                return Err(fail(why));
            }
        }
        let state = match (has_target, action) {
            (true, Action::Promote) => {
                progress("target reached; promoting");
                r.instance.promote().map_err(|e| fail(e.to_string()))?;
                r.instance
                    .wait_for_unless(Goal::Promoted, deadline, progress, cancelled)
                    .map_err(|e| fail(e.to_string()))?;
                "ready"
            }
            (true, Action::Pause) => "paused",
            (true, Action::Shutdown) => "stopped",
            (false, _) => "ready",
        };
        if let Some(l) = &reached.replay_lsn {
            progress(&format!(
                "recovery reached {l} (the plan needed {}){}",
                planned.plan.reach,
                reached
                    .replay_micros
                    .map(|m| format!(
                        ", last replayed commit at {}",
                        walvault_proto::utc_time_micros(m)
                    ))
                    .unwrap_or_default()
            ));
        }
        let mut record = restores.restore(&id)?;
        record.reached_lsn = reached.replay_lsn.as_deref().and_then(|l| l.parse().ok());
        record.reached_micros = reached.replay_micros;
        record.state = state.into();
        record.port = (state != "stopped").then_some(port);
        record.conninfo = if state == "stopped" {
            String::new()
        } else {
            conninfo
        };
        record.duration_ms = started.elapsed().as_millis() as u64;
        restores.save(&record)?;
        Ok(record)
    })();
    match result {
        Ok(record) => {
            if let Some(r) = running {
                restores.register(&id, r);
            }
            tracing::info!(restore = %id, cluster = %planned.cluster, state = %record.state, "restore ready");
            Ok(restores.view(record))
        }
        Err(e) => {
            tracing::warn!(restore = %id, cluster = %planned.cluster, "restore failed: {e}");
            if let Some(r) = running {
                let _ = r.stop();
            }
            if let Err(e2) = restores.close_clone_patiently(&c) {
                tracing::error!(restore = %id, "clean up the failed restore: {e2}");
            }
            Err(e)
        }
    }
}

fn make_private_dir(dir: &std::path::Path, user: &str) -> Result<(), RestoreError> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RestoreError::io(format!("create {}", dir.display()))(e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(RestoreError::io(format!("chmod {}", dir.display())))?;
    Owner::apply(Owner::lookup(user), dir)
        .map_err(RestoreError::io(format!("chown {}", dir.display())))
}
