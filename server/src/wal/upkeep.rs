//! The archive's upkeep: its continuity ledger (built from the catalog and the history files,
//! then kept current), removing files for retention (under the cluster's lock, recording the
//! pruned ranges first), and reconciling a WAL directory with the catalog after a crash.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;

use walvault_proto::{ClusterId, WalFileKind, WalFileName};

use super::archive::{ArchiveError, Reconciled, WalArchive};
use super::ledger::{ArchiveView, Ledger};
use super::stored;
use crate::layout::{cluster_props, ClusterLayout, STORED_EXT};

impl WalArchive {
    /// The cluster's continuity ledger: intact stretches and holes per timeline. Blocking (the
    /// first call per cluster reads the catalog and the history files).
    pub fn ledger(&self, cluster: &ClusterId) -> Result<Ledger, ArchiveError> {
        Ok(Ledger::compute(&self.view(cluster)?))
    }

    /// What the ledger is computed from, built from the catalog on first use.
    pub fn view(&self, cluster: &ClusterId) -> Result<ArchiveView, ArchiveError> {
        if let Some(v) = self.continuity.with_view(cluster, Clone::clone) {
            return Ok(v);
        }
        let lock = self.lock(cluster);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = self.continuity.with_view(cluster, Clone::clone) {
            return Ok(v);
        }
        let view = self.build_view(cluster)?;
        self.continuity.install(cluster, view.clone());
        Ok(view)
    }

    fn build_view(&self, cluster: &ClusterId) -> Result<ArchiveView, ArchiveError> {
        let seg = self.segment_size(cluster)?;
        let mut view = ArchiveView {
            segment_size: u64::from(seg),
            ..ArchiveView::default()
        };
        for w in self.catalog.wal_files(cluster)? {
            let Ok(name) = w.name.parse::<WalFileName>() else {
                continue;
            };
            match name.kind() {
                WalFileKind::Segment => {
                    if let Some(s) = name.segment_number(seg) {
                        view.present.insert((name.timeline(), s));
                    }
                }
                WalFileKind::History => {
                    // A damaged history file is reported as damaged; the ledger then treats
                    // its timeline as a root.
                    let path = self.wal_dir(cluster)?.join(format!("{name}{STORED_EXT}"));
                    if let Some(entries) = fs::read(&path)
                        .ok()
                        .and_then(|b| stored::verify(b, usize::MAX).ok())
                        .and_then(|v| super::history::parse_history(name.timeline(), &v.plain).ok())
                    {
                        view.histories.insert(
                            name.timeline(),
                            entries.iter().map(|e| (e.parent, e.switch_lsn)).collect(),
                        );
                    }
                }
                _ => {}
            }
        }
        for d in self.catalog.damage(cluster)? {
            if let Some(key) = d
                .name
                .parse::<WalFileName>()
                .ok()
                .and_then(|n| n.segment_number(seg).map(|s| (n.timeline(), s)))
            {
                view.damaged.insert(key, d.reason);
            }
        }
        view.pruned = self.catalog.pruned(cluster)?.unwrap_or_default();
        Ok(view)
    }

    /// Removes archived files for good (the retention policy's prune): each leaves the
    /// catalog (with its time-index entry and any damage record) before its file is deleted,
    /// and the segment ranges are recorded as pruned first, so the ledger never reports
    /// them as holes. Blocking; returns how many files were removed.
    pub fn remove(
        &self,
        cluster: &ClusterId,
        names: &[WalFileName],
    ) -> Result<usize, ArchiveError> {
        if names.is_empty() {
            return Ok(0);
        }
        let lock = self.lock(cluster);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let seg = self.segment_size(cluster)?;
        let mut by_timeline: std::collections::BTreeMap<
            walvault_proto::TimelineId,
            std::collections::BTreeSet<u64>,
        > = Default::default();
        for n in names {
            if let (WalFileKind::Segment, Some(s)) = (n.kind(), n.segment_number(seg)) {
                by_timeline.entry(n.timeline()).or_default().insert(s);
            }
        }
        if !by_timeline.is_empty() {
            let mut pruned: Vec<super::ledger::PrunedRange> =
                self.catalog.pruned(cluster)?.unwrap_or_default();
            for (t, segnos) in &by_timeline {
                super::ledger::merge_pruned(&mut pruned, super::ledger::pruned_runs(*t, segnos));
            }
            self.record_pruned(cluster, pruned)?;
        }
        let dir = self.wal_dir(cluster)?;
        let mut removed = 0;
        for name in names {
            self.catalog.remove_wal(cluster, name)?;
            self.catalog.remove_index_entry(cluster, name)?;
            self.catalog.remove_damage(cluster, name)?;
            let path = dir.join(format!("{name}{STORED_EXT}"));
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    self.continuity.forget(cluster);
                    return Err(Self::io_err(cluster, format!("remove {}", path.display()))(
                        e,
                    ));
                }
            }
        }
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io_err(cluster, format!("sync {}", dir.display())))?;
        self.continuity.forget(cluster);
        Ok(removed)
    }

    /// Stores the pruned ranges (catalog and the cluster dataset's property), dropping those
    /// below every archived segment of their timeline: they can never be inside a hole.
    fn record_pruned(
        &self,
        cluster: &ClusterId,
        mut pruned: Vec<super::ledger::PrunedRange>,
    ) -> Result<(), ArchiveError> {
        let seg = self.segment_size(cluster)?;
        let mut lowest: HashMap<walvault_proto::TimelineId, u64> = HashMap::new();
        for w in self.catalog.wal_files(cluster)? {
            if let Ok(n) = w.name.parse::<WalFileName>() {
                if let (WalFileKind::Segment, Some(s)) = (n.kind(), n.segment_number(seg)) {
                    let e = lowest.entry(n.timeline()).or_insert(s);
                    *e = (*e).min(s);
                }
            }
        }
        pruned.retain(|r| lowest.get(&r.timeline).is_some_and(|low| r.last >= *low));
        let text = super::continuity::encode_pruned(&pruned);
        let l = ClusterLayout::of(cluster).map_err(Self::storage_err(cluster, "name datasets"))?;
        self.storage
            .set_property(&l.cluster, cluster_props::PRUNED_WAL, &text)
            .map_err(Self::storage_err(cluster, "record the pruned WAL ranges"))?;
        self.catalog.put_pruned(cluster, &pruned)?;
        Ok(())
    }

    /// Reconciles the cluster's WAL directory with the catalog (at start-up and in
    /// verification): files published but not catalogued are checked and catalogued,
    /// catalogued files gone from the disk are recorded as damaged. Blocking.
    pub fn reconcile(&self, cluster: &ClusterId) -> Result<Reconciled, ArchiveError> {
        let dir = self.wal_dir(cluster)?;
        let mut on_disk = std::collections::BTreeSet::new();
        let entries =
            fs::read_dir(&dir).map_err(Self::io_err(cluster, format!("list {}", dir.display())))?;
        for e in entries {
            let e = e.map_err(Self::io_err(cluster, format!("list {}", dir.display())))?;
            let file_name = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = file_name
                .strip_suffix(STORED_EXT)
                .and_then(|n| n.parse::<WalFileName>().ok())
            {
                on_disk.insert(name);
            }
        }
        let catalogued: std::collections::BTreeSet<WalFileName> = self
            .catalog
            .wal_files(cluster)?
            .into_iter()
            .filter_map(|w| w.name.parse().ok())
            .collect();
        let mut out = Reconciled::default();
        for name in on_disk.difference(&catalogued) {
            match self.read_verified(cluster, name, false) {
                Ok(_) => out.catalogued.push(name.to_string()),
                Err(ArchiveError::Corrupt { reason, .. }) => {
                    out.refused.push((name.to_string(), reason))
                }
                Err(
                    e @ (ArchiveError::BadSegment { .. }
                    | ArchiveError::BadTextFile { .. }
                    | ArchiveError::SystemIdentifierMismatch { .. }
                    | ArchiveError::SegmentSizeMismatch { .. }),
                ) => {
                    tracing::error!(%cluster, %name, "a file in the WAL directory is not this cluster's: {e}");
                    out.refused.push((name.to_string(), e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        for name in catalogued.difference(&on_disk) {
            let reason = format!("catalogued, but gone from {}", dir.display());
            let known = self
                .catalog
                .damage(cluster)?
                .iter()
                .any(|d| d.name == name.as_str());
            if !known {
                self.damaged(cluster, name, reason)?;
            }
            out.missing.push(name.to_string());
        }
        Ok(out)
    }
}
