//! Restores (DESIGN §8): plan against the backups and the WAL time index, clone the chosen
//! snapshot under `<cluster>/restores/<id>`, and deliver it: file by file to a client that
//! writes a PGDATA (`deliver`), or as a PostgreSQL instance started on the clone
//! (`instance`).
//!
//! Invariants:
//! - a restore never writes to a backup's snapshot: everything happens on a clone, and the
//!   clone is destroyed when a directory delivery ends (finished or not) or its instance is
//!   dropped;
//! - a failed restore leaves nothing behind (no clone, no catalog entry, no instance);
//! - a plan is refused, with the window, unless PostgreSQL can reach its target from the
//!   chosen snapshot with the archived WAL.

pub mod clone;
pub mod deliver;
pub mod instance;
pub mod plan;
pub mod prefetch;
pub mod wal_ahead;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use walvault_proto::{ClusterId, Lsn, TimelineId};

use crate::catalog::{Catalog, CatalogError, RestoreRecord};
use crate::config::RestoreConfig;
use crate::storage::{Storage, StorageError};
use crate::wal::timeindex::{self, ClusterIndex, IndexError, TimeIndex};
use crate::wal::{ArchiveError, WalArchive};

pub use clone::RestoreClone;
pub use plan::{Action, Plan, PlanError, Window};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cluster {0} does not exist")]
    ClusterNotFound(ClusterId),
    #[error("{cluster}: {source}")]
    Plan {
        cluster: ClusterId,
        #[source]
        source: Box<PlanError>,
    },
    #[error("{cluster}: transaction {xid} has no commit or abort record in the archived WAL of timeline {timeline}")]
    UnknownXid {
        cluster: ClusterId,
        xid: u32,
        timeline: TimelineId,
    },
    #[error("restore {0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: StorageError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("restore {id} of {cluster}: {detail}")]
    Instance {
        id: String,
        cluster: ClusterId,
        detail: String,
    },
    #[error(
        "{cluster}: the WAL this restore replays creates tablespace {oid} at {lsn}, at {location} \
         on the source; replayed on this server it would write there, outside the restore's \
         clone: restore to a directory (--to dir:PATH) or to a target before {lsn}"
    )]
    CreatesTablespace {
        cluster: ClusterId,
        oid: u32,
        location: String,
        lsn: Lsn,
    },
    #[error("restore {id}: no free port in restore.ports {lo}-{hi}; drop an instance or widen the range")]
    NoPort { id: String, lo: u16, hi: u16 },
    #[error(
        "tenant {tenant} holds {open} restore clones (limits.clones_per_tenant = {limit}); drop \
         one with `walvault restores drop ID` first"
    )]
    TooManyClones {
        tenant: walvault_proto::TenantId,
        open: usize,
        limit: u32,
    },
}

impl RestoreError {
    pub fn storage(context: impl Into<String>) -> impl FnOnce(StorageError) -> Self {
        let context = context.into();
        move |source| RestoreError::Storage { context, source }
    }
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| RestoreError::Io { context, source }
    }
}

/// A target as the client asks for it (an xid is resolved to its LSN by the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    Time(i64),
    Lsn(Lsn),
    Xid(u32),
    RestorePoint(String),
    Immediate,
    Latest,
}

#[derive(Debug, Clone)]
pub struct RestoreSpec {
    pub cluster: ClusterId,
    pub target: TargetSpec,
    pub timeline: Option<TimelineId>,
    pub backup: Option<String>,
    pub action: Action,
    pub inclusive: bool,
}

/// A plan with what delivering it needs.
#[derive(Debug, Clone)]
pub struct Planned {
    pub id: String,
    pub cluster: ClusterId,
    pub plan: Plan,
    pub pg_major: u32,
    pub segment_size: u32,
    pub action: Action,
    /// No target: recover to the end of the archive.
    pub latest: bool,
}

/// What runs beside one recovery ([`Restores::read_ahead`]); stopped when dropped.
#[derive(Debug)]
pub(crate) struct ReplayAhead {
    _wal: Option<wal_ahead::WalAhead>,
    _blocks: Option<prefetch::Prefetch>,
}

#[derive(Debug, Clone)]
pub struct Restores {
    storage: Arc<dyn Storage>,
    catalog: Catalog,
    archive: WalArchive,
    index: TimeIndex,
    config: RestoreConfig,
    pg_user: String,
    /// Instances this process started, by restore id.
    instances: Arc<Mutex<HashMap<String, instance::Running>>>,
    /// Consistent times of backups, computed once: (cluster, backup) → micros.
    consistent: Arc<Mutex<HashMap<(ClusterId, String), i64>>>,
    /// How many restore clones one tenant may hold.
    clones_per_tenant: u32,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A restore id: the UTC time and a short suffix unique within this server's life.
fn new_id() -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let salt = blake3::hash(format!("{}-{}-{n}", std::process::id(), crate::unix_now()).as_bytes());
    format!(
        "r{}-{}",
        crate::backup::utc_stamp(crate::unix_now()),
        &salt.to_hex()[..4]
    )
}

impl Planned {
    /// The last segment the restore needs, as a file name.
    pub fn through_name(&self) -> String {
        let (t, s) = self.plan.through;
        plan::segment_name(t, s, u64::from(self.segment_size))
    }
}

impl Restores {
    pub fn new(
        storage: Arc<dyn Storage>,
        catalog: Catalog,
        archive: WalArchive,
        config: RestoreConfig,
        pg_user: &str,
        clones_per_tenant: u32,
    ) -> Self {
        Self {
            clones_per_tenant,
            index: TimeIndex::new(archive.clone(), catalog.clone()),
            storage,
            catalog,
            archive,
            config,
            pg_user: pg_user.to_owned(),
            instances: Arc::default(),
            consistent: Arc::default(),
        }
    }

    pub fn time_index(&self) -> &TimeIndex {
        &self.index
    }

    fn cluster_exists(&self, cluster: &ClusterId) -> Result<(), RestoreError> {
        match self.catalog.cluster(cluster)? {
            Some(_) => Ok(()),
            None => Err(RestoreError::ClusterNotFound(cluster.clone())),
        }
    }

    /// The planner's view of a cluster. Blocking: may read segments not indexed yet.
    pub(crate) fn facts(
        &self,
        cluster: &ClusterId,
    ) -> Result<(plan::Facts, ClusterIndex), RestoreError> {
        self.cluster_exists(cluster)?;
        let index = self.index.load(cluster)?;
        let mut facts = plan::Facts {
            segment_size: u64::from(index.segment_size),
            ..plan::Facts::default()
        };
        for (t, entries) in &index.histories {
            facts.histories.insert(
                *t,
                entries.iter().map(|e| (e.parent, e.switch_lsn)).collect(),
            );
        }
        for (key, (_, s)) in &index.segments {
            if let Some(why) = &s.unreadable {
                facts.unreadable.insert(*key, why.clone());
            }
            facts.segments.insert(
                *key,
                plan::SegmentFacts {
                    end_lsn: s.end_lsn,
                    last_commit: s.last_commit,
                    max_micros: s.max_micros,
                    restore_points: s
                        .restore_points
                        .iter()
                        .map(|(n, l, _)| (n.clone(), *l))
                        .collect(),
                    tablespaces_created: s.tablespaces_created.clone(),
                },
            );
        }
        let seg = index.segment_size;
        for d in self.archive.damage(cluster)? {
            if let Some(key) = d
                .name
                .parse::<walvault_proto::WalFileName>()
                .ok()
                .and_then(|n| n.segment_number(seg).map(|s| (n.timeline(), s)))
            {
                facts.damaged.insert(key, d.reason);
            }
        }
        facts.pruned = self.catalog.pruned(cluster)?.unwrap_or_default();
        for b in self.catalog.backups(cluster)? {
            let consistent = self.consistent_micros(cluster, &index, &b)?;
            facts.backups.push(plan::BackupPoint {
                id: b.id.clone(),
                timeline: b.timeline,
                start_lsn: b.start_lsn,
                stop_lsn: b.stop_lsn,
                consistent_micros: consistent,
            });
        }
        Ok((facts, index))
    }

    /// The latest commit time a backup's consistent copy can hold: the backup's start, or a
    /// later commit written before its stop LSN (read from the segments around it).
    fn consistent_micros(
        &self,
        cluster: &ClusterId,
        index: &ClusterIndex,
        b: &crate::catalog::BackupRecord,
    ) -> Result<i64, RestoreError> {
        let key = (cluster.clone(), b.id.clone());
        if let Some(m) = self
            .consistent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(*m);
        }
        let seg = u64::from(index.segment_size.max(1));
        let first = (b.start_lsn.0 / seg).saturating_sub(1);
        let last = b.stop_lsn.0.saturating_sub(1) / seg;
        let mut m = b.start_unix.saturating_mul(1_000_000);
        let mut complete = true;
        for segno in first..=last {
            match index.segments.get(&(b.timeline, segno)) {
                // Unreadable: any commit before the stop LSN came before pg_backup_stop
                // returned, so its time is a safe (later) bound.
                Some((_, s)) if s.unreadable.is_some() => {
                    m = m.max(b.stop_unix.saturating_add(1).saturating_mul(1_000_000));
                    complete = false;
                }
                // Segments without commits need not be read.
                Some((_, s)) if s.max_micros.is_none() => {}
                Some((name, _)) => match self.index.read(cluster, name, None) {
                    Ok(events) => {
                        if let Some(t) = timeindex::max_commit_before(&events, b.stop_lsn) {
                            m = m.max(t);
                        }
                    }
                    Err(
                        IndexError::Unreadable { .. }
                        | IndexError::Archive(ArchiveError::Corrupt { .. }),
                    ) => {
                        m = m.max(b.stop_unix.saturating_add(1).saturating_mul(1_000_000));
                        complete = false;
                    }
                    Err(e) => return Err(e.into()),
                },
                None => complete = complete && segno < b.start_lsn.0 / seg,
            }
        }
        // Only cache what the archive fully answered.
        if complete {
            self.consistent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, m);
        }
        Ok(m)
    }

    /// The restorable window of every timeline. Blocking.
    pub fn window(&self, cluster: &ClusterId) -> Result<Vec<Window>, RestoreError> {
        let (facts, _) = self.facts(cluster)?;
        Ok(plan::windows(&facts))
    }

    /// Plans a restore. Blocking.
    pub fn plan(&self, spec: &RestoreSpec) -> Result<Planned, RestoreError> {
        let (facts, index) = self.facts(&spec.cluster)?;
        let plan_err = |source| RestoreError::Plan {
            cluster: spec.cluster.clone(),
            source: Box::new(source),
        };
        let timeline = match spec.timeline {
            Some(t) => t,
            None => plan::latest_timeline(&facts).ok_or_else(|| plan_err(PlanError::NoBackup))?,
        };
        let target = match &spec.target {
            TargetSpec::Time(t) => plan::Target::Time(*t),
            TargetSpec::Lsn(l) => plan::Target::Lsn(*l),
            TargetSpec::Xid(x) => plan::Target::Xid {
                xid: *x,
                lsn: self.find_xid(&spec.cluster, &facts, &index, timeline, *x)?,
            },
            TargetSpec::RestorePoint(n) => plan::Target::RestorePoint(n.clone()),
            TargetSpec::Immediate => plan::Target::Immediate,
            TargetSpec::Latest => plan::Target::Latest,
        };
        let plan = plan::plan(
            &facts,
            &plan::Request {
                target,
                timeline: Some(timeline),
                backup: spec.backup.clone(),
                action: spec.action,
                inclusive: spec.inclusive,
            },
        )
        .map_err(plan_err)?;
        let binding = self
            .archive
            .binding(&spec.cluster)?
            .ok_or_else(|| plan_err(PlanError::NoBackup))?;
        Ok(Planned {
            id: new_id(),
            cluster: spec.cluster.clone(),
            plan,
            pg_major: binding.pg_major,
            segment_size: binding.wal_segment_size,
            action: spec.action,
            latest: spec.target == TargetSpec::Latest,
        })
    }

    /// The LSN of `xid`'s commit or abort on `timeline`'s history: only segments whose range
    /// of transaction ids covers it are read.
    fn find_xid(
        &self,
        cluster: &ClusterId,
        facts: &plan::Facts,
        index: &ClusterIndex,
        timeline: TimelineId,
        xid: u32,
    ) -> Result<Lsn, RestoreError> {
        for ((t, _), (name, s)) in &index.segments {
            let covers =
                matches!((s.xid_min, s.xid_max), (Some(a), Some(b)) if a <= xid && xid <= b);
            if !covers {
                continue;
            }
            let events = match self.index.read(cluster, name, None) {
                Ok(e) => e,
                // Reported by the window; other segments may still hold it.
                Err(
                    IndexError::Unreadable { .. }
                    | IndexError::Archive(ArchiveError::Corrupt { .. }),
                ) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(lsn) = timeindex::find_xid(&events, xid) {
                if plan::on_history(facts, timeline, *t, lsn) {
                    return Ok(lsn);
                }
            }
        }
        Err(RestoreError::UnknownXid {
            cluster: cluster.clone(),
            xid,
            timeline,
        })
    }

    /// The datasets snapshot `id` of `cluster` is taken of (a backup's or a roll-forward
    /// chain's).
    pub fn snapshot_datasets(
        &self,
        cluster: &ClusterId,
        id: &str,
    ) -> Result<crate::layout::SnapshotDatasets, RestoreError> {
        let base = self
            .catalog
            .backups(cluster)?
            .into_iter()
            .find(|b| b.id == id)
            .and_then(|b| b.base);
        crate::layout::ClusterLayout::of(cluster)
            .and_then(|l| l.snapshot_of(base.as_deref()))
            .map_err(RestoreError::storage(format!(
                "{cluster}: name the datasets of snapshot {id}"
            )))
    }

    /// Clones the planned snapshot and records the restore. Blocking.
    pub fn open_clone(
        &self,
        planned: &Planned,
        delivery: &str,
        host: &str,
        path: &str,
    ) -> Result<RestoreClone, RestoreError> {
        let tenant = planned.cluster.tenant();
        let open = self
            .catalog
            .restores()?
            .iter()
            .filter(|r| r.cluster.tenant() == tenant)
            .count();
        if open >= self.clones_per_tenant as usize {
            return Err(RestoreError::TooManyClones {
                tenant: tenant.clone(),
                open,
                limit: self.clones_per_tenant,
            });
        }
        let source = self.snapshot_datasets(&planned.cluster, &planned.plan.backup.id)?;
        let c = RestoreClone::create(
            self.storage.as_ref(),
            &planned.cluster,
            &planned.id,
            &source,
            &planned.plan.backup.id,
        )?;
        let record = RestoreRecord {
            id: planned.id.clone(),
            cluster: planned.cluster.clone(),
            backup_id: planned.plan.backup.id.clone(),
            target: planned.plan.target.clone(),
            timeline: planned.plan.timeline.0,
            delivery: delivery.to_owned(),
            state: if delivery == "dir" {
                "delivering"
            } else {
                "recovering"
            }
            .to_owned(),
            port: None,
            conninfo: String::new(),
            host: host.to_owned(),
            path: path.to_owned(),
            created_unix: crate::unix_now(),
            duration_ms: 0,
            detail: String::new(),
            pg_major: planned.pg_major,
            reached_lsn: None,
            reached_micros: None,
        };
        if let Err(e) = self.save(&record) {
            let _ = c.destroy(self.storage.as_ref());
            return Err(e);
        }
        Ok(c)
    }

    /// Records a restore in the catalog and on its clone's dataset (`walvault:restore`), from
    /// which `catalog rebuild` recovers it.
    pub(crate) fn save(&self, record: &RestoreRecord) -> Result<(), RestoreError> {
        let c = RestoreClone::existing(&record.cluster, &record.id)?;
        let json = serde_json::to_string(record).unwrap_or_default();
        self.storage
            .set_property(c.dataset(), crate::layout::RESTORE_PROPERTY, &json)
            .map_err(RestoreError::storage(format!(
                "label restore {}",
                record.id
            )))?;
        self.catalog.put_restore(record)?;
        Ok(())
    }

    /// Destroys a clone and forgets its restore. Blocking.
    pub fn close_clone(&self, c: &RestoreClone) -> Result<(), RestoreError> {
        c.destroy(self.storage.as_ref())?;
        self.catalog.remove_restore(c.id())?;
        Ok(())
    }

    /// [`Restores::close_clone`], retried for a few seconds: a postmaster that just exited
    /// may hold the clone for a moment ("dataset is busy").
    pub fn close_clone_patiently(&self, c: &RestoreClone) -> Result<(), RestoreError> {
        c.destroy_patiently(self.storage.as_ref())?;
        self.catalog.remove_restore(c.id())?;
        Ok(())
    }

    pub fn restore(&self, id: &str) -> Result<RestoreRecord, RestoreError> {
        self.catalog
            .restore(id)?
            .ok_or_else(|| RestoreError::NotFound(id.to_owned()))
    }

    /// Restores, with the state of their instances checked now.
    pub fn list(&self, cluster: Option<&ClusterId>) -> Result<Vec<RestoreView>, RestoreError> {
        let mut out = Vec::new();
        for r in self.catalog.restores()? {
            if cluster.is_some_and(|c| *c != r.cluster) {
                continue;
            }
            out.push(self.view(r));
        }
        Ok(out)
    }

    pub(crate) fn view(&self, mut r: RestoreRecord) -> RestoreView {
        let clone = RestoreClone::existing(&r.cluster, &r.id);
        let clone_bytes = clone
            .as_ref()
            .ok()
            .and_then(|c| self.storage.space(c.dataset()).ok())
            .map(|s| s.used)
            .unwrap_or(0);
        if r.delivery == "instance" && matches!(r.state.as_str(), "ready" | "paused") {
            let running = clone
                .ok()
                .and_then(|c| c.data_dir(self.storage.as_ref()).ok())
                .is_some_and(|d| crate::pg::is_running(&d));
            if !running {
                r.state = "stopped".into();
            }
        }
        RestoreView {
            record: r,
            clone_bytes,
        }
    }

    /// Cleans up the restores a dead server process left half done (an instance still
    /// recovering, a directory delivery whose client is gone): their PostgreSQL is stopped,
    /// their clone destroyed and their record dropped, so none stays "recovering" forever.
    /// Call at start-up, before serving. Blocking; returns the ids cleaned up.
    pub fn clean_up_interrupted(&self) -> Result<Vec<String>, RestoreError> {
        let mut done = Vec::new();
        for r in self.catalog.restores()? {
            if !matches!(r.state.as_str(), "recovering" | "delivering") {
                continue;
            }
            let c = RestoreClone::existing(&r.cluster, &r.id)?;
            if let Err(e) = instance::stop_leftover(self, &r, &c) {
                tracing::error!(restore = %r.id, cluster = %r.cluster, "stop the PostgreSQL of an interrupted restore: {e}");
                continue;
            }
            match self.close_clone_patiently(&c) {
                Ok(()) => {
                    tracing::warn!(restore = %r.id, cluster = %r.cluster, state = %r.state, "a restore was interrupted by the server's stop; its clone is destroyed: run it again");
                    done.push(r.id);
                }
                Err(e) => {
                    tracing::error!(restore = %r.id, cluster = %r.cluster, "destroy the clone of an interrupted restore: {e}")
                }
            }
        }
        Ok(done)
    }

    /// Stops a restore's instance, destroys its clone and forgets it. Blocking.
    pub fn drop_restore(&self, id: &str) -> Result<RestoreView, RestoreError> {
        let record = self.restore(id)?;
        let view = self.view(record.clone());
        let running = self
            .instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let c = RestoreClone::existing(&record.cluster, id)?;
        match running {
            Some(r) => r.stop(),
            None => instance::stop_leftover(self, &record, &c),
        }
        .map_err(|detail| RestoreError::Instance {
            id: id.to_owned(),
            cluster: record.cluster.clone(),
            detail,
        })?;
        self.close_clone(&c)?;
        tracing::info!(restore = id, cluster = %record.cluster, "restore dropped");
        Ok(view)
    }

    pub(crate) fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }
    pub(crate) fn config(&self) -> &RestoreConfig {
        &self.config
    }

    /// Before PostgreSQL recovers the clone whose data directory is `data`: moves its
    /// `pg_wal` to a private local directory named after `label` (`restore.local_wal_dir`;
    /// nothing when that is ""), so that restored segments do not cross FUSE, and returns
    /// where segments are unpacked ahead of recovery, for [`Restores::read_ahead`] (`None`:
    /// not at all, with `pg_wal` in the clone or `restore.wal_ahead = 0`).
    pub(crate) fn move_pg_wal_out(
        &self,
        data: &Path,
        label: &str,
    ) -> Result<Option<PathBuf>, RestoreError> {
        let Some(dir) = self.config.local_wal(label) else {
            return Ok(None);
        };
        let owner = crate::backup::files::Owner::lookup(&self.pg_user);
        crate::pg::localwal::move_out(data, &dir, owner).map_err(RestoreError::io(format!(
            "move pg_wal of {} to {}",
            data.display(),
            dir.display()
        )))?;
        Ok((self.config.wal_ahead > 0).then(|| wal_ahead::dir(&dir)))
    }

    /// Runs ahead of PostgreSQL's recovery of `planned` on the copy in `dirs`: reads the
    /// blocks it will need (`restore.prefetch`) and unpacks its segments into `wal_ahead`
    /// (from [`Restores::move_pg_wal_out`]); both stop when the result is dropped.
    pub(crate) fn read_ahead(
        &self,
        planned: &Planned,
        dirs: prefetch::CopyDirs,
        wal_ahead: Option<&Path>,
        label: &str,
    ) -> ReplayAhead {
        let seg = u64::from(planned.segment_size);
        let b = &planned.plan.backup;
        let ahead = prefetch::Ahead {
            cluster: planned.cluster.clone(),
            from: (b.timeline, b.start_lsn.0 / seg),
            through: planned.plan.through,
            segment_size: planned.segment_size,
            pg_major: planned.pg_major,
        };
        let wal = wal_ahead.and_then(|dir| {
            wal_ahead::WalAhead::start(
                self.archive.clone(),
                ahead.clone(),
                dir.to_owned(),
                crate::backup::files::Owner::lookup(&self.pg_user),
                self.config.wal_ahead as usize,
                label,
            )
        });
        let blocks = self
            .config
            .prefetch
            .then(|| prefetch::Prefetch::start(self.archive.clone(), ahead, dirs, label));
        ReplayAhead {
            _wal: wal,
            _blocks: blocks,
        }
    }

    pub(crate) fn pg_user(&self) -> &str {
        &self.pg_user
    }
    pub(crate) fn archive(&self) -> &WalArchive {
        &self.archive
    }
    pub(crate) fn register(&self, id: &str, r: instance::Running) {
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), r);
    }
    pub(crate) fn ports_taken(&self) -> std::collections::HashSet<u16> {
        let mut taken: std::collections::HashSet<u16> = self
            .catalog
            .restores()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.port)
            .collect();
        taken.extend(
            self.instances
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .map(|r| r.port()),
        );
        taken
    }
}

/// A restore as listed.
#[derive(Debug, Clone)]
pub struct RestoreView {
    pub record: RestoreRecord,
    pub clone_bytes: u64,
}
