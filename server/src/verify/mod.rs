//! Verification (DESIGN §5, §7): proof, ahead of any need, that a cluster's archive and
//! backups restore. For each cluster: the WAL directory is reconciled with the catalog; every
//! archived file is read back against the size and blake3 it was archived with (and a
//! segment's page header against the cluster); every hole of the continuity ledger and every
//! segment the time index cannot decode is listed; every backup's snapshots must exist and its
//! own WAL be complete. The report is kept (the last one per cluster) for the status views.
//!
//! Damage found is recorded by the archive (and logged at ERROR there), which refuses to hand
//! the file out from then on; a push of its good copy repairs it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use walvault_proto::{ClusterId, WalFileName};

use crate::catalog::{Catalog, CatalogError};
use crate::layout::ClusterLayout;
use crate::restore::{RestoreError, Restores};
use crate::storage::{DatasetPath, Storage, StorageError};
use crate::wal::{ArchiveError, WalArchive};

mod snapshot;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cluster {0} does not exist")]
    ClusterNotFound(ClusterId),
    #[error("{cluster} has no backup or roll-forward snapshot {id}; see walvault backups")]
    SnapshotNotFound { cluster: ClusterId, id: String },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Restore(#[from] Box<RestoreError>),
    #[error("{cluster}: {context}: {source}")]
    Storage {
        cluster: ClusterId,
        context: String,
        #[source]
        source: Box<StorageError>,
    },
}

/// What kind of problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    /// An archived file fails its checks.
    Damaged,
    /// A catalogued file is gone from the disk.
    Missing,
    /// A hole in a timeline's history that is not the retention policy's doing.
    Hole,
    /// A segment whose records the time index cannot decode.
    Unreadable,
    /// A backup whose snapshot is gone or whose own WAL is incomplete.
    Backup,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Damaged => "damaged",
            Self::Missing => "missing",
            Self::Hole => "hole",
            Self::Unreadable => "unreadable",
            Self::Backup => "backup",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The file, hole or backup.
    pub name: String,
    pub detail: String,
}

/// One cluster's verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub cluster: ClusterId,
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub backups_checked: u64,
    /// Files found on disk but not in the catalog, catalogued now.
    pub catalogued: u64,
    pub problems: Vec<Problem>,
    pub duration_ms: u64,
    pub verified_unix: i64,
}

/// A cluster's health as the status views show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Holes that are not the retention policy's doing (damaged files included).
    pub holes: usize,
    pub damaged: usize,
    /// The last verification: when and how many problems (`None`: never).
    pub verified: Option<(i64, usize)>,
}

#[derive(Debug, Clone)]
pub struct Verifier {
    storage: Arc<dyn Storage>,
    catalog: Catalog,
    archive: WalArchive,
    restores: Restores,
}

impl Verifier {
    pub fn new(
        storage: Arc<dyn Storage>,
        catalog: Catalog,
        archive: WalArchive,
        restores: Restores,
    ) -> Self {
        Self {
            storage,
            catalog,
            archive,
            restores,
        }
    }

    /// Verifies one cluster and keeps the report. Blocking; reads every archived file.
    pub fn verify(&self, cluster: &ClusterId) -> Result<Report, VerifyError> {
        let started = Instant::now();
        if self.catalog.cluster(cluster)?.is_none() {
            return Err(VerifyError::ClusterNotFound(cluster.clone()));
        }
        let mut report = Report {
            cluster: cluster.clone(),
            files_checked: 0,
            bytes_checked: 0,
            backups_checked: 0,
            catalogued: 0,
            problems: Vec::new(),
            duration_ms: 0,
            verified_unix: crate::unix_now(),
        };
        let problem = |kind, name: String, detail: String| Problem { kind, name, detail };

        let reconciled = self.archive.reconcile(cluster)?;
        report.catalogued = reconciled.catalogued.len() as u64;
        for name in &reconciled.missing {
            report.problems.push(problem(
                ProblemKind::Missing,
                name.clone(),
                "catalogued, but gone from the WAL directory; push it again from a host that \
                 has it"
                    .into(),
            ));
        }
        for (name, why) in &reconciled.refused {
            report
                .problems
                .push(problem(ProblemKind::Damaged, name.clone(), why.clone()));
        }

        for w in self.archive.list(cluster)? {
            let Ok(name) = w.name.parse::<WalFileName>() else {
                continue;
            };
            if reconciled.missing.contains(&w.name) {
                continue;
            }
            report.files_checked += 1;
            match self.archive.check_file(cluster, &name)? {
                Ok(size) => report.bytes_checked += size,
                Err(why) => {
                    report
                        .problems
                        .push(problem(ProblemKind::Damaged, w.name.clone(), why))
                }
            }
        }

        let ledger = self.archive.ledger(cluster)?;
        for h in ledger.unexpected_holes() {
            report.problems.push(problem(
                ProblemKind::Hole,
                h.files(ledger.segment_size),
                h.describe(ledger.segment_size),
            ));
        }

        let (facts, _) = self.restores.facts(cluster).map_err(Box::new)?;
        for ((t, s), why) in &facts.unreadable {
            if why.starts_with("damaged") {
                continue;
            }
            report.problems.push(problem(
                ProblemKind::Unreadable,
                crate::restore::plan::segment_name(*t, *s, facts.segment_size),
                why.clone(),
            ));
        }

        self.check_backups(cluster, &facts, &mut report)?;
        report.duration_ms = started.elapsed().as_millis() as u64;
        self.catalog.put_verification(cluster, &report)?;
        if report.problems.is_empty() {
            tracing::info!(%cluster, files = report.files_checked, bytes = report.bytes_checked, backups = report.backups_checked, ms = report.duration_ms, "verified: every archived file and backup checks out");
        } else {
            tracing::warn!(%cluster, problems = report.problems.len(), files = report.files_checked, "verification found problems: {}", report.problems.iter().map(|p| format!("{} {}", p.kind.as_str(), p.name)).collect::<Vec<_>>().join(", "));
        }
        Ok(report)
    }

    /// Each backup's snapshots exist, and its own WAL (start to stop) is in the archive.
    fn check_backups(
        &self,
        cluster: &ClusterId,
        facts: &crate::restore::plan::Facts,
        report: &mut Report,
    ) -> Result<(), VerifyError> {
        let storage_err = |context: &str| {
            let (cluster, context) = (cluster.clone(), context.to_owned());
            move |source| VerifyError::Storage {
                cluster,
                context,
                source: Box::new(source),
            }
        };
        let l = ClusterLayout::of(cluster).map_err(storage_err("name its datasets"))?;
        let mut listed: BTreeMap<DatasetPath, Vec<String>> = BTreeMap::new();
        let windows = crate::restore::plan::windows(facts);
        for b in self.catalog.backups(cluster)? {
            report.backups_checked += 1;
            if let Some(r) = b.receipt.as_ref().filter(|r| !r.verified) {
                report.problems.push(Problem {
                    kind: ProblemKind::Backup,
                    name: b.id.clone(),
                    detail: format!(
                        "its snapshot failed verification at {}: {}",
                        walvault_proto::utc_time_micros(r.checked_unix.saturating_mul(1_000_000)),
                        r.errors.join("; ")
                    ),
                });
            }
            // A backup's snapshots are of `db`, a roll-forward snapshot's of its chain.
            let where_ = l
                .snapshot_of(b.base.as_deref())
                .map_err(storage_err("name the datasets of a snapshot"))?;
            for (what, ds) in [("", &where_.parent), (" of PGDATA", &where_.data)] {
                if !listed.contains_key(ds) {
                    let names = match self.storage.snapshots(ds) {
                        Ok(s) => s.into_iter().map(|s| s.name).collect(),
                        Err(StorageError::DatasetNotFound(_)) => Vec::new(),
                        Err(e) => return Err(storage_err("list the backups' snapshots")(e)),
                    };
                    listed.insert(ds.clone(), names);
                }
                let snaps = &listed[ds];
                if !snaps.contains(&b.id) {
                    report.problems.push(Problem {
                        kind: ProblemKind::Backup,
                        name: b.id.clone(),
                        detail: format!(
                            "its snapshot{what} {ds}@{} is gone; the backup cannot be restored",
                            b.id
                        ),
                    });
                }
            }
            let starts_a_span = windows.iter().any(|w| {
                w.spans
                    .iter()
                    .any(|s| s.from.stop_lsn <= b.stop_lsn && b.stop_lsn <= s.end_lsn)
            });
            if !starts_a_span {
                report.problems.push(Problem {
                    kind: ProblemKind::Backup,
                    name: b.id.clone(),
                    detail: format!(
                        "the archive lacks WAL it needs from {} to {} to become consistent",
                        b.start_lsn, b.stop_lsn
                    ),
                });
            }
        }
        Ok(())
    }

    /// The health of a cluster for the status views. Blocking.
    pub fn health(&self, cluster: &ClusterId) -> Result<Health, VerifyError> {
        let ledger = self.archive.ledger(cluster)?;
        let damaged = self.archive.damage(cluster)?.len();
        let verified = self
            .catalog
            .verification::<Report>(cluster)?
            .map(|r| (r.verified_unix, r.problems.len()));
        Ok(Health {
            holes: ledger.unexpected_holes().len(),
            damaged,
            verified,
        })
    }
}
