//! The prune executor: gathers what the planner needs from the catalog, and carries out its
//! plan.
//!
//! Invariants:
//! - the catalog never points at what is gone: an item leaves the catalog before the storage
//!   destroys it (a snapshot ZFS refuses to destroy goes back into the catalog);
//! - a prune killed at any point is finished by the next one: the items it set out to destroy
//!   are recorded (durably) before the first is touched, and that job is completed first;
//! - one prune per cluster at a time.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use walvault_proto::{ClusterId, WalFileName};

use super::plan::{self, PruneInput, PrunePlan};
use super::{Policies, RetentionError};
use crate::backup::Backups;
use crate::catalog::Catalog;
use crate::layout::ClusterLayout;
use crate::restore::Restores;
use crate::rollforward::RollForward;
use crate::storage::{Storage, StorageError};
use crate::wal::WalArchive;

/// What a prune set out to destroy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Job {
    started_unix: i64,
    backups: Vec<String>,
    wal: Vec<String>,
}

/// What a prune did.
#[derive(Debug, Clone)]
pub struct PruneOutcome {
    pub plan: PrunePlan,
    pub executed: bool,
    pub backups_dropped: usize,
    pub wal_dropped: usize,
    /// Items of a prune that had been interrupted, finished first.
    pub resumed: usize,
    /// Items that could not be destroyed now, with why (they stay, and stay catalogued).
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Pruner {
    storage: Arc<dyn Storage>,
    catalog: Catalog,
    archive: WalArchive,
    backups: Backups,
    restores: Restores,
    policies: Policies,
    rollforward: RollForward,
    busy: Arc<Mutex<HashSet<ClusterId>>>,
}

/// Releases a cluster's prune slot.
struct Slot<'a> {
    busy: &'a Mutex<HashSet<ClusterId>>,
    cluster: ClusterId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.cluster);
    }
}

impl Pruner {
    pub fn new(
        storage: Arc<dyn Storage>,
        catalog: Catalog,
        archive: WalArchive,
        backups: Backups,
        restores: Restores,
        policies: Policies,
        rollforward: RollForward,
    ) -> Self {
        Self {
            storage,
            catalog,
            archive,
            backups,
            restores,
            policies,
            rollforward,
            busy: Arc::default(),
        }
    }

    /// The plan for `cluster` at `now_unix`. Blocking.
    pub fn plan(&self, cluster: &ClusterId, now_unix: i64) -> Result<PrunePlan, RetentionError> {
        let policy = self.policies.effective(cluster)?;
        let (facts, _) = self
            .restores
            .facts(cluster)
            .map_err(|e| RetentionError::Restore(Box::new(e)))?;
        let records = self.catalog.backups(cluster)?;
        let backup_times: BTreeMap<String, i64> = records
            .iter()
            .map(|b| (b.id.clone(), b.stop_unix))
            .collect();
        // The newest snapshot proven to restore stays, whatever the rules say.
        let newest_verified = records
            .iter()
            .filter(|b| b.receipt.as_ref().is_some_and(|r| r.verified))
            .max_by(|a, b| (a.stop_lsn, &a.id).cmp(&(b.stop_lsn, &b.id)))
            .map(|b| b.id.clone());
        let wal_files: Vec<String> = self
            .archive
            .list(cluster)
            .map_err(|e| RetentionError::Archive(Box::new(e)))?
            .into_iter()
            .map(|w| w.name)
            .collect();
        let in_use: BTreeSet<String> = self
            .catalog
            .restores()?
            .into_iter()
            .filter(|r| r.cluster == *cluster)
            .map(|r| r.backup_id)
            .collect();
        // A roll-forward chain is a clone of its base backup: the base stays while it does
        // (the chain goes once retention has pruned its snapshots).
        let mut held: BTreeMap<String, String> = self
            .rollforward
            .chain_bases(cluster)
            .map_err(|e| RetentionError::RollForward(Box::new(e)))?
            .into_iter()
            .map(|b| (b, "the base of a roll-forward chain".to_owned()))
            .collect();
        if let Some(id) = newest_verified {
            held.entry(id)
                .or_insert_with(|| "the newest verified snapshot".to_owned());
        }
        let running_backup_start = self.backups.running_start(cluster).flatten();
        Ok(plan::plan(&PruneInput {
            now_unix,
            policy,
            facts: &facts,
            backup_times: &backup_times,
            wal_files: &wal_files,
            in_use: &in_use,
            held: &held,
            running_backup_start,
        }))
    }

    /// Plans and, unless `dry_run`, destroys what no rule keeps; an interrupted prune of the
    /// cluster is finished first. Blocking.
    pub fn prune(
        &self,
        cluster: &ClusterId,
        now_unix: i64,
        dry_run: bool,
    ) -> Result<PruneOutcome, RetentionError> {
        if !self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.clone())
        {
            return Err(RetentionError::Busy(cluster.clone()));
        }
        let _slot = Slot {
            busy: &self.busy,
            cluster: cluster.clone(),
        };
        let mut skipped = Vec::new();
        let mut resumed = 0;
        if !dry_run {
            if let Some(job) = self.catalog.prune_job::<Job>(cluster)? {
                tracing::info!(cluster = %cluster, items = job.backups.len() + job.wal.len(), "finishing an interrupted prune");
                resumed = job.backups.len() + job.wal.len();
                skipped.extend(
                    self.execute(cluster, &job)?
                        .into_iter()
                        .map(|(id, why)| format!("{id}: {why}")),
                );
                self.catalog.remove_prune_job(cluster)?;
            }
        }
        if !dry_run {
            self.drop_empty_chains(cluster)?;
        }
        let plan = self.plan(cluster, now_unix)?;
        let job = Job {
            started_unix: now_unix,
            backups: plan.dropped_backups().map(|s| s.to_owned()).collect(),
            wal: plan.dropped_wal().map(|s| s.to_owned()).collect(),
        };
        if dry_run || (job.backups.is_empty() && job.wal.is_empty()) {
            return Ok(PruneOutcome {
                plan,
                executed: !dry_run,
                backups_dropped: 0,
                wal_dropped: 0,
                resumed,
                skipped,
            });
        }
        self.catalog.put_prune_job(cluster, &job)?;
        let kept_after_all = self.execute(cluster, &job)?;
        self.catalog.remove_prune_job(cluster)?;
        // Chains whose last snapshot just went: their bases go at the next prune.
        self.drop_empty_chains(cluster)?;
        let backups_dropped = job.backups.len() - kept_after_all.len();
        let wal_dropped = job.wal.len();
        tracing::info!(cluster = %cluster, backups = backups_dropped, wal = wal_dropped, "pruned");
        skipped.extend(
            kept_after_all
                .into_iter()
                .map(|(id, why)| format!("{id}: {why}")),
        );
        Ok(PruneOutcome {
            plan,
            executed: true,
            backups_dropped,
            wal_dropped,
            resumed,
            skipped,
        })
    }

    fn drop_empty_chains(&self, cluster: &ClusterId) -> Result<(), RetentionError> {
        self.rollforward
            .drop_empty_chains(cluster)
            .map(|_| ())
            .map_err(|e| RetentionError::RollForward(Box::new(e)))
    }

    /// Destroys a job's items, each out of the catalog first; returns (id, why) for the
    /// backups the storage would not destroy now (they are catalogued again).
    fn execute(
        &self,
        cluster: &ClusterId,
        job: &Job,
    ) -> Result<Vec<(String, String)>, RetentionError> {
        let l = ClusterLayout::of(cluster)
            .map_err(storage_err(format!("name the datasets of {cluster}")))?;
        let records: BTreeMap<String, _> = self
            .catalog
            .backups(cluster)?
            .into_iter()
            .map(|b| (b.id.clone(), b))
            .collect();
        let mut skipped = Vec::new();
        for id in &job.backups {
            // A backup's snapshot is of `db`; a roll-forward snapshot is of its chain.
            let parent = match records.get(id).and_then(|r| r.base.as_deref()) {
                Some(base) => l
                    .chain(base)
                    .map_err(storage_err(format!("name chain {base} of {cluster}")))?,
                None => l.db.clone(),
            };
            self.catalog.remove_backup(cluster, id)?;
            match self.storage.destroy_snapshot(&parent, id, true) {
                Ok(()) | Err(StorageError::SnapshotNotFound { .. }) => {
                    tracing::info!(cluster = %cluster, backup = %id, "backup pruned");
                }
                Err(e) => {
                    // A restore cloned it since the plan, or ZFS is busy: it stays.
                    if let Some(r) = records.get(id) {
                        self.catalog.put_backup(cluster, r)?;
                    }
                    skipped.push((id.clone(), e.to_string()));
                }
            }
        }
        // Through the archive: it owns the files, their lock and the continuity ledger.
        let names: Vec<WalFileName> = job.wal.iter().filter_map(|n| n.parse().ok()).collect();
        self.archive
            .remove(cluster, &names)
            .map_err(|e| RetentionError::Archive(Box::new(e)))?;
        Ok(skipped)
    }
}

fn storage_err(context: impl Into<String>) -> impl FnOnce(StorageError) -> RetentionError {
    super::storage_err(context)
}
