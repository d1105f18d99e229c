use super::*;

const SYSID: u64 = 7_431_022_195_117_228_033;
const PG12: u16 = 0xD101;
const PG13: u16 = 0xD106;
const PG14: u16 = 0xD10D;
const PG15: u16 = 0xD110;
const MIB: u64 = 1 << 20;
const RM_HEAP_ID: u8 = 10;
const XLOG_XACT_PREPARE: u8 = 0x10;
const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
/// 2026-01-02 03:04:05.678901 UTC.
const T: UnixMicros = 1_767_323_045_678_901;

/// Writes synthetic WAL the way `XLogInsert` lays it out, over two consecutive segments.
#[derive(Clone)]
struct Wal {
    buf: Vec<u8>,
    start: u64,
    seg: u64,
    page: u64,
    magic: u16,
    /// Insert position: where the next record goes (a page boundary: after a new header).
    pos: u64,
    prev: u64,
    /// Flags for the next fresh page header (XLP_FIRST_IS_OVERWRITE_CONTRECORD).
    fresh_page_flags: u16,
}

impl Wal {
    fn new(segno: u64, seg: u64, page: u64, magic: u16) -> Self {
        let start = segno * seg;
        Self {
            buf: vec![0; 2 * seg as usize],
            start,
            seg,
            page,
            magic,
            pos: start,
            prev: start - 0x58,
            fresh_page_flags: 0,
        }
    }

    fn pg15() -> Self {
        Self::new(5, 16 * MIB, 8192, PG15)
    }

    fn header_len(&self, at: u64) -> u64 {
        if at.is_multiple_of(self.seg) {
            40
        } else {
            24
        }
    }

    fn write_page_header(&mut self, at: u64, info: u16, rem_len: u32) {
        let long = at.is_multiple_of(self.seg);
        let o = (at - self.start) as usize;
        let b = &mut self.buf[o..o + 40];
        b[0..2].copy_from_slice(&self.magic.to_le_bytes());
        let info = info | if long { XLP_LONG_HEADER } else { 0 };
        b[2..4].copy_from_slice(&info.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&at.to_le_bytes());
        b[16..20].copy_from_slice(&rem_len.to_le_bytes());
        if long {
            b[24..32].copy_from_slice(&SYSID.to_le_bytes());
            b[32..36].copy_from_slice(&(self.seg as u32).to_le_bytes());
            b[36..40].copy_from_slice(&(self.page as u32).to_le_bytes());
        }
    }

    /// Writes `bytes` from the insert position on, with a continuation header on each
    /// page they reach.
    fn spill(&mut self, bytes: &[u8]) {
        let mut done = 0;
        while done < bytes.len() {
            if self.pos.is_multiple_of(self.page) {
                let left = (bytes.len() - done) as u32;
                self.write_page_header(self.pos, XLP_FIRST_IS_CONTRECORD, left);
                self.pos += self.header_len(self.pos);
            }
            let n = ((self.page - self.pos % self.page) as usize).min(bytes.len() - done);
            let o = (self.pos - self.start) as usize;
            self.buf[o..o + n].copy_from_slice(&bytes[done..done + n]);
            self.pos += n as u64;
            done += n;
        }
        self.pos = align8(self.pos);
    }

    /// Appends a record whose bytes after the header are `body`; returns its start and end.
    fn put(&mut self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> (Lsn, Lsn) {
        let rec = record(rmid, info, xid, self.prev, body);
        if self.pos.is_multiple_of(self.page) {
            self.write_page_header(self.pos, self.fresh_page_flags, 0);
            self.fresh_page_flags = 0;
            self.pos += self.header_len(self.pos);
        }
        let start = self.pos;
        self.spill(&rec);
        self.prev = start;
        (Lsn(start), Lsn(self.pos))
    }

    /// Opens the segment with the last `len` bytes of a record begun in the previous one.
    fn continued(&mut self, len: usize) {
        assert_eq!(self.pos, self.start);
        self.spill(&vec![0xC5; len]);
    }

    /// A record we only skip, `len` bytes long in all.
    fn filler(&mut self, len: u64) -> (Lsn, Lsn) {
        self.put(
            RM_HEAP_ID,
            0,
            900,
            &vec![0x5A; len as usize - RECORD_HEADER_SIZE],
        )
    }

    /// Where a record of `len` bytes put now would end.
    fn end_after(&self, len: u64) -> u64 {
        let mut pos = self.pos;
        let mut left = len;
        while left > 0 {
            if pos.is_multiple_of(self.page) {
                pos += self.header_len(pos);
            }
            let n = (self.page - pos % self.page).min(left);
            pos += n;
            left -= n;
        }
        align8(pos)
    }

    /// Puts filler records so that the next record goes exactly at `target`.
    fn fill_to(&mut self, target: u64) {
        while target - self.pos > 4 * self.page {
            self.filler(2 * self.page);
        }
        let mut len = RECORD_HEADER_SIZE as u64;
        while self.end_after(len) < target {
            len += 8;
        }
        assert_eq!(self.end_after(len), target, "no record ends at {target:X}");
        self.filler(len);
    }

    /// Forgets everything from `at` on, as if the WAL had been written only up to there.
    fn rewind(&mut self, at: u64, prev: Lsn) {
        let o = (at - self.start) as usize;
        self.buf[o..].fill(0);
        self.pos = at;
        self.prev = prev.0;
    }

    fn seg_end(&self) -> u64 {
        self.start + self.seg
    }

    fn segment(&self) -> &[u8] {
        &self.buf[..self.seg as usize]
    }

    fn next(&self) -> &[u8] {
        &self.buf[self.seg as usize..]
    }

    fn at_mut(&mut self, lsn: u64) -> &mut [u8] {
        let o = (lsn - self.start) as usize;
        &mut self.buf[o..]
    }
}

/// A whole record: header (length, xid, prev, info, rmid, CRC) and `body`.
fn record(rmid: u8, info: u8, xid: u32, prev: u64, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEADER_SIZE + body.len());
    r.extend_from_slice(&((RECORD_HEADER_SIZE + body.len()) as u32).to_le_bytes());
    r.extend_from_slice(&xid.to_le_bytes());
    r.extend_from_slice(&prev.to_le_bytes());
    r.extend_from_slice(&[info, rmid, 0, 0, 0, 0, 0, 0]);
    r.extend_from_slice(body);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&r[RECORD_HEADER_SIZE..]), &r[..CRC_OFFSET]);
    r[CRC_OFFSET..RECORD_HEADER_SIZE].copy_from_slice(&crc.to_le_bytes());
    r
}

/// `data` as a record's main data, with the short or long data header.
fn main(data: &[u8]) -> Vec<u8> {
    let mut b = match u8::try_from(data.len()) {
        Ok(n) => vec![XLR_BLOCK_ID_DATA_SHORT, n],
        Err(_) => {
            let mut b = vec![XLR_BLOCK_ID_DATA_LONG];
            b.extend_from_slice(&(data.len() as u32).to_le_bytes());
            b
        }
    };
    b.extend_from_slice(data);
    b
}

/// Main data of a commit or abort: xact_time, the xinfo word if any, then `parts`.
fn xact(time: UnixMicros, xinfo: Option<u32>, parts: &[&[u8]]) -> Vec<u8> {
    let mut d = (time - PG_EPOCH_UNIX_MICROS).to_le_bytes().to_vec();
    if let Some(x) = xinfo {
        d.extend_from_slice(&x.to_le_bytes());
    }
    for p in parts {
        d.extend_from_slice(p);
    }
    main(&d)
}

/// An `int` count and that many elements of `size` bytes.
fn counted(n: usize, size: usize) -> Vec<u8> {
    let mut b = (n as i32).to_le_bytes().to_vec();
    b.extend((0..n * size).map(|i| (i % 251) as u8));
    b
}

fn restore_point_body(name: &str, time: UnixMicros) -> Vec<u8> {
    let mut d = (time - PG_EPOCH_UNIX_MICROS).to_le_bytes().to_vec();
    let mut n = [0u8; 64];
    n[..name.len()].copy_from_slice(name.as_bytes());
    d.extend_from_slice(&n);
    main(&d)
}

fn commit_ev(xid: u32, (lsn, end_lsn): (Lsn, Lsn), time: UnixMicros) -> WalEvent {
    WalEvent::Commit {
        xid,
        lsn,
        end_lsn,
        time,
    }
}

fn abort_ev(xid: u32, (lsn, end_lsn): (Lsn, Lsn), time: UnixMicros) -> WalEvent {
    WalEvent::Abort {
        xid,
        lsn,
        end_lsn,
        time,
    }
}

fn commit(w: &mut Wal, xid: u32, time: UnixMicros) -> WalEvent {
    commit_ev(
        xid,
        w.put(RM_XACT_ID, XLOG_XACT_COMMIT, xid, &xact(time, None, &[])),
        time,
    )
}

/// A commit with `n` invalidation messages (16 bytes each): as long as we like.
fn big_commit(w: &mut Wal, xid: u32, n: usize) -> WalEvent {
    let body = xact(
        T,
        Some(XACT_XINFO_HAS_INVALS),
        &[&counted(n, INVAL_MSG_SIZE)],
    );
    commit_ev(
        xid,
        w.put(
            RM_XACT_ID,
            XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO,
            xid,
            &body,
        ),
        T,
    )
}

fn read(w: &Wal) -> SegmentEvents {
    read_events(w.segment(), None).unwrap()
}

const DBINFO: &[u8] = &[1, 0, 0, 0, 0x7F, 6, 0, 0];
const XACT_XINFO_HAS_ORIGIN: u32 = 1 << 5;
const XACT_XINFO_HAS_GID: u32 = 1 << 7;

#[test]
fn reads_commits_aborts_and_restore_points() {
    let mut w = Wal::pg15();
    let mut want = vec![commit(&mut w, 700, T)];
    w.filler(200);

    // Every optional part a PostgreSQL 15 commit can carry, and an origin block id.
    let all = XACT_XINFO_HAS_DBINFO
        | XACT_XINFO_HAS_SUBXACTS
        | XACT_XINFO_HAS_RELFILENODES
        | XACT_XINFO_HAS_DROPPED_STATS
        | XACT_XINFO_HAS_INVALS
        | XACT_XINFO_HAS_ORIGIN;
    let parts: [&[u8]; 6] = [
        DBINFO,
        &counted(3, SUBXACT_SIZE),
        &counted(2, RELFILENODE_SIZE),
        &counted(2, STATS_ITEM_SIZE),
        &counted(5, INVAL_MSG_SIZE),
        &[0x11; 16],
    ];
    let mut body = vec![XLR_BLOCK_ID_ORIGIN, 1, 0];
    body.extend_from_slice(&xact(T + 1, Some(all), &parts));
    let info = XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO;
    want.push(commit_ev(701, w.put(RM_XACT_ID, info, 701, &body), T + 1));

    let some = XACT_XINFO_HAS_SUBXACTS | XACT_XINFO_HAS_DROPPED_STATS;
    let body = xact(
        T + 2,
        Some(some),
        &[&counted(1, SUBXACT_SIZE), &counted(1, 12)],
    );
    let info = XLOG_XACT_ABORT | XLOG_XACT_HAS_INFO;
    want.push(abort_ev(702, w.put(RM_XACT_ID, info, 702, &body), T + 2));

    // A prepared transaction's end names it in its twophase part; its own xid is 0. All
    // the parts before that must be skipped right to find it.
    w.put(RM_XACT_ID, XLOG_XACT_PREPARE, 703, &main(&[0u8; 90]));
    let xinfo = all | XACT_XINFO_HAS_TWOPHASE | XACT_XINFO_HAS_GID;
    let parts: [&[u8]; 8] = [
        DBINFO,
        &counted(3, SUBXACT_SIZE),
        &counted(2, RELFILENODE_SIZE),
        &counted(2, STATS_ITEM_SIZE),
        &counted(5, INVAL_MSG_SIZE),
        &703u32.to_le_bytes(),
        b"gid-1\0",
        &[0x11; 16],
    ];
    let body = xact(T + 3, Some(xinfo), &parts);
    let info = XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO;
    want.push(commit_ev(703, w.put(RM_XACT_ID, info, 0, &body), T + 3));
    // An abort has no invalidations.
    let xinfo = XACT_XINFO_HAS_DBINFO
        | XACT_XINFO_HAS_RELFILENODES
        | XACT_XINFO_HAS_DROPPED_STATS
        | XACT_XINFO_HAS_INVALS
        | XACT_XINFO_HAS_TWOPHASE;
    let parts: [&[u8]; 4] = [
        DBINFO,
        &counted(1, RELFILENODE_SIZE),
        &counted(1, STATS_ITEM_SIZE),
        &704u32.to_le_bytes(),
    ];
    let body = xact(T + 4, Some(xinfo), &parts);
    let info = XLOG_XACT_ABORT_PREPARED | XLOG_XACT_HAS_INFO;
    want.push(abort_ev(704, w.put(RM_XACT_ID, info, 0, &body), T + 4));

    let mut body = 16400u32.to_le_bytes().to_vec();
    body.extend_from_slice(b"/srv/ts one\0");
    let (lsn, end_lsn) = w.put(RM_TBLSPC_ID, XLOG_TBLSPC_CREATE, 0, &main(&body));
    want.push(WalEvent::TablespaceCreated {
        oid: 16400,
        location: "/srv/ts one".into(),
        lsn,
        end_lsn,
    });

    let body = restore_point_body("before-upgrade", T + 5);
    let (lsn, end_lsn) = w.put(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &body);
    let name = "before-upgrade".to_owned();
    want.push(WalEvent::RestorePoint {
        name,
        lsn,
        end_lsn,
        time: T + 5,
    });

    // A commit over three pages, then headers split across page boundaries.
    want.push(big_commit(&mut w, 705, 1200));
    let boundary = align8(w.pos) / w.page * w.page + 2 * w.page;
    w.fill_to(boundary - 8);
    want.push(commit(&mut w, 706, T + 6));
    w.fill_to(boundary + w.page - 16);
    want.push(big_commit(&mut w, 707, 3));
    // A record ending exactly at a page's end; the next starts after the next header.
    w.fill_to(boundary + 3 * w.page);
    want.push(commit(&mut w, 708, T + 8));
    assert_eq!(want.last().map(|e| e.lsn().0 % w.page), Some(24));

    let got = read(&w);
    assert_eq!(got.events, want);
    let end = want[want.len() - 1].end_lsn();
    assert_eq!(got.end_lsn, end);
    assert_eq!(got.wal_end, Some(WalEnd::Zeroed { at: end }));
    assert_eq!(got.incomplete_tail, None);
    assert!(!got.switched);
    assert_eq!(
        got.events.iter().filter_map(WalEvent::time).max(),
        Some(T + 8)
    );
}

#[test]
fn stops_at_the_end_of_valid_wal() {
    let mut w = Wal::pg15();
    let c1 = commit(&mut w, 800, T);
    let c2 = commit(&mut w, 801, T);
    let ok = read(&w);
    assert_eq!(ok.events, vec![c1.clone(), c2.clone()]);

    // A length no record can have.
    let mut bad = w.clone();
    bad.at_mut(c2.end_lsn().0)[..4].copy_from_slice(&5u32.to_le_bytes());
    let got = read(&bad);
    assert_eq!(got.events, vec![c1.clone(), c2.clone()]);
    assert_eq!(
        got.wal_end,
        Some(WalEnd::BadLength {
            at: c2.end_lsn(),
            len: 5
        })
    );

    // A torn record: its checksum fails; WAL ends before it.
    let mut bad = w.clone();
    bad.at_mut(c2.lsn().0)[30] ^= 1;
    let got = read(&bad);
    assert_eq!(got.events, vec![c1.clone()]);
    assert_eq!(got.end_lsn, c1.end_lsn());
    assert_eq!(got.wal_end, Some(WalEnd::BadChecksum { at: c2.lsn() }));

    // A record left over from the file's previous life points elsewhere.
    let mut stale = w.clone();
    stale.prev = 0x1234_5678;
    let (at, _) = stale.filler(64);
    let got = read(&stale);
    assert_eq!(got.events, vec![c1.clone(), c2.clone()]);
    assert_eq!(
        got.wal_end,
        Some(WalEnd::WrongPrev {
            at,
            prev: Lsn(0x1234_5678),
            expected: Some(c2.lsn())
        })
    );

    // A record running onto a page from an older file (its address is wrong).
    let mut w3 = Wal::pg15();
    let c1 = commit(&mut w3, 802, T);
    let long = big_commit(&mut w3, 803, 700);
    let page = long.lsn().0 / w3.page * w3.page + w3.page;
    w3.at_mut(page)[8..16].copy_from_slice(&(page - 16 * MIB).to_le_bytes());
    let got = read(&w3);
    assert_eq!(got.events, vec![c1.clone()]);
    assert!(matches!(got.wal_end, Some(WalEnd::BadPage { page: p, .. }) if p == Lsn(page)));

    // A continuation page that has the wrong remaining length.
    let mut w4 = Wal::pg15();
    let c1 = commit(&mut w4, 804, T);
    let long = big_commit(&mut w4, 805, 700);
    let page = long.lsn().0 / w4.page * w4.page + w4.page;
    w4.at_mut(page)[16] ^= 0x40;
    let got = read(&w4);
    assert_eq!(got.events, vec![c1.clone()]);
    assert_eq!(
        got.wal_end,
        Some(WalEnd::BadContinuation {
            at: long.lsn(),
            page: Lsn(page)
        })
    );

    // Records up to a page's end, then a zeroed page (.partial file).
    let mut w5 = Wal::pg15();
    let next_page = w5.start + 3 * w5.page;
    w5.fill_to(next_page);
    let got = read(&w5);
    assert_eq!(got.end_lsn, Lsn(next_page));
    assert!(matches!(got.wal_end, Some(WalEnd::BadPage { page, .. }) if page == Lsn(next_page)));

    // An empty (zeroed after its header) segment.
    let mut w6 = Wal::pg15();
    w6.write_page_header(w6.start, 0, 0);
    let got = read(&w6);
    assert_eq!(got.events, vec![]);
    assert_eq!(got.end_lsn, Lsn(w6.start));
    assert_eq!(
        got.wal_end,
        Some(WalEnd::Zeroed {
            at: Lsn(w6.start + 40)
        })
    );
}

#[test]
fn completes_a_record_from_the_next_segment() {
    // Record bodies crossing the boundary, then a record header split by it.
    for before_end in [48, 8] {
        let mut w = Wal::new(9, MIB, 8192, PG15);
        let first = commit(&mut w, 900, T);
        w.fill_to(w.seg_end() - before_end);
        let crossing = big_commit(&mut w, 901, 40);
        assert!(crossing.end_lsn().0 > w.seg_end());
        let after = commit(&mut w, 902, T + 1);

        let alone = read(&w);
        assert_eq!(alone.events, vec![first.clone()]);
        assert_eq!(alone.incomplete_tail, Some(crossing.lsn()));
        assert_eq!(alone.end_lsn.0, w.seg_end() - before_end);
        assert_eq!(alone.wal_end, None);

        let both = read_events(w.segment(), Some(w.next())).unwrap();
        assert_eq!(both.events, vec![first.clone(), crossing.clone()]);
        assert_eq!(both.end_lsn, crossing.end_lsn());
        assert_eq!(both.incomplete_tail, None);
        assert_eq!(both.wal_end, None);

        // The next segment starts with the crossing record's tail and reads on from there.
        let next = read_events(w.next(), None).unwrap();
        assert_eq!(next.events, vec![after.clone()]);
        assert_eq!(
            next.wal_end,
            Some(WalEnd::Zeroed {
                at: after.end_lsn()
            })
        );

        // A next segment of another cluster cannot complete the record.
        let mut other = w.next().to_vec();
        other[24] ^= 1;
        let got = read_events(w.segment(), Some(&other)).unwrap();
        assert_eq!(got.events, vec![first.clone()]);
        assert_eq!(got.incomplete_tail, None);
        assert!(matches!(got.wal_end, Some(WalEnd::BadPage { page, .. }) if page.0 == w.seg_end()));
    }
}

#[test]
fn skips_the_tail_of_a_record_from_the_previous_segment() {
    for tail in [100, 8152 - 8, 8152, 8152 + 1, 30_000] {
        let mut w = Wal::new(3, MIB, 8192, PG15);
        w.continued(tail);
        let c = commit(&mut w, 950, T);
        let got = read(&w);
        assert_eq!(got.events, vec![c.clone()], "tail {tail}");
        assert_eq!(got.end_lsn, c.end_lsn());
    }

    // A tail filling the whole segment: nothing starts here.
    let mut w = Wal::new(3, MIB, 8192, PG15);
    w.continued(MIB as usize + 5000);
    let got = read(&w);
    assert_eq!(got.events, vec![]);
    assert_eq!(got.end_lsn, Lsn(w.start));
    assert_eq!(got.wal_end, None);

    // A tail whose second page does not continue it.
    let mut w = Wal::new(3, MIB, 8192, PG15);
    w.continued(20_000);
    commit(&mut w, 951, T);
    w.at_mut(w.start + 8192)[2] = 0;
    let got = read(&w);
    assert_eq!(got.events, vec![]);
    assert_eq!(
        got.wal_end,
        Some(WalEnd::BadContinuation {
            at: Lsn(w.start),
            page: Lsn(w.start + 8192)
        })
    );
}

#[test]
fn a_switch_ends_the_segment() {
    let mut w = Wal::pg15();
    let c = commit(&mut w, 960, T);
    let (_, switch_end) = w.put(RM_XLOG_ID, XLOG_SWITCH, 0, &[]);
    // Whatever follows a switch is not read, even if it looks valid.
    commit(&mut w, 961, T);
    let got = read(&w);
    assert_eq!(got.events, vec![c]);
    assert!(got.switched);
    assert_eq!(got.end_lsn, switch_end);
    assert_eq!(got.wal_end, None);
}

#[test]
fn skips_a_record_overwritten_after_a_crash() {
    // Within a segment: the page where the record should continue was rewritten after
    // crash recovery, flagged, starting with XLOG_OVERWRITE_CONTRECORD.
    let mut w = Wal::pg15();
    let c1 = commit(&mut w, 970, T);
    let lost = big_commit(&mut w, 971, 700);
    let page = lost.lsn().0 / w.page * w.page + w.page;
    w.rewind(page, c1.lsn());
    w.fresh_page_flags = XLP_FIRST_IS_OVERWRITE_CONTRECORD;
    let mut body = lost.lsn().0.to_le_bytes().to_vec();
    body.extend_from_slice(&0i64.to_le_bytes());
    w.put(RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD, 0, &main(&body));
    let c2 = commit(&mut w, 972, T);
    let got = read(&w);
    assert_eq!(got.events, vec![c1.clone(), c2.clone()]);
    assert_eq!(got.end_lsn, c2.end_lsn());

    // Across segments: the lost record began in this segment, new WAL opens the next one.
    let mut w = Wal::new(9, MIB, 8192, PG15);
    let c1 = commit(&mut w, 973, T);
    w.fill_to(w.seg_end() - 48);
    let (last_filler, _) = w.filler(24);
    let lost = big_commit(&mut w, 974, 40);
    w.rewind(w.seg_end(), last_filler);
    w.fresh_page_flags = XLP_FIRST_IS_OVERWRITE_CONTRECORD;
    w.put(RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD, 0, &main(&body));
    let c2 = commit(&mut w, 975, T);
    let got = read_events(w.segment(), Some(w.next())).unwrap();
    assert_eq!(got.events, vec![c1]);
    assert_eq!(got.end_lsn.0, lost.lsn().0);
    assert_eq!(got.incomplete_tail, None);
    assert_eq!(got.wal_end, None);
    let next = read_events(w.next(), None).unwrap();
    assert_eq!(next.events, vec![c2]);
}

#[test]
fn reads_other_versions_and_page_sizes() {
    for (magic, page) in [
        (PG12, 1024),
        (PG13, 4096),
        (PG14, 8192),
        (PG15, 32768),
        (PG15, 65536),
    ] {
        let mut w = Wal::new(2, MIB, page, magic);
        let c = commit(&mut w, 990, T);
        let long = big_commit(&mut w, 991, 300); // spans pages of every size but the largest
        let body = xact(
            T,
            Some(XACT_XINFO_HAS_SUBXACTS | XACT_XINFO_HAS_TWOPHASE),
            &[&counted(2, SUBXACT_SIZE), &992u32.to_le_bytes()],
        );
        let (lsn, end_lsn) = w.put(
            RM_XACT_ID,
            XLOG_XACT_ABORT_PREPARED | XLOG_XACT_HAS_INFO,
            0,
            &body,
        );
        let got = read(&w);
        assert_eq!(
            got.events,
            vec![
                c,
                long,
                WalEvent::Abort {
                    xid: 992,
                    lsn,
                    end_lsn,
                    time: T
                }
            ],
            "magic {magic:#X}, page {page}"
        );
    }
}

/// A restore point record carrying block references, to exercise the header decoding
/// (the image header's layout changed in 15).
fn restore_point_with_blocks(magic: u16, bimg_info: u8, hole_length: bool) -> Vec<WalEvent> {
    read_events(
        wal_with_blocks(magic, bimg_info, hole_length).segment(),
        None,
    )
    .map(|s| s.events)
    .unwrap_or_default()
}

/// One segment holding [`restore_point_with_blocks`]'s record.
fn wal_with_blocks(magic: u16, bimg_info: u8, hole_length: bool) -> Wal {
    let mut w = Wal::new(2, MIB, 8192, magic);
    let mut body = Vec::new();
    // Block 0: data only, its own relation.
    body.extend_from_slice(&[0, BKPBLOCK_HAS_DATA, 3, 0]);
    body.extend_from_slice(&[7; 12]);
    body.extend_from_slice(&5u32.to_le_bytes());
    // Block 1: an image of 100 bytes, same relation.
    body.extend_from_slice(&[1, BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL, 0, 0]);
    body.extend_from_slice(&100u16.to_le_bytes());
    body.extend_from_slice(&64u16.to_le_bytes());
    body.push(bimg_info);
    if hole_length {
        body.extend_from_slice(&4000u16.to_le_bytes());
    }
    body.extend_from_slice(&6u32.to_le_bytes());
    body.extend_from_slice(&[XLR_BLOCK_ID_TOPLEVEL_XID, 9, 0, 0, 0]);
    let rp = restore_point_body("with-blocks", T);
    body.extend_from_slice(&rp[..2]); // main data header
    body.extend_from_slice(&[0xB0; 3]); // block 0 data
    body.extend_from_slice(&[0xB1; 100]); // block 1 image
    body.extend_from_slice(&rp[2..]);
    w.put(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &body);
    w
}

#[test]
fn block_refs_are_the_blocks_replay_reads() {
    let rel = 0x0707_0707;
    let block = |block| BlockRef {
        spc: rel,
        db: rel,
        rel,
        fork: 0,
        block,
    };
    // Block 5 has only data: replay reads it. Block 6 is an image replay restores (15:
    // 0x02), or one only kept for consistency checks (15: zstd, no "apply").
    let refs = |magic, bimg, hole| {
        read_block_refs(wal_with_blocks(magic, bimg, hole).segment(), None).unwrap()
    };
    assert_eq!(refs(PG15, BKPIMAGE_HAS_HOLE | 0x02, false), [block(5)]);
    assert_eq!(refs(PG15, 0x10, false), [block(5), block(6)]);
    // Before 15, "apply" is 0x04.
    assert_eq!(refs(PG14, 0x04, false), [block(5)]);
    assert_eq!(
        refs(PG14, BKPIMAGE_HAS_HOLE | 0x02, true),
        [block(5), block(6)]
    );
}

#[test]
fn decodes_block_references_per_version() {
    let named = |events: Vec<WalEvent>| matches!(&events[..], [WalEvent::RestorePoint { name, .. }] if name == "with-blocks");
    // Before 15, 0x02 means compressed (then a hole's length follows); from 15, 0x02 is
    // "apply" and 0x04 is pglz.
    assert!(named(restore_point_with_blocks(
        PG14,
        BKPIMAGE_HAS_HOLE | 0x02,
        true
    )));
    assert!(named(restore_point_with_blocks(
        PG15,
        BKPIMAGE_HAS_HOLE | 0x02,
        false
    )));
    assert!(named(restore_point_with_blocks(
        PG15,
        BKPIMAGE_HAS_HOLE | 0x04,
        true
    )));
    assert!(named(restore_point_with_blocks(PG15, 0x10, false)));
    // The other reading of the flags misplaces the main data.
    assert!(!named(restore_point_with_blocks(
        PG15,
        BKPIMAGE_HAS_HOLE | 0x02,
        true
    )));
    // PostgreSQL 13 has no top-level xid reference: its record cannot be decoded.
    let mut w = Wal::new(2, MIB, 8192, PG13);
    let mut body = vec![XLR_BLOCK_ID_TOPLEVEL_XID, 9, 0, 0, 0];
    body.extend_from_slice(&restore_point_body("x", T));
    w.put(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &body);
    let err = read_events(w.segment(), None).unwrap_err();
    assert!(
        matches!(
            err,
            RecordError::UndecodableRecord {
                what: "unknown block id",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn refuses_what_cannot_be_a_segment() {
    let mut w = Wal::pg15();
    commit(&mut w, 1000, T);
    let seg = w.segment().to_vec();

    let mut bad = seg.clone();
    bad[0] = 0;
    assert!(matches!(
        read_events(&bad, None),
        Err(RecordError::BadFirstPage(_))
    ));
    assert!(matches!(
        read_events(&seg[..seg.len() - 8192], None),
        Err(RecordError::WrongSegmentSize { .. })
    ));
    let mut bad = seg.clone();
    bad[8..16].copy_from_slice(&(w.start + 8192).to_le_bytes());
    assert!(matches!(
        read_events(&bad, None),
        Err(RecordError::MisalignedSegment(_))
    ));
    let mut bad = seg.clone();
    bad[2] |= 0x40;
    assert!(matches!(
        read_events(&bad, None),
        Err(RecordError::BadFirstPageFlags { .. })
    ));

    // A checksummed commit whose main data is cut short is damage, not end of WAL.
    let mut w = Wal::pg15();
    let body = xact(T, Some(XACT_XINFO_HAS_SUBXACTS), &[&10i32.to_le_bytes()]);
    let info = XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO;
    let (lsn, _) = w.put(RM_XACT_ID, info, 0, &body);
    let err = read_events(w.segment(), None).unwrap_err();
    assert!(
        matches!(err, RecordError::UndecodableRecord { lsn: l, .. } if l == lsn),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("WAL record at 0/5000028 passes its CRC check"),
        "{err}"
    );
}

/// The PostgreSQL 15 fixture (testdata/make_fixture.sh): two segments with a commit crossing
/// from the first into the second, pg_waldump's account of their events and what psql saw.
#[test]
fn reads_real_postgres_15_wal() {
    let a = zstd::decode_all(&include_bytes!("../testdata/pg15-a.wal.zst")[..]).unwrap();
    let b = zstd::decode_all(&include_bytes!("../testdata/pg15-b.wal.zst")[..]).unwrap();
    let b_start = Lsn(0x300_0000);
    let mut want = Vec::new();
    let mut psql = Vec::new();
    for line in include_str!("../testdata/pg15-expected.tsv").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[..] {
            ["#", ..] => {}
            ["psql", ..] => psql.push(f),
            [kind @ ("commit" | "abort"), xid, lsn, end_lsn, time] => {
                let (xid, lsn, end_lsn) = (
                    xid.parse().unwrap(),
                    lsn.parse().unwrap(),
                    end_lsn.parse().unwrap(),
                );
                let time = time.parse().unwrap();
                want.push(if kind == "commit" {
                    WalEvent::Commit {
                        xid,
                        lsn,
                        end_lsn,
                        time,
                    }
                } else {
                    WalEvent::Abort {
                        xid,
                        lsn,
                        end_lsn,
                        time,
                    }
                });
            }
            // pg_waldump does not show a restore point's time: checked against psql below.
            ["restore", name, lsn, end_lsn, "-"] => want.push(WalEvent::RestorePoint {
                name: name.into(),
                lsn: lsn.parse().unwrap(),
                end_lsn: end_lsn.parse().unwrap(),
                time: 0,
            }),
            ["switch", ..] => {}
            _ => panic!("unexpected line {line:?}"),
        }
    }
    let (want_a, want_b): (Vec<_>, Vec<_>) = want.iter().cloned().partition(|e| e.lsn() < b_start);
    let crossing = want_a.last().unwrap().clone();
    assert!(
        crossing.end_lsn() > b_start,
        "the fixture's last commit in a crosses into b"
    );

    // What psql saw: the restore point's end LSN and time window, every xid, the switch.
    let mut rp_time = 0..0;
    let mut rp_end = Lsn(0);
    let mut switch_end = Lsn(0);
    for f in &psql {
        match f[1] {
            "restore" => {
                rp_time = f[3].parse().unwrap()..f[5].parse::<i64>().unwrap() + 1;
                rp_end = f[4].parse().unwrap();
            }
            "switch" => switch_end = f[2].parse().unwrap(),
            kind => {
                let xid: u32 = f[2].parse().unwrap();
                assert!(
                    want.iter().any(|e| matches!((kind, e),
                        ("commit", WalEvent::Commit { xid: x, .. }) | ("abort", WalEvent::Abort { xid: x, .. }) if *x == xid)),
                    "psql's {kind} of {xid} is not among the events"
                );
            }
        }
    }
    let no_rp_time = |events: Vec<WalEvent>| -> Vec<WalEvent> {
        events
            .into_iter()
            .map(|e| match e {
                WalEvent::RestorePoint {
                    name,
                    lsn,
                    end_lsn,
                    time,
                } => {
                    assert!(
                        rp_time.contains(&time),
                        "restore point time {time} not in {rp_time:?}"
                    );
                    assert_eq!(
                        end_lsn, rp_end,
                        "pg_create_restore_point() returned its end"
                    );
                    WalEvent::RestorePoint {
                        name,
                        lsn,
                        end_lsn,
                        time: 0,
                    }
                }
                e => e,
            })
            .collect()
    };

    let alone = read_events(&a, None).unwrap();
    assert_eq!(no_rp_time(alone.events), want_a[..want_a.len() - 1]);
    assert_eq!(alone.incomplete_tail, Some(crossing.lsn()));
    assert_eq!(alone.wal_end, None);
    assert!(!alone.switched);

    let both = read_events(&a, Some(&b)).unwrap();
    assert_eq!(no_rp_time(both.events), want_a);
    assert_eq!(both.end_lsn, crossing.end_lsn());
    assert_eq!(both.incomplete_tail, None);
    assert_eq!(both.wal_end, None);

    let next = read_events(&b, None).unwrap();
    assert_eq!(next.events, want_b);
    assert!(next.switched);
    assert_eq!(
        next.end_lsn, switch_end,
        "pg_switch_wal() returned the switch's end"
    );
    assert_eq!(next.incomplete_tail, None);
}

/// `WALREC_SEGMENT=path cargo test --release -p walvault-server --lib -- --ignored
/// --nocapture times_a_real_segment`
#[test]
#[ignore = "needs a WAL segment file named by WALREC_SEGMENT"]
fn times_a_real_segment() {
    let segment = std::fs::read(std::env::var("WALREC_SEGMENT").unwrap()).unwrap();
    let mut best = std::time::Duration::MAX;
    let mut got = None;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        got = Some(read_events(&segment, None).unwrap());
        best = best.min(started.elapsed());
    }
    let got = got.unwrap();
    println!(
        "{} events, end {}, stop {:?}, best of 5: {best:?}",
        got.events.len(),
        got.end_lsn,
        got.wal_end.map(|e| e.to_string())
    );
}

#[test]
fn real_wal_names_blocks_of_real_relations() {
    let a = zstd::decode_all(&include_bytes!("../testdata/pg15-a.wal.zst")[..]).unwrap();
    let b = zstd::decode_all(&include_bytes!("../testdata/pg15-b.wal.zst")[..]).unwrap();
    let refs = read_block_refs(&a, Some(&b)).unwrap();
    assert!(!refs.is_empty());
    // The default and the global tablespace, real forks, a database for every non-shared one.
    for r in &refs {
        assert!(matches!(r.spc, 1663 | 1664) && r.fork <= 3, "{r:?}");
        assert_eq!(r.db == 0, r.spc == 1664, "{r:?}");
    }
}
