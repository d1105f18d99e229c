//! The WAL time index (DESIGN §5): per archived segment, the first and last commit, the
//! latest commit time, the range of transaction ids that ended in it and its restore points,
//! read from the WAL records themselves. It is a cache in the catalog: any segment without an
//! entry (archived before, or the catalog rebuilt) is read when the index is next asked.
//!
//! A record that crosses into the next segment is only complete once that segment is
//! archived; such an entry is marked and read again when its successor arrives.
//!
//! A segment whose records cannot be decoded (one that passes its CRC but that this reader
//! does not understand) is kept with `unreadable` set and no commits, and reported; it never
//! makes the rest of the cluster unplannable. A damaged file gets such an entry too, but not
//! in the catalog: once repaired, it is read again.
//!
//! Pushes hand new segments to one background indexer through a bounded queue
//! ([`TimeIndex::index_soon`]): reading a segment decompresses all of it, and a fleet pushing
//! at once must not decode twenty segments at once (in memory and CPU) beside the pushes.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use walvault_proto::{ClusterId, Lsn, TimelineId, WalFileKind, WalFileName};

use super::archive::{ArchiveError, WalArchive};
use super::history::{self, HistoryEntry};
use super::records::{self, SegmentEvents, WalEvent};
use crate::catalog::{Catalog, CatalogError};

/// What the index keeps of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSummary {
    pub end_lsn: Lsn,
    /// (LSN, Unix microseconds) of the first and last commit or abort.
    pub first_commit: Option<(Lsn, i64)>,
    pub last_commit: Option<(Lsn, i64)>,
    pub max_micros: Option<i64>,
    pub xid_min: Option<u32>,
    pub xid_max: Option<u32>,
    /// (name, LSN, Unix microseconds).
    pub restore_points: Vec<(String, Lsn, i64)>,
    pub commits: u64,
    /// A record ran into the next segment, which was not archived when this was read.
    pub incomplete_tail: bool,
    pub switched: bool,
    /// Why the records could not be read (nothing else is known of the segment then).
    #[serde(default)]
    pub unreadable: Option<String>,
    /// Tablespaces created in the segment: (LSN, OID, location). Entries indexed before
    /// this was kept have none.
    #[serde(default)]
    pub tablespaces_created: Vec<(Lsn, u32, String)>,
}

impl SegmentSummary {
    pub fn of(e: &SegmentEvents) -> Self {
        let mut s = SegmentSummary {
            end_lsn: e.end_lsn,
            first_commit: None,
            last_commit: None,
            max_micros: None,
            xid_min: None,
            xid_max: None,
            restore_points: Vec::new(),
            commits: 0,
            incomplete_tail: e.incomplete_tail.is_some(),
            switched: e.switched,
            unreadable: None,
            tablespaces_created: Vec::new(),
        };
        for ev in &e.events {
            match ev {
                WalEvent::Commit { xid, lsn, time, .. }
                | WalEvent::Abort { xid, lsn, time, .. } => {
                    s.commits += 1;
                    s.first_commit.get_or_insert((*lsn, *time));
                    s.last_commit = Some((*lsn, *time));
                    s.max_micros = Some(s.max_micros.map_or(*time, |m| m.max(*time)));
                    s.xid_min = Some(s.xid_min.map_or(*xid, |m| m.min(*xid)));
                    s.xid_max = Some(s.xid_max.map_or(*xid, |m| m.max(*xid)));
                }
                WalEvent::RestorePoint {
                    name, lsn, time, ..
                } => s.restore_points.push((name.clone(), *lsn, *time)),
                WalEvent::TablespaceCreated {
                    oid, location, lsn, ..
                } => s.tablespaces_created.push((*lsn, *oid, location.clone())),
            }
        }
        s
    }

    /// A segment nothing could be read of: its end is taken as its start, the most a restore
    /// can be sure to reach in it.
    pub fn unreadable(start: Lsn, why: String) -> Self {
        SegmentSummary {
            end_lsn: start,
            first_commit: None,
            last_commit: None,
            max_micros: None,
            xid_min: None,
            xid_max: None,
            restore_points: Vec::new(),
            commits: 0,
            incomplete_tail: false,
            switched: false,
            unreadable: Some(why),
            tablespaces_created: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{cluster}: read the WAL records of {name}: {detail}")]
    Unreadable {
        cluster: ClusterId,
        name: String,
        detail: String,
    },
    #[error("{cluster}: {name} is not a valid timeline history: {detail}")]
    BadHistory {
        cluster: ClusterId,
        name: String,
        detail: String,
    },
}

/// What the archive says about time, for one cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterIndex {
    pub segment_size: u32,
    pub segments: BTreeMap<(TimelineId, u64), (WalFileName, SegmentSummary)>,
    pub histories: BTreeMap<TimelineId, Vec<HistoryEntry>>,
}

/// Segments waiting for the background indexer; past this, new ones are left to the planner.
const INDEX_QUEUE: usize = 1024;

#[derive(Debug, Clone)]
pub struct TimeIndex {
    archive: WalArchive,
    catalog: Catalog,
    /// The background indexer's queue, started by the first [`TimeIndex::index_soon`].
    queue: Arc<OnceLock<SyncSender<(ClusterId, WalFileName)>>>,
}

impl TimeIndex {
    pub fn new(archive: WalArchive, catalog: Catalog) -> Self {
        Self {
            archive,
            catalog,
            queue: Arc::default(),
        }
    }

    /// Indexes a newly archived segment in the background, one segment at a time. Never
    /// blocks: with the queue full the segment is left for the planner, which reads any
    /// segment without an entry.
    pub fn index_soon(&self, cluster: ClusterId, name: WalFileName) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel::<(ClusterId, WalFileName)>(INDEX_QUEUE);
            let worker = Self::new(self.archive.clone(), self.catalog.clone());
            let started = std::thread::Builder::new()
                .name("time-index".into())
                .spawn(move || {
                    for (cluster, name) in rx {
                        if let Err(e) = worker.index_one(&cluster, &name) {
                            tracing::warn!(%cluster, file = %name, "time index: {e}");
                        }
                    }
                });
            if let Err(e) = started {
                tracing::warn!("time index: cannot start the background indexer: {e}");
            }
            tx
        });
        match queue.try_send((cluster, name)) {
            Ok(()) => {}
            Err(TrySendError::Full((cluster, name))) => {
                tracing::debug!(%cluster, file = %name, "time index queue full: left to the planner");
            }
            Err(TrySendError::Disconnected((cluster, name))) => {
                tracing::debug!(%cluster, file = %name, "no background indexer: left to the planner");
            }
        }
    }

    /// The whole index of a cluster, reading every segment not indexed yet. Blocking.
    pub fn load(&self, cluster: &ClusterId) -> Result<ClusterIndex, IndexError> {
        let binding = self.archive.binding(cluster)?;
        let Some(binding) = binding else {
            return Ok(ClusterIndex::default());
        };
        let seg_size = binding.wal_segment_size;
        let files = self.archive.list(cluster)?;
        let known: HashMap<String, SegmentSummary> =
            self.catalog.index_entries(cluster)?.into_iter().collect();
        let names: Vec<WalFileName> = files.iter().filter_map(|w| w.name.parse().ok()).collect();
        let present: std::collections::HashSet<&str> = names.iter().map(|n| n.as_str()).collect();
        let mut out = ClusterIndex {
            segment_size: seg_size,
            ..ClusterIndex::default()
        };
        for name in &names {
            match name.kind() {
                WalFileKind::Segment => {
                    let Some(segno) = name.segment_number(seg_size) else {
                        continue;
                    };
                    let next = WalFileName::segment(name.timeline(), segno + 1, seg_size);
                    let summary = match known.get(name.as_str()) {
                        Some(s) if !(s.incomplete_tail && present.contains(next.as_str())) => {
                            s.clone()
                        }
                        _ => {
                            let next = present.contains(next.as_str()).then_some(&next);
                            self.summarize(cluster, name, next, seg_size)?
                        }
                    };
                    out.segments
                        .insert((name.timeline(), segno), (name.clone(), summary));
                }
                WalFileKind::History => {
                    // A damaged history file is the archive's to report; without it the
                    // timeline reads as a root.
                    let bytes = match self.plain(cluster, name) {
                        Ok(b) => b,
                        Err(IndexError::Archive(ArchiveError::Corrupt { .. })) => continue,
                        Err(e) => return Err(e),
                    };
                    let entries =
                        history::parse_history(name.timeline(), &bytes).map_err(|detail| {
                            IndexError::BadHistory {
                                cluster: cluster.clone(),
                                name: name.to_string(),
                                detail,
                            }
                        })?;
                    out.histories.insert(name.timeline(), entries);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Indexes one newly archived segment, and its predecessor again if a record of the
    /// predecessor was waiting for this one. Blocking.
    pub fn index_one(&self, cluster: &ClusterId, name: &WalFileName) -> Result<(), IndexError> {
        let Some(binding) = self.archive.binding(cluster)? else {
            return Ok(());
        };
        let seg = binding.wal_segment_size;
        let Some(segno) = name.segment_number(seg) else {
            return Ok(());
        };
        let archived = |n: &WalFileName| -> Result<bool, IndexError> {
            Ok(self.catalog.wal_file(cluster, n)?.is_some())
        };
        let next = WalFileName::segment(name.timeline(), segno + 1, seg);
        let next = archived(&next)?.then_some(next);
        self.summarize(cluster, name, next.as_ref(), seg)?;
        if segno > 0 {
            let prev = WalFileName::segment(name.timeline(), segno - 1, seg);
            let known: Option<SegmentSummary> = self.catalog.index_entry(cluster, &prev)?;
            if known.is_some_and(|p| p.incomplete_tail) {
                self.summarize(cluster, &prev, Some(name), seg)?;
            }
        }
        Ok(())
    }

    /// Reads one segment's summary and caches it; a segment it cannot decode gets an
    /// `unreadable` entry (cached: the bytes will not change), a damaged file one that is not
    /// cached (a repair changes them).
    fn summarize(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        next: Option<&WalFileName>,
        seg_size: u32,
    ) -> Result<SegmentSummary, IndexError> {
        let start = name.start_lsn(seg_size).unwrap_or(Lsn(0));
        match self.read(cluster, name, next) {
            Ok(events) => {
                let s = SegmentSummary::of(&events);
                self.catalog.put_index_entry(cluster, name, &s)?;
                Ok(s)
            }
            Err(IndexError::Unreadable { detail, .. }) => {
                tracing::warn!(%cluster, %name, "time index: cannot read the records of this segment, so the commits it holds are unknown to the planner: {detail}");
                let s = SegmentSummary::unreadable(start, detail);
                self.catalog.put_index_entry(cluster, name, &s)?;
                Ok(s)
            }
            Err(IndexError::Archive(ArchiveError::Corrupt {
                name: damaged,
                reason,
                ..
            })) => {
                if damaged == *name {
                    Ok(SegmentSummary::unreadable(
                        start,
                        format!("damaged: {reason}"),
                    ))
                } else {
                    // The next segment is the damaged one: read this one alone.
                    self.summarize(cluster, name, None, seg_size)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The events of one archived segment, completing a record that runs into `next`.
    pub fn read(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        next: Option<&WalFileName>,
    ) -> Result<SegmentEvents, IndexError> {
        let bytes = self.plain(cluster, name)?;
        let next_bytes = match next {
            Some(n) => Some(self.plain(cluster, n)?),
            None => None,
        };
        records::read_events(&bytes, next_bytes.as_deref()).map_err(|e| IndexError::Unreadable {
            cluster: cluster.clone(),
            name: name.to_string(),
            detail: e.to_string(),
        })
    }

    /// An archived file's original bytes, checked.
    fn plain(&self, cluster: &ClusterId, name: &WalFileName) -> Result<Vec<u8>, IndexError> {
        Ok(self.archive.read_plain(cluster, name)?)
    }
}

/// The commit or abort record of `xid` on the segments given (in order), if any.
pub fn find_xid(events: &SegmentEvents, xid: u32) -> Option<Lsn> {
    events.events.iter().find_map(|e| match e {
        WalEvent::Commit { xid: x, lsn, .. } | WalEvent::Abort { xid: x, lsn, .. } if *x == xid => {
            Some(*lsn)
        }
        _ => None,
    })
}

/// The latest commit or abort time among `events` with an LSN below `before`.
pub fn max_commit_before(events: &SegmentEvents, before: Lsn) -> Option<i64> {
    events
        .events
        .iter()
        .filter_map(|e| match e {
            WalEvent::Commit { lsn, time, .. } | WalEvent::Abort { lsn, time, .. }
                if *lsn < before =>
            {
                Some(*time)
            }
            _ => None,
        })
        .max()
}
