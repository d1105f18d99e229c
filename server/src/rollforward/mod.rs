//! Roll-forward (DESIGN §7): fresh consistent snapshots of each cluster without another base
//! backup from its host, so that a point-in-time restore replays little WAL.
//!
//! Each cluster's newest backup gets a chain, `<cluster>/rollforward/<backup>`: a clone of the
//! backup's PGDATA. A job starts PostgreSQL of the cluster's major version on it as a standby
//! (Unix socket only, in a private directory; `restore_command` unpacks from the local
//! archive; no archiving, no upstream), waits until it has replayed to the end of the WAL the
//! archive held when the job began (following timeline switches), stops it (the shutdown
//! restartpoint leaves the copy "shut down in recovery"), puts back the configuration files
//! the start changed, and snapshots the chain in one atomic, property-carrying snapshot. That
//! snapshot is a restore point the planner picks like a backup: it is consistent at the
//! control file's minimum recovery point and replays from its restartpoint's redo.
//!
//! A job rather than a standby per cluster: a stopped chain costs no memory or CPU between
//! jobs, whatever the fleet's size, and a job's snapshot is taken of a copy PostgreSQL shut
//! down itself. The next job goes on from where the last stopped, so it replays only the WAL
//! archived since. A new base backup starts a new chain; older chains stay while retention
//! keeps their snapshots (their base backups with them: a clone holds its origin) and are
//! destroyed once empty.
//!
//! Invariants:
//! - one job per cluster at a time, none while the cluster's backup runs;
//! - a chain's files are put back before its snapshot, and a snapshot is catalogued after it
//!   is taken: a server killed anywhere leaves a chain the next start repairs (the postmaster
//!   stopped, the files put back, a snapshot taken but not catalogued is catalogued);
//! - on shutdown a job stops its standby at once; the next job resumes its recovery.

pub mod cadence;
pub mod pristine;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use walvault_proto::{ClusterId, Lsn};

use crate::backup::files::Owner;
use crate::backup::{props, Backups};
use crate::catalog::{BackupKind, BackupRecord, BackupStats, Catalog, CatalogError};
use crate::config::{RestoreConfig, RollForwardConfig};
use crate::layout::{ClusterLayout, SnapshotDatasets};
use crate::pg::{self, Goal, Instance, InstanceSpec, PgBinaries};
use crate::restore::clone::RestoreClone;
use crate::restore::plan::{Action, TablespaceCreation};
use crate::restore::{Planned, RestoreError, RestoreSpec, Restores, TargetSpec};
use crate::retention::Policies;
use crate::storage::{Storage, StorageError};

/// Suffix of roll-forward snapshot ids: `<UTC stamp>-rf` sorts after the backups before it.
pub const ID_SUFFIX: &str = "-rf";
/// Label and host of roll-forward records.
const HOST: &str = "walvault-server";

#[derive(Debug, thiserror::Error)]
pub enum RollForwardError {
    #[error("{cluster}: roll-forward: {context}: {source}")]
    Storage {
        cluster: ClusterId,
        context: String,
        #[source]
        source: Box<StorageError>,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{cluster}: roll-forward: {source}")]
    Restore {
        cluster: ClusterId,
        #[source]
        source: Box<RestoreError>,
    },
    #[error("{cluster}: read the roll-forward cadence of its policy: {source}")]
    Policy {
        cluster: ClusterId,
        #[source]
        source: Box<crate::retention::RetentionError>,
    },
    #[error("{cluster}: roll-forward of chain {chain}: {detail}")]
    Replay {
        cluster: ClusterId,
        chain: String,
        detail: String,
    },
    #[error("{cluster}: roll-forward: {context}: {source}")]
    Io {
        cluster: ClusterId,
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: a roll-forward of this cluster is already running")]
    Busy(ClusterId),
}

/// What one job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new snapshot, catalogued.
    Snapshot {
        record: Box<BackupRecord>,
        /// WAL replayed by this job, in bytes of LSN.
        replayed: u64,
    },
    /// Nothing to do, and why.
    NotDue(String),
    /// Due, but not now, and why.
    Skipped(String),
}

/// The roll-forward service: owns the chains and their snapshots.
#[derive(Debug, Clone)]
pub struct RollForward {
    storage: Arc<dyn Storage>,
    catalog: Catalog,
    restores: Restores,
    backups: Backups,
    policies: Policies,
    config: RollForwardConfig,
    restore_config: RestoreConfig,
    pg_user: String,
    /// Set when the server is stopping: a job stops its standby at once.
    stopping: Arc<AtomicBool>,
    running: Arc<Mutex<HashSet<ClusterId>>>,
}

struct Slot<'a> {
    running: &'a Mutex<HashSet<ClusterId>>,
    cluster: ClusterId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.cluster);
    }
}

/// A chain: where its datasets and files are.
struct Chain {
    base: String,
    datasets: SnapshotDatasets,
}

impl RollForward {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        storage: Arc<dyn Storage>,
        catalog: Catalog,
        restores: Restores,
        backups: Backups,
        policies: Policies,
        config: RollForwardConfig,
        restore_config: RestoreConfig,
        pg_user: &str,
    ) -> Self {
        Self {
            storage,
            catalog,
            restores,
            backups,
            policies,
            config,
            restore_config,
            pg_user: pg_user.to_owned(),
            stopping: Arc::default(),
            running: Arc::default(),
        }
    }

    pub fn config(&self) -> &RollForwardConfig {
        &self.config
    }

    /// Tells running jobs the server is stopping.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn restore_err(cluster: &ClusterId) -> impl FnOnce(RestoreError) -> RollForwardError {
        let cluster = cluster.clone();
        move |e| RollForwardError::Restore {
            cluster,
            source: Box::new(e),
        }
    }

    fn storage_err(
        cluster: &ClusterId,
        context: impl Into<String>,
    ) -> impl FnOnce(StorageError) -> RollForwardError {
        let cluster = cluster.clone();
        let context = context.into();
        move |source| RollForwardError::Storage {
            cluster,
            context,
            source: Box::new(source),
        }
    }

    fn io_err(
        cluster: &ClusterId,
        context: impl Into<String>,
    ) -> impl FnOnce(std::io::Error) -> RollForwardError {
        let cluster = cluster.clone();
        let context = context.into();
        move |source| RollForwardError::Io {
            cluster,
            context,
            source,
        }
    }

    fn layout(cluster: &ClusterId) -> Result<ClusterLayout, RollForwardError> {
        ClusterLayout::of(cluster).map_err(Self::storage_err(cluster, "name its datasets"))
    }

    fn chain(
        cluster: &ClusterId,
        l: &ClusterLayout,
        base: &str,
    ) -> Result<Chain, RollForwardError> {
        Ok(Chain {
            base: base.to_owned(),
            datasets: l.snapshot_of(Some(base)).map_err(Self::storage_err(
                cluster,
                format!("name the chain of {base}"),
            ))?,
        })
    }

    /// The bases of the cluster's chains (each holds its base backup's snapshot).
    pub fn chain_bases(&self, cluster: &ClusterId) -> Result<Vec<String>, RollForwardError> {
        let l = Self::layout(cluster)?;
        if !self
            .storage
            .exists(&l.rollforward)
            .map_err(Self::storage_err(cluster, "look for roll-forward chains"))?
        {
            return Ok(Vec::new());
        }
        self.storage
            .children(&l.rollforward)
            .map_err(Self::storage_err(cluster, "list roll-forward chains"))
    }

    fn mountpoint(
        &self,
        cluster: &ClusterId,
        ds: &crate::storage::DatasetPath,
    ) -> Result<PathBuf, RollForwardError> {
        self.storage
            .mountpoint(ds)
            .map_err(Self::storage_err(cluster, format!("find dataset {ds}")))
    }

    fn owner(&self) -> Option<Owner> {
        Owner::lookup(&self.pg_user)
    }

    /// Rolls `cluster` forward if it is due. Blocking.
    pub fn run(&self, cluster: &ClusterId) -> Result<Outcome, RollForwardError> {
        if !self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.clone())
        {
            return Err(RollForwardError::Busy(cluster.clone()));
        }
        let _slot = Slot {
            running: &self.running,
            cluster: cluster.clone(),
        };
        if self.backups.running_start(cluster).is_some() {
            return Ok(Outcome::Skipped(
                "a backup of the cluster is running; the next round rolls forward".into(),
            ));
        }
        let records = self.catalog.backups(cluster)?;
        let Some(base) = newest_backup(&records).cloned() else {
            return Ok(Outcome::NotDue("no backup yet".into()));
        };
        let l = Self::layout(cluster)?;
        // The newest state of the chain: its newest snapshot, or the backup itself.
        let last = records
            .iter()
            .filter(|r| r.base.as_deref() == Some(base.id.as_str()))
            .max_by(|a, b| (a.stop_lsn, &a.id).cmp(&(b.stop_lsn, &b.id)))
            .cloned()
            .unwrap_or_else(|| base.clone());
        // A plan reads the cluster's whole WAL index, and every cluster is looked at each
        // round: nothing archived since the job (or backup) behind `last` began means
        // nothing to roll forward.
        let began = last.stop_unix - (last.stats.duration_ms / 1000) as i64 - 1;
        if self
            .catalog
            .last_wal(cluster)?
            .is_none_or(|w| w.archived_unix < began)
        {
            return Ok(Outcome::NotDue(
                "nothing archived since the newest snapshot".into(),
            ));
        }
        let planned = self
            .restores
            .plan(&RestoreSpec {
                cluster: cluster.clone(),
                target: TargetSpec::Latest,
                timeline: None,
                backup: Some(last.id.clone()),
                action: Action::Promote,
                inclusive: true,
            })
            .map_err(Self::restore_err(cluster))?;
        // Replay on this server must not make a tablespace's directory at the source's
        // location here: the chain stops just before the record that creates one.
        let stop_before = planned.plan.creates_tablespace.clone();
        if let Some(c) = &stop_before {
            if c.lsn <= last.stop_lsn {
                return Ok(Outcome::Skipped(format!(
                    "the WAL at {} creates tablespace {} (at {} on the source), which replay on \
                     this server would put there; chain {} stops before it until a new base \
                     backup starts the next",
                    c.lsn, c.oid, c.location, base.id
                )));
            }
        }
        let reach = stop_before
            .as_ref()
            .map_or(planned.plan.reach, |c| c.lsn.min(planned.plan.reach));
        if reach <= last.stop_lsn {
            return Ok(Outcome::NotDue("no WAL since the newest snapshot".into()));
        }
        let since = cadence::Since {
            wal_bytes: reach.0 - last.stop_lsn.0,
            secs: crate::unix_now().saturating_sub(last.stop_unix).max(0) as u64,
            commits: planned
                .plan
                .reach_micros
                .is_some_and(|m| m > last.start_unix.saturating_mul(1_000_000)),
        };
        let policy = self
            .policies
            .effective(cluster)
            .map_err(|e| RollForwardError::Policy {
                cluster: cluster.clone(),
                source: Box::new(e),
            })?;
        let why = match cadence::due(&cadence::Cadence::of(&policy, &self.config), since) {
            Ok(why) => why,
            Err(why) => return Ok(Outcome::NotDue(why)),
        };
        let chain = Self::chain(cluster, &l, &base.id)?;
        tracing::info!(cluster = %cluster, chain = %chain.base, from = %last.id, to = %reach, "rolling forward: {why}");
        self.ensure_chain(cluster, &l, &chain)?;
        let record = self.replay(cluster, &chain, &planned, &base, stop_before.as_ref())?;
        let replayed = record.stop_lsn.0.saturating_sub(last.stop_lsn.0);
        Ok(Outcome::Snapshot {
            record: Box::new(record),
            replayed,
        })
    }

    /// Creates the chain of `chain.base` if it does not exist: a clone of the backup's PGDATA
    /// and of each of its tablespaces.
    fn ensure_chain(
        &self,
        cluster: &ClusterId,
        l: &ClusterLayout,
        chain: &Chain,
    ) -> Result<(), RollForwardError> {
        if self
            .storage
            .exists(&chain.datasets.parent)
            .map_err(Self::storage_err(cluster, "look for the chain"))?
        {
            return Ok(());
        }
        let backup = l
            .snapshot_of(None)
            .map_err(Self::storage_err(cluster, "name its backups' datasets"))?;
        RestoreClone::create_in(
            self.storage.as_ref(),
            cluster,
            &l.rollforward,
            &chain.base,
            &backup,
            &chain.base,
        )
        .map_err(Self::restore_err(cluster))?;
        tracing::info!(cluster = %cluster, chain = %chain.base, "created a roll-forward chain");
        Ok(())
    }

    /// The chain's copy as a clone (its data and tablespace datasets).
    fn copy(cluster: &ClusterId, chain: &Chain) -> Result<RestoreClone, RollForwardError> {
        let l = Self::layout(cluster)?;
        RestoreClone::existing_in(cluster, &l.rollforward, &chain.base)
            .map_err(Self::restore_err(cluster))
    }

    /// Destroys the chains of older bases that hold no snapshot any more (retention pruned
    /// them, or a job died before the first), which frees their base backups; returns how
    /// many. The chain of the newest backup stays, and none goes while a job of the cluster
    /// runs. Blocking; called by the pruner, which owns what goes.
    pub fn drop_empty_chains(&self, cluster: &ClusterId) -> Result<usize, RollForwardError> {
        if self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(cluster)
        {
            return Ok(0);
        }
        let records = self.catalog.backups(cluster)?;
        let newest = newest_backup(&records).map(|b| b.id.clone());
        let l = Self::layout(cluster)?;
        let mut dropped = 0;
        for base in self.chain_bases(cluster)? {
            if Some(&base) == newest.as_ref()
                || records.iter().any(|r| r.base.as_deref() == Some(&base))
            {
                continue;
            }
            let chain = Self::chain(cluster, &l, &base)?;
            let running = self
                .storage
                .mountpoint(&chain.datasets.data)
                .is_ok_and(|data| pg::is_running(&data));
            if running {
                continue;
            }
            match self.storage.destroy(&chain.datasets.parent, true) {
                Ok(()) => {
                    dropped += 1;
                    tracing::info!(cluster = %cluster, chain = %base, "destroyed an empty roll-forward chain")
                }
                Err(e) => {
                    tracing::warn!(cluster = %cluster, chain = %base, "destroy an empty roll-forward chain: {e}")
                }
            }
        }
        Ok(dropped)
    }

    /// Starts the chain's standby, replays to `planned`'s end (or to just before
    /// `stop_before`, where it shuts down by itself), stops it, and snapshots.
    fn replay(
        &self,
        cluster: &ClusterId,
        chain: &Chain,
        planned: &Planned,
        base: &BackupRecord,
        stop_before: Option<&TablespaceCreation>,
    ) -> Result<BackupRecord, RollForwardError> {
        let started = Instant::now();
        let fail = |detail: String| RollForwardError::Replay {
            cluster: cluster.clone(),
            chain: chain.base.clone(),
            detail,
        };
        let bins = PgBinaries::locate(&self.restore_config.pg_bin, planned.pg_major)
            .map_err(|e| fail(e.to_string()))?;
        let home = self.mountpoint(cluster, &chain.datasets.parent)?;
        let data = self.mountpoint(cluster, &chain.datasets.data)?;
        self.repair(cluster, chain)?;
        let copy = Self::copy(cluster, chain)?;
        let tablespaces = copy
            .tablespace_dirs(self.storage.as_ref())
            .map_err(Self::restore_err(cluster))?;
        self.refuse_tablespaces_outside(cluster, chain, &data, &tablespaces)?;
        pristine::save(&home, &data).map_err(Self::io_err(
            cluster,
            format!("save the configuration of {}", data.display()),
        ))?;
        let socket_dir = pg::socket_dir("rf");
        let spec = InstanceSpec {
            pgdata: data.clone(),
            // Unix socket only: the port only names the socket file.
            port: 5432,
            listen_address: String::new(),
            socket_dir: socket_dir.clone(),
            log_file: home.join("postgresql.log"),
            os_user: self.pg_user.clone(),
            superuser: self.restore_config.superuser.clone(),
        };
        let result = (|| {
            let wal_ahead = self
                .restores
                .move_pg_wal_out(&data, &format!("{cluster}-rollforward-{}", chain.base))
                .map_err(|e| fail(e.to_string()))?;
            crate::restore::clone::point_tablespaces(&data, &tablespaces).map_err(|e| {
                fail(format!(
                    "point the tablespaces of {} at the chain: {e}",
                    data.display()
                ))
            })?;
            pg::prepare(
                &spec,
                &format!("roll-forward of {cluster}"),
                &[
                    self.settings(planned, stop_before, wal_ahead.as_deref())?,
                    self.restore_config
                        .tuning(planned.pg_major, crate::mounts::is_fuse(&data)),
                ]
                .concat(),
                "standby.signal",
            )
            .map_err(|e| fail(e.to_string()))?;
            let ahead = self.restores.read_ahead(
                planned,
                crate::restore::prefetch::CopyDirs {
                    data: data.clone(),
                    tablespaces: tablespaces.clone(),
                },
                wal_ahead.as_deref(),
                &format!("roll-forward of {cluster}"),
            );
            let instance = Instance::start(&bins, spec.clone()).map_err(|e| fail(e.to_string()))?;
            crate::fault::point("rollforward-replaying");
            let deadline = Instant::now() + self.config.max;
            let stopping = || self.stopping.load(Ordering::SeqCst);
            let goal = match stop_before {
                Some(c) => {
                    tracing::warn!(
                        cluster = %cluster, chain = %chain.base, lsn = %c.lsn, oid = c.oid,
                        location = %c.location,
                        "roll-forward stops before a tablespace's creation: replay here would \
                         put it at the source's location; a new base backup starts the next chain"
                    );
                    Goal::ShutDown
                }
                None => Goal::Replayed(planned.plan.reach),
            };
            let reached = instance.wait_for_unless(goal, deadline, &mut |_| {}, &stopping);
            drop(ahead);
            let reached = match reached {
                Ok(r) => r,
                Err(e) => {
                    let stopped = if stopping() {
                        instance.stop_now()
                    } else {
                        instance.stop()
                    };
                    if let Err(e2) = stopped {
                        tracing::error!(cluster = %cluster, chain = %chain.base, "stop the roll-forward standby: {e2}");
                    }
                    return Err(fail(e.to_string()));
                }
            };
            instance.stop().map_err(|e| fail(e.to_string()))?;
            Ok(reached)
        })();
        let _ = std::fs::remove_dir_all(&socket_dir);
        // Every segment is archived: the snapshot needs none of them.
        let wal_back = pg::localwal::bring_back(&data, self.owner());
        let put_back = pristine::restore(&home, &data, self.owner());
        let reached = result?;
        wal_back.map_err(Self::io_err(
            cluster,
            format!("put pg_wal back into {}", data.display()),
        ))?;
        put_back.map_err(Self::io_err(
            cluster,
            format!("put back the configuration of {}", data.display()),
        ))?;
        self.refuse_tablespaces_outside(cluster, chain, &data, &tablespaces)?;
        let control =
            pg::control::read(&bins, &data, &self.pg_user).map_err(|e| fail(e.to_string()))?;
        if control.state != "shut down in recovery" {
            return Err(fail(format!(
                "after its stop the copy is {:?}, not \"shut down in recovery\"; it is not \
                 snapshotted (the next round tries again)",
                control.state
            )));
        }
        let (stop_lsn, timeline) = control.consistent_at();
        // The standby may have replayed WAL archived while it ran: where the archive ends now.
        let reach_now = self
            .restores
            .plan(&RestoreSpec {
                cluster: cluster.clone(),
                target: TargetSpec::Latest,
                timeline: None,
                backup: Some(planned.plan.backup.id.clone()),
                action: Action::Promote,
                inclusive: true,
            })
            .map(|p| p.plan.reach)
            .unwrap_or(planned.plan.reach)
            .max(planned.plan.reach);
        let stop_lsn = after_switch(stop_lsn, reach_now, u64::from(planned.segment_size));
        let now = crate::unix_now();
        // The latest commit the copy holds, rounded up: the planner's bound on what a
        // restore from it contains (it also reads the commits between redo and stop).
        let last_commit_secs = reached
            .replay_micros
            .map(|m| m.div_euclid(1_000_000) + i64::from(m.rem_euclid(1_000_000) > 0));
        let record = BackupRecord {
            id: self.new_id(cluster, now)?,
            kind: BackupKind::Rollforward,
            base: Some(chain.base.clone()),
            label: format!("roll-forward of {}", chain.base),
            host: HOST.to_owned(),
            start_lsn: control.redo_lsn,
            stop_lsn,
            timeline,
            start_unix: last_commit_secs
                .unwrap_or(base.start_unix)
                .max(base.start_unix),
            stop_unix: now,
            stats: BackupStats {
                duration_ms: started.elapsed().as_millis() as u64,
                ..BackupStats::default()
            },
            receipt: None,
        };
        self.storage
            .snapshot(
                &chain.datasets.parent,
                &record.id,
                true,
                &props::snapshot_properties(&record),
            )
            .map_err(Self::storage_err(
                cluster,
                format!("snapshot chain {}", chain.base),
            ))?;
        crate::fault::point("rollforward-snapshotted");
        self.catalog.put_backup(cluster, &record)?;
        tracing::info!(
            cluster = %cluster, snapshot = %record.id, chain = %chain.base,
            consistent = %record.stop_lsn, redo = %record.start_lsn, timeline = %record.timeline,
            ms = record.stats.duration_ms, "roll-forward snapshot taken"
        );
        Ok(record)
    }

    /// Fails when a `pg_tblspc` link of the chain's copy points outside its tablespace
    /// datasets: a tablespace created after the base backup, which replay put at the source's
    /// location on this host. A snapshot would not hold its files, so none is taken until a
    /// new base backup (which holds the tablespace) starts a new chain.
    fn refuse_tablespaces_outside(
        &self,
        cluster: &ClusterId,
        chain: &Chain,
        data: &Path,
        tablespaces: &[(u32, PathBuf)],
    ) -> Result<(), RollForwardError> {
        let outside =
            crate::restore::clone::tablespaces_outside(data, tablespaces).map_err(Self::io_err(
                cluster,
                format!("read the tablespace links of {}", data.display()),
            ))?;
        match outside.first() {
            None => Ok(()),
            Some((oid, target)) => Err(RollForwardError::Replay {
                cluster: cluster.clone(),
                chain: chain.base.clone(),
                detail: format!(
                    "tablespace {oid} was created after base backup {} and replay put it at {} \
                     on this server, outside the chain; no roll-forward snapshot holds it: take \
                     a new base backup (then remove {} here)",
                    chain.base,
                    target.display(),
                    target.display()
                ),
            }),
        }
    }

    /// The recovery settings of a chain's standby.
    fn settings(
        &self,
        planned: &Planned,
        stop_before: Option<&TablespaceCreation>,
        wal_ahead: Option<&std::path::Path>,
    ) -> Result<Vec<(String, String)>, RollForwardError> {
        let restore_command =
            crate::restore::instance::restore_command(&self.restores, planned, wal_ahead)
                .map_err(Self::restore_err(&planned.cluster))?;
        let stop = stop_before.map(|c| {
            [
                ("recovery_target_lsn".to_owned(), c.lsn.to_string()),
                ("recovery_target_inclusive".to_owned(), "off".to_owned()),
                ("recovery_target_action".to_owned(), "shutdown".to_owned()),
            ]
        });
        Ok([
            ("restore_command".into(), restore_command),
            ("recovery_target_timeline".into(), "latest".into()),
            // Every fsync of the standby is a request the zfs-fuse daemon serves (pg_control
            // alone is synced each time the minimum recovery point moves). Nothing here needs
            // them: the snapshot is taken after PostgreSQL shut down cleanly, and an
            // interrupted job rewinds the chain to its last snapshot (`repair`).
            ("fsync".into(), "off".into()),
        ]
        .into_iter()
        .chain(stop.into_iter().flatten())
        .collect())
    }

    /// A fresh snapshot id: the UTC stamp, made distinct from every catalogued one.
    fn new_id(&self, cluster: &ClusterId, now: i64) -> Result<String, RollForwardError> {
        let taken: HashSet<String> = self
            .catalog
            .backups(cluster)?
            .into_iter()
            .map(|b| b.id)
            .collect();
        let stamp = crate::backup::utc_stamp(now);
        let mut id = format!("{stamp}{ID_SUFFIX}");
        let mut n = 1;
        while taken.contains(&id) {
            n += 1;
            id = format!("{stamp}{ID_SUFFIX}{n}");
        }
        Ok(id)
    }

    /// Makes a chain whole after a server died during a job: its postmaster stopped, its
    /// `pg_wal` and configuration files put back, and its copy rewound to its last snapshot.
    fn repair(&self, cluster: &ClusterId, chain: &Chain) -> Result<(), RollForwardError> {
        let home = self.mountpoint(cluster, &chain.datasets.parent)?;
        let data = self.mountpoint(cluster, &chain.datasets.data)?;
        let left_running = pg::is_running(&data);
        if left_running {
            tracing::warn!(cluster = %cluster, chain = %chain.base, "stopping a roll-forward standby left by an earlier server process");
            pg::stop_left_behind(&self.restore_config.pg_bin, &data, &self.pg_user).map_err(
                |e| RollForwardError::Replay {
                    cluster: cluster.clone(),
                    chain: chain.base.clone(),
                    detail: format!("stop the standby an earlier server process left: {e}"),
                },
            )?;
        }
        pg::localwal::bring_back(&data, self.owner()).map_err(Self::io_err(
            cluster,
            format!("put pg_wal back into {}", data.display()),
        ))?;
        let changed = pristine::restore(&home, &data, self.owner()).map_err(Self::io_err(
            cluster,
            format!("put back the configuration of {}", data.display()),
        ))?;
        if changed {
            tracing::warn!(cluster = %cluster, chain = %chain.base, "put back the configuration an interrupted roll-forward changed");
        }
        if left_running || changed {
            self.rewind(cluster, chain)?;
        }
        Ok(())
    }

    /// Puts an interrupted chain's copy back to its newest snapshot, or to its base backup:
    /// its standby ran with `fsync = off`, so after a crash of the machine its files cannot be
    /// trusted; its snapshots can. The next job replays what was lost.
    fn rewind(&self, cluster: &ClusterId, chain: &Chain) -> Result<(), RollForwardError> {
        let st = |what: String| Self::storage_err(cluster, what);
        let newest = self
            .storage
            .snapshots(&chain.datasets.parent)
            .map_err(st(format!("list the snapshots of chain {}", chain.base)))?
            .pop();
        let to = match newest {
            Some(snap) => {
                let mut datasets = vec![chain.datasets.data.clone()];
                if self
                    .storage
                    .exists(&chain.datasets.tablespaces)
                    .map_err(st(format!(
                        "look for the tablespaces of chain {}",
                        chain.base
                    )))?
                {
                    for oid in self
                        .storage
                        .children(&chain.datasets.tablespaces)
                        .map_err(st(format!("list the tablespaces of chain {}", chain.base)))?
                    {
                        datasets.push(chain.datasets.tablespaces.join(&oid).map_err(st(
                            format!("name tablespace {oid} of chain {}", chain.base),
                        ))?);
                    }
                }
                for ds in &datasets {
                    self.storage.rollback(ds, &snap.name).map_err(st(format!(
                        "roll {ds} of chain {} back to {}",
                        chain.base, snap.name
                    )))?;
                }
                format!("its snapshot {}", snap.name)
            }
            None => {
                // Nothing of the chain is worth keeping: a fresh clone of its base.
                self.storage
                    .destroy(&chain.datasets.parent, true)
                    .map_err(st(format!("destroy chain {}", chain.base)))?;
                let l = Self::layout(cluster)?;
                self.ensure_chain(cluster, &l, chain)?;
                format!("its base backup {}", chain.base)
            }
        };
        tracing::warn!(cluster = %cluster, chain = %chain.base, "rewound an interrupted roll-forward chain to {to}");
        Ok(())
    }

    /// At start-up: every chain repaired, and snapshots taken but not catalogued (the server
    /// died in between) catalogued. Returns the snapshots catalogued.
    pub fn clean_up_interrupted(
        &self,
        cluster: &ClusterId,
    ) -> Result<Vec<String>, RollForwardError> {
        let l = Self::layout(cluster)?;
        let known: HashSet<String> = self
            .catalog
            .backups(cluster)?
            .into_iter()
            .map(|b| b.id)
            .collect();
        let mut catalogued = Vec::new();
        for base in self.chain_bases(cluster)? {
            let chain = Self::chain(cluster, &l, &base)?;
            self.repair(cluster, &chain)?;
            for snap in
                self.storage
                    .snapshots(&chain.datasets.parent)
                    .map_err(Self::storage_err(
                        cluster,
                        format!("list the snapshots of chain {base}"),
                    ))?
            {
                if known.contains(&snap.name) {
                    continue;
                }
                if let Some(r) = props::record_from_properties(&snap.properties) {
                    self.catalog.put_backup(cluster, &r)?;
                    catalogued.push(r.id);
                }
            }
        }
        Ok(catalogued)
    }
}

/// The newest backup the host sent (not a roll-forward snapshot): the base of the live chain.
fn newest_backup(records: &[BackupRecord]) -> Option<&BackupRecord> {
    records
        .iter()
        .filter(|r| r.kind != BackupKind::Rollforward)
        .max_by(|a, b| (a.stop_lsn, &a.id).cmp(&(b.stop_lsn, &b.id)))
}

/// Where a copy whose replay ended on a segment switch is consistent. After the switch
/// record PostgreSQL stands at the next segment's first byte, which the archive need not hold
/// yet; what lies between the end of the switch record (where the archive's WAL ends,
/// `reach`) and that boundary is padding, so the copy is consistent at `reach`.
fn after_switch(consistent: Lsn, reach: Lsn, segment_size: u64) -> Lsn {
    let seg = segment_size.max(1);
    let on_boundary = consistent.0.is_multiple_of(seg);
    if consistent > reach && on_boundary && reach.0 / seg + 1 == consistent.0 / seg {
        reach
    } else {
        consistent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn a_replay_that_ended_on_a_switch_is_consistent_where_the_archive_ends() {
        // pg_switch_wal() at 0/92BFA60: the standby stands at 0/A000000.
        assert_eq!(
            after_switch(Lsn(0xA00_0000), Lsn(0x92B_FA60), SEG),
            Lsn(0x92B_FA60)
        );
        // Anything else is PostgreSQL's own point.
        assert_eq!(
            after_switch(Lsn(0xA00_0100), Lsn(0x92B_FA60), SEG),
            Lsn(0xA00_0100)
        );
        assert_eq!(
            after_switch(Lsn(0xA00_0000), Lsn(0xA00_0000), SEG),
            Lsn(0xA00_0000)
        );
        assert_eq!(
            after_switch(Lsn(0xB00_0000), Lsn(0x92B_FA60), SEG),
            Lsn(0xB00_0000),
            "a whole segment further is WAL the plan did not see"
        );
        assert_eq!(
            after_switch(Lsn(0x900_0000), Lsn(0x92B_FA60), SEG),
            Lsn(0x900_0000)
        );
    }
}
