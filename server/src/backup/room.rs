//! How large a backup session's writes may be, from the room its tenant has left.
//!
//! zfs-fuse serves each write request at a cost, so writing runs of consecutive blocks in
//! one call makes a full backup much cheaper than one 8 KiB write per block. But on zfs-fuse a
//! large write that runs into the tenant's quota (or a full pool) aborts the FUSE request and
//! at times kills the daemon, taking every tenant's storage with it; single-block writes get
//! a clean EDQUOT/ENOSPC. So a session writes large runs only while the tenant's dataset is
//! estimated to have plenty of room, and single blocks near its end.
//!
//! ZFS accounts a write only when its transaction group syncs (every few seconds, 30 at most
//! on old releases), so the estimate takes every byte this session wrote since [`LAG`] before
//! the reading as not yet accounted. [`WRITE_HEADROOM`] covers other writers of the tenant (WAL
//! pushes, other clusters' backups) meanwhile.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::storage::WRITE_HEADROOM;

/// A single block: what is written near the end of the tenant's room.
pub const SMALL_RUN: usize = walvault_proto::BLOCK_SIZE as usize;
/// The largest run written in one call while there is room.
pub const LARGE_RUN: usize = 1 << 20;
/// Writes this recent may not show in a reading yet.
pub const LAG: Duration = Duration::from_secs(30);
/// The tenant's available space is read again after this much has been written...
pub const REREAD_BYTES: u64 = 64 << 20;
/// ...or when the reading is this old.
pub const REREAD_AFTER: Duration = Duration::from_secs(5);
/// Writes are counted in buckets of this length.
const BUCKET: Duration = Duration::from_secs(1);

/// A session's estimate of its tenant's remaining room.
#[derive(Debug, Default)]
pub struct Room {
    /// `available` at the last reading and when it was taken; `None` before the first or
    /// after a failed one.
    reading: Option<(u64, Instant)>,
    /// Bytes written since the last reading.
    since: u64,
    /// Bytes written per bucket, oldest first, back to [`LAG`] before the reading.
    recent: VecDeque<(Instant, u64)>,
}

impl Room {
    /// The largest run to write at `now`. `read` gives the tenant's available bytes; it is
    /// called at first, after every [`REREAD_BYTES`] written and when the reading is
    /// [`REREAD_AFTER`] old. A failed reading means single blocks until one succeeds.
    pub fn run_bytes<E>(&mut self, now: Instant, read: impl FnOnce() -> Result<u64, E>) -> usize {
        let stale = match self.reading {
            None => true,
            Some((_, at)) => self.since >= REREAD_BYTES || now.duration_since(at) >= REREAD_AFTER,
        };
        if stale {
            self.reading = read().ok().map(|available| (available, now));
            self.since = 0;
            if let Some(horizon) = now.checked_sub(LAG) {
                while self
                    .recent
                    .front()
                    .is_some_and(|(t, _)| *t + BUCKET < horizon)
                {
                    self.recent.pop_front();
                }
            }
        }
        let unaccounted: u64 = self.recent.iter().map(|(_, b)| b).sum();
        let estimate = self
            .reading
            .map_or(0, |(available, _)| available)
            .saturating_sub(unaccounted);
        if estimate >= WRITE_HEADROOM {
            LARGE_RUN
        } else {
            SMALL_RUN
        }
    }

    /// Counts bytes written at `now`.
    pub fn wrote(&mut self, now: Instant, bytes: u64) {
        self.since = self.since.saturating_add(bytes);
        match self.recent.back_mut() {
            Some((start, b)) if now.duration_since(*start) < BUCKET => *b += bytes,
            _ => self.recent.push_back((now, bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: u64) -> impl FnOnce() -> Result<u64, ()> {
        move || Ok(v)
    }

    fn unread() -> impl FnOnce() -> Result<u64, ()> {
        || panic!("read too early")
    }

    #[test]
    fn plenty_of_room_gives_large_runs_and_is_read_once_per_window() {
        let t = Instant::now();
        let mut r = Room::default();
        assert_eq!(r.run_bytes(t, ok(10 << 30)), LARGE_RUN);
        r.wrote(t, REREAD_BYTES - 1);
        assert_eq!(r.run_bytes(t + Duration::from_secs(1), unread()), LARGE_RUN);
        r.wrote(t, 1);
        assert_eq!(r.run_bytes(t, ok(10 << 30)), LARGE_RUN);
    }

    #[test]
    fn an_old_reading_is_read_again() {
        let t = Instant::now();
        let mut r = Room::default();
        assert_eq!(r.run_bytes(t, ok(10 << 30)), LARGE_RUN);
        assert_eq!(r.run_bytes(t + REREAD_AFTER, ok(0)), SMALL_RUN);
    }

    #[test]
    fn little_room_gives_single_blocks() {
        let t = Instant::now();
        let mut r = Room::default();
        assert_eq!(r.run_bytes(t, ok(WRITE_HEADROOM - 1)), SMALL_RUN);
        assert_eq!(r.run_bytes(t + REREAD_AFTER, ok(0)), SMALL_RUN);
    }

    #[test]
    fn a_failed_reading_gives_single_blocks_and_is_retried() {
        let t = Instant::now();
        let mut r = Room::default();
        assert_eq!(r.run_bytes(t, || Err(())), SMALL_RUN);
        assert_eq!(r.run_bytes(t, ok(10 << 30)), LARGE_RUN);
    }

    #[test]
    fn recent_writes_count_against_the_room_until_they_are_old() {
        let t = Instant::now();
        let mut r = Room::default();
        let start = WRITE_HEADROOM + 2 * REREAD_BYTES;
        assert_eq!(r.run_bytes(t, ok(start)), LARGE_RUN);
        r.wrote(t, REREAD_BYTES);
        // ZFS has not accounted it: the reading is unchanged, the window still counts.
        assert_eq!(r.run_bytes(t, ok(start)), LARGE_RUN);
        r.wrote(t, REREAD_BYTES + 1);
        assert_eq!(r.run_bytes(t, ok(start)), SMALL_RUN);
        // Long after, the writes show in the reading if anywhere.
        let later = t + LAG + 2 * BUCKET;
        assert_eq!(r.run_bytes(later, ok(start)), LARGE_RUN);
    }

    #[test]
    fn the_estimate_shrinks_between_readings() {
        let t = Instant::now();
        let mut r = Room::default();
        assert_eq!(r.run_bytes(t, ok(WRITE_HEADROOM + 10)), LARGE_RUN);
        r.wrote(t, 11);
        assert_eq!(r.run_bytes(t, unread()), SMALL_RUN);
    }

    #[test]
    fn buckets_stay_few() {
        let t = Instant::now();
        let mut r = Room::default();
        for ms in 0..100_000u64 {
            let now = t + Duration::from_millis(ms);
            r.run_bytes(now, ok(10 << 30));
            r.wrote(now, 1);
        }
        assert!(r.recent.len() <= 40, "{} buckets", r.recent.len());
    }
}
