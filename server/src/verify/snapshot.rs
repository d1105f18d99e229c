//! Every snapshot verified (DESIGN §7): a backup or roll-forward snapshot is cloned under
//! `<cluster>/verify/<id>`, PostgreSQL recovers the clone to consistency from the local
//! archive and is promoted (the clone is thrown away), and then:
//! - one query per table (`count(*)`, which reads every heap block: a page that fails its
//!   checksum is an error);
//! - `amcheck` where the server's PostgreSQL has it: `verify_heapam` on every table
//!   (PostgreSQL 14+) and `bt_index_check(heapallindexed)` on every B-tree index;
//! - after a clean stop, `pg_checksums --check` where the cluster has data checksums: every
//!   block of every relation file read and checked;
//! - the WAL from the snapshot to the next one (or to the end of the archive) present.
//!
//! The result is a [`Receipt`] in the snapshot's catalog record: verified or failed, the
//! checks that ran, the time from the clone to the first answered query, the duration and
//! the errors. A failure is logged at ERROR and listed by `walvault backups` and
//! `walvault verify`. Failures of the server itself (the storage cannot clone, say) are
//! errors, not receipts: the snapshot stays pending and is tried again.

use std::time::Instant;

use walvault_proto::ClusterId;

use super::{Verifier, VerifyError};
use crate::catalog::{BackupRecord, Receipt};
use crate::layout::ClusterLayout;
use crate::pg::{self, Goal, Instance, InstanceSpec, PgBinaries};
use crate::process;
use crate::restore::plan::Action;
use crate::restore::{RestoreClone, RestoreSpec, TargetSpec};
use crate::storage::StorageError;

/// At most this many error lines are kept in a receipt.
const MAX_ERRORS: usize = 10;

impl Verifier {
    fn storage_fail(
        cluster: &ClusterId,
        context: impl Into<String>,
    ) -> impl FnOnce(StorageError) -> VerifyError {
        let cluster = cluster.clone();
        let context = context.into();
        move |source| VerifyError::Storage {
            cluster,
            context,
            source: Box::new(source),
        }
    }

    /// The snapshots of `cluster` never verified, newest first.
    pub fn pending(&self, cluster: &ClusterId) -> Result<Vec<BackupRecord>, VerifyError> {
        let mut out: Vec<BackupRecord> = self
            .catalog
            .backups(cluster)?
            .into_iter()
            .filter(|b| b.receipt.is_none())
            .collect();
        out.sort_by(|a, b| (b.stop_lsn, &b.id).cmp(&(a.stop_lsn, &a.id)));
        Ok(out)
    }

    /// Verifies the newest pending snapshot of `cluster`, if any. Blocking.
    pub fn check_next(&self, cluster: &ClusterId) -> Result<Option<Receipt>, VerifyError> {
        match self.pending(cluster)?.first() {
            Some(b) => self.check_snapshot(cluster, &b.id).map(Some),
            None => Ok(None),
        }
    }

    /// Clones, recovers and checks snapshot `id` of `cluster`, and records the receipt.
    /// Blocking: it reads every relation block of the snapshot.
    pub fn check_snapshot(&self, cluster: &ClusterId, id: &str) -> Result<Receipt, VerifyError> {
        let started = Instant::now();
        let records = self.catalog.backups(cluster)?;
        let Some(mut record) = records.iter().find(|b| b.id == id).cloned() else {
            return Err(VerifyError::SnapshotNotFound {
                cluster: cluster.clone(),
                id: walvault_proto::echo(id),
            });
        };
        let mut run = Run::default();
        self.check_wal_to_next(cluster, &record, &records, &mut run)?;
        self.check_copy(cluster, &record, started, &mut run)?;
        let receipt = Receipt {
            verified: run.errors.is_empty(),
            checked_unix: crate::unix_now(),
            checks: run.checks,
            first_query_ms: run.first_query_ms,
            duration_ms: started.elapsed().as_millis() as u64,
            tables: run.tables,
            indexes: run.indexes,
            errors: run.errors.into_iter().take(MAX_ERRORS).collect(),
        };
        if receipt.verified {
            tracing::info!(
                cluster = %cluster, snapshot = id, first_query_ms = receipt.first_query_ms,
                ms = receipt.duration_ms, tables = receipt.tables, indexes = receipt.indexes,
                checks = ?receipt.checks, "snapshot verified"
            );
        } else {
            tracing::error!(
                cluster = %cluster, snapshot = id, errors = ?receipt.errors,
                "snapshot FAILED its verification: a restore from it may not work; take a new backup"
            );
        }
        record.receipt = Some(receipt.clone());
        // Pruned meanwhile: nothing to record.
        if self
            .catalog
            .backups(cluster)?
            .iter()
            .any(|b| b.id == record.id)
        {
            self.catalog.put_backup(cluster, &record)?;
            self.record_on_snapshot(cluster, &record.id, &receipt);
        }
        Ok(receipt)
    }

    /// The receipt on the snapshot too, so that `catalog rebuild` finds it. The catalog holds
    /// it already: a failure here costs a second verification after a rebuild, no more.
    fn record_on_snapshot(&self, cluster: &ClusterId, id: &str, receipt: &Receipt) {
        let set = self
            .restores
            .snapshot_datasets(cluster, id)
            .map_err(|e| e.to_string())
            .and_then(|ds| {
                self.restores
                    .storage()
                    .set_snapshot_property(
                        &ds.parent,
                        id,
                        crate::layout::backup_props::RECEIPT,
                        &crate::backup::props::receipt_property(receipt),
                    )
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = set {
            tracing::warn!(cluster = %cluster, snapshot = id, error = %e, "could not record the receipt on the snapshot (the catalog has it)");
        }
    }

    /// The WAL from the snapshot to the next (or to the end of the archive) is all there.
    fn check_wal_to_next(
        &self,
        cluster: &ClusterId,
        record: &BackupRecord,
        records: &[BackupRecord],
        run: &mut Run,
    ) -> Result<(), VerifyError> {
        run.checks.push("WAL to the next snapshot".into());
        let next = records
            .iter()
            .filter(|b| b.stop_lsn > record.stop_lsn)
            .min_by_key(|b| b.stop_lsn);
        let windows = self
            .restores
            .window(cluster)
            .map_err(|e| VerifyError::Restore(Box::new(e)))?;
        let span = windows
            .iter()
            .flat_map(|w| w.spans.iter().map(move |s| (s, w.segment_size)))
            .filter(|(s, _)| s.from.stop_lsn <= record.stop_lsn && record.stop_lsn <= s.end_lsn)
            .max_by_key(|(s, _)| s.end_lsn);
        match (span, next) {
            (None, _) => run.errors.push(format!(
                "the archive lacks WAL snapshot {} needs from {} to {} to become consistent",
                record.id, record.start_lsn, record.stop_lsn
            )),
            (Some((s, seg)), Some(n)) if s.until.is_some() && s.end_lsn < n.stop_lsn => {
                run.errors.push(format!(
                    "the WAL from snapshot {} to the next one ({}, at {}) is not all archived: \
                     it stops at {}{}",
                    record.id,
                    n.id,
                    n.stop_lsn,
                    s.end_lsn,
                    s.until
                        .as_ref()
                        .map(|h| format!(" ({})", h.describe(seg)))
                        .unwrap_or_default()
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Recovers a clone of the snapshot to consistency and checks what it holds.
    fn check_copy(
        &self,
        cluster: &ClusterId,
        record: &BackupRecord,
        started: Instant,
        run: &mut Run,
    ) -> Result<(), VerifyError> {
        let spec = |target| RestoreSpec {
            cluster: cluster.clone(),
            target,
            timeline: None,
            backup: Some(record.id.clone()),
            action: Action::Pause,
            inclusive: true,
        };
        // Recovery to `immediate` stops at the first record after consistency; a snapshot at
        // the very end of the archive (a roll-forward's, often) has none yet, and PostgreSQL
        // fails a recovery that ends before its target: recover it to the end instead.
        let at_end = self
            .restores
            .plan(&spec(TargetSpec::Latest))
            .is_ok_and(|p| p.plan.reach <= record.stop_lsn);
        let target = if at_end {
            TargetSpec::Latest
        } else {
            TargetSpec::Immediate
        };
        let planned = match self.restores.plan(&spec(target)) {
            Ok(p) => p,
            Err(e) => {
                run.errors
                    .push(format!("it cannot be restored to consistency: {e}"));
                return Ok(());
            }
        };
        if let Some(c) = &planned.plan.creates_tablespace {
            // Replaying it would make the tablespace's directory at the source's path on
            // this machine, outside every clone.
            run.errors.push(format!(
                "it cannot be checked on this server: reaching consistency replays the \
                 creation of tablespace {} at {} (LSN {}); the next base backup can be",
                c.oid, c.location, c.lsn
            ));
            return Ok(());
        }
        let storage = self.restores.storage();
        let l = ClusterLayout::of(cluster).map_err(Self::storage_fail(cluster, "name datasets"))?;
        let source = self
            .restores
            .snapshot_datasets(cluster, &record.id)
            .map_err(|e| VerifyError::Restore(Box::new(e)))?;
        self.discard_check(cluster, &record.id)?;
        let clone =
            RestoreClone::create_in(storage, cluster, &l.verify, &record.id, &source, &record.id)
                .map_err(|e| VerifyError::Restore(Box::new(e)))?;
        let socket_dir = pg::socket_dir("vf");
        let outcome = self.recover_and_check(&clone, &planned, at_end, &socket_dir, started, run);
        let _ = std::fs::remove_dir_all(&socket_dir);
        if let Err(e) = outcome {
            run.errors.push(e);
        }
        clone
            .destroy_patiently(storage)
            .map_err(|e| VerifyError::Restore(Box::new(e)))?;
        Ok(())
    }

    /// Starts PostgreSQL on the clone, waits for consistency, promotes, runs the checks,
    /// stops it and runs `pg_checksums`. `Err`: a failure of the snapshot, in words.
    fn recover_and_check(
        &self,
        clone: &RestoreClone,
        planned: &crate::restore::Planned,
        latest: bool,
        socket_dir: &std::path::Path,
        started: Instant,
        run: &mut Run,
    ) -> Result<(), String> {
        let storage = self.restores.storage();
        let cfg = self.restores.config();
        let bins = PgBinaries::locate(&cfg.pg_bin, planned.pg_major).map_err(|e| e.to_string())?;
        let data = clone.data_dir(storage).map_err(|e| e.to_string())?;
        let dirs = clone
            .point_tablespaces_home(storage)
            .map_err(|e| e.to_string())?;
        let spec = InstanceSpec {
            pgdata: data.clone(),
            port: 5432,
            listen_address: String::new(),
            socket_dir: socket_dir.to_owned(),
            log_file: data.join("walvault-verify.log"),
            os_user: self.restores.pg_user().to_owned(),
            superuser: cfg.superuser.clone(),
        };
        let wal_ahead = self
            .restores
            .move_pg_wal_out(
                &data,
                &format!("{}-verify-{}", planned.cluster, planned.plan.backup.id),
            )
            .map_err(|e| e.to_string())?;
        let mut settings = planned.plan.settings.clone();
        settings.extend(cfg.tuning(planned.pg_major, crate::mounts::is_fuse(&data)));
        // A throwaway copy: its fsyncs would only cost zfs-fuse requests.
        settings.push(("fsync".into(), "off".into()));
        settings.push((
            "restore_command".into(),
            crate::restore::instance::restore_command(
                &self.restores,
                planned,
                wal_ahead.as_deref(),
            )
            .map_err(|e| e.to_string())?,
        ));
        pg::prepare(
            &spec,
            &format!("verification of {}", planned.plan.backup.id),
            &settings,
            "recovery.signal",
        )
        .map_err(|e| e.to_string())?;
        let ahead = self.restores.read_ahead(
            planned,
            crate::restore::prefetch::CopyDirs {
                data: data.clone(),
                tablespaces: dirs.clone(),
            },
            wal_ahead.as_deref(),
            &format!("verification of {}", planned.plan.backup.id),
        );
        let instance = Instance::start(&bins, spec).map_err(|e| e.to_string())?;
        crate::fault::point("verify-recovering");
        let checked = (|| {
            let deadline = Instant::now() + cfg.wait;
            if latest {
                // No target: PostgreSQL promotes itself at the end of the archive.
            } else {
                instance
                    .wait_for(Goal::Paused, deadline, &mut |_| {})
                    .map_err(|e| format!("recovery to consistency failed: {e}"))?;
                instance.promote().map_err(|e| e.to_string())?;
            }
            instance
                .wait_for(Goal::Promoted, deadline, &mut |_| {})
                .map_err(|e| e.to_string())?;
            drop(ahead);
            instance.query("SELECT 1").map_err(|e| e.to_string())?;
            run.first_query_ms = started.elapsed().as_millis() as u64;
            run.checks.push("recovered to consistency".into());
            check_databases(&instance, planned.pg_major, run)
        })();
        let checksums_on = instance
            .query("SHOW data_checksums")
            .map(|v| v == "on")
            .unwrap_or(false);
        if let Err(e) = instance.stop() {
            tracing::warn!(data = %data.display(), "stop the verification instance: {e}");
        }
        checked?;
        if checksums_on {
            run.checks
                .push("page checksums of every relation block".into());
            let mut cmd = pg::program_command(&bins, self.restores.pg_user(), "pg_checksums")
                .map_err(|e| e.to_string())?;
            cmd.arg("--check").arg("-D").arg(&data).current_dir("/");
            if let Err(e) = process::run(&mut cmd) {
                let out = e.stderr().to_owned();
                let lines: Vec<&str> = out
                    .lines()
                    .filter(|l| l.contains("checksum verification failed") || l.contains("error"))
                    .take(MAX_ERRORS)
                    .collect();
                let detail = if lines.is_empty() {
                    e.to_string()
                } else {
                    lines.join("; ")
                };
                run.errors.push(format!("pg_checksums --check: {detail}"));
            }
        }
        Ok(())
    }

    /// Destroys a verification clone of snapshot `id` left by an earlier process, stopping
    /// its PostgreSQL first.
    fn discard_check(&self, cluster: &ClusterId, id: &str) -> Result<(), VerifyError> {
        let storage = self.restores.storage();
        let l = ClusterLayout::of(cluster).map_err(Self::storage_fail(cluster, "name datasets"))?;
        let ds = l
            .verify
            .join(id)
            .map_err(Self::storage_fail(cluster, "name a verification clone"))?;
        if !storage
            .exists(&ds)
            .map_err(Self::storage_fail(cluster, "look for a verification clone"))?
        {
            return Ok(());
        }
        let data = ds
            .join("data")
            .map_err(Self::storage_fail(cluster, "name a verification clone"))?;
        if let Ok(data) = storage.mountpoint(&data) {
            if let Err(e) = pg::stop_left_behind(
                &self.restores.config().pg_bin,
                &data,
                self.restores.pg_user(),
            ) {
                tracing::warn!(cluster = %cluster, snapshot = id, "stop the PostgreSQL of a verification clone an earlier process left: {e}");
            }
        }
        storage.destroy(&ds, true).map_err(Self::storage_fail(
            cluster,
            format!("destroy verification clone {ds}"),
        ))
    }

    /// At start-up: verification clones an earlier process left are destroyed.
    pub fn clean_up_checks(&self, cluster: &ClusterId) -> Result<usize, VerifyError> {
        let storage = self.restores.storage();
        let l = ClusterLayout::of(cluster).map_err(Self::storage_fail(cluster, "name datasets"))?;
        if !storage
            .exists(&l.verify)
            .map_err(Self::storage_fail(cluster, "look for verification clones"))?
        {
            return Ok(0);
        }
        let left = storage
            .children(&l.verify)
            .map_err(Self::storage_fail(cluster, "list verification clones"))?;
        for id in &left {
            self.discard_check(cluster, id)?;
        }
        Ok(left.len())
    }
}

/// What one verification found so far.
#[derive(Debug, Default)]
struct Run {
    checks: Vec<String>,
    errors: Vec<String>,
    first_query_ms: u64,
    tables: u64,
    indexes: u64,
}

/// Tables queried, and amcheck where it exists, in every database that takes connections.
fn check_databases(instance: &Instance, major: u32, run: &mut Run) -> Result<(), String> {
    let dbs = instance
        .query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")
        .map_err(|e| e.to_string())?;
    let amcheck = instance
        .query("SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'")
        .map(|n| n == "1")
        .unwrap_or(false);
    run.checks.push("a query per table".into());
    if amcheck {
        run.checks.push(if major >= 14 {
            "amcheck: every table and B-tree index".into()
        } else {
            "amcheck: every B-tree index".into()
        });
    }
    for db in dbs.lines().filter(|l| !l.is_empty()) {
        let fail = |what: &str, e: pg::PgError| format!("database {db:?}: {what}: {}", said(&e));
        // Every user table read whole: a page failing its checksum fails the query.
        let tables = instance
            .query_in(db, TABLES_SQL)
            .map_err(|e| fail("list the tables", e))?;
        for table in tables.lines().filter(|l| !l.is_empty()) {
            run.tables += 1;
            let sql = format!("SELECT count(*) FROM {table}");
            if let Err(e) = instance.query_in(db, &sql) {
                run.errors.push(fail(&format!("read table {table}"), e));
            }
        }
        if !amcheck {
            continue;
        }
        if let Err(e) = instance.query_in(db, "CREATE EXTENSION IF NOT EXISTS amcheck") {
            run.errors.push(fail("create extension amcheck", e));
            continue;
        }
        if major >= 14 {
            match instance.query_in(db, HEAP_SQL) {
                Ok(found) if found.is_empty() => {}
                Ok(found) => run.errors.extend(
                    found
                        .lines()
                        .take(MAX_ERRORS)
                        .map(|l| format!("database {db:?}: verify_heapam: {l}")),
                ),
                Err(e) => run.errors.push(fail("verify_heapam", e)),
            }
        }
        match instance.query_in(db, INDEX_SQL) {
            Ok(n) => run.indexes += n.parse::<u64>().unwrap_or(0),
            Err(e) => run.errors.push(fail("bt_index_check", e)),
        }
    }
    Ok(())
}

/// What PostgreSQL said to a failed query (its ERROR line, with a WARNING before it such as
/// a page's checksum), else the whole error.
fn said(e: &pg::PgError) -> String {
    if let pg::PgError::Query { source, .. } = e {
        let lines: Vec<&str> = source
            .stderr()
            .lines()
            .filter(|l| l.starts_with("ERROR:") || l.starts_with("WARNING:"))
            .map(|l| l.split_once(':').map_or(l, |(_, m)| m.trim()))
            .collect();
        if !lines.is_empty() {
            return lines.join(": ");
        }
    }
    e.to_string()
}

/// The user tables and materialized views of a database, quoted.
const TABLES_SQL: &str = "SELECT c.oid::regclass FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't' \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";

/// Corruption `verify_heapam` reports in any table (catalogs included), one line each.
const HEAP_SQL: &str = "SELECT c.oid::regclass || ' block ' || coalesce(v.blkno::text, '?') \
     || ': ' || v.msg FROM pg_class c, LATERAL verify_heapam(c.oid, check_toast => true) v \
     WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't' LIMIT 10";

/// Every valid B-tree index checked with its heap (an error names the first broken one);
/// prints how many.
const INDEX_SQL: &str = "SELECT count(bt_index_check(c.oid, true)) FROM pg_index i \
     JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
     WHERE a.amname = 'btree' AND c.relpersistence <> 't' AND i.indisvalid AND i.indisready";
