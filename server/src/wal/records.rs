//! Reads the records of one archived WAL segment and picks out what recovery targets are made
//! of: transaction commits and aborts (xid, LSN, timestamp) and named restore points.
//!
//! The rules are those of PostgreSQL's own reader (`xlogreader.c`), for versions 12 to 17:
//! - Every WAL page starts with a header whose address is the page's own; the segment's first
//!   page has the long header. A page that continues a record says so (`XLP_FIRST_IS_CONTRECORD`)
//!   and how many bytes of it are left (`xlp_rem_len`).
//! - Records are 8-byte aligned and may span pages and segments, their 24-byte header included.
//!   A record is valid when its `xl_prev` points at the record before it and its CRC-32C matches.
//! - The first invalid record, page or continuation is the end of valid WAL, not an error: a
//!   `.partial` file, a recycled segment and a torn write all look like that.
//! - A record's end LSN is where the next record may begin: its start plus its aligned length plus
//!   the page headers it crossed, not counting a page header right after it (the value
//!   `pg_create_restore_point` returns).
//!
//! Only commit, abort and restore-point records are decoded past their header; every other record
//! is checked (`xl_prev`, CRC) and skipped. Nothing is allocated per record except the events;
//! records spanning pages are gathered into one reused buffer.

use std::fmt;

use walvault_proto::Lsn;

use super::header::{HeaderError, LongPageHeader, LONG_HEADER_SIZE};

/// Microseconds since the Unix epoch (PostgreSQL's TimestampTz counts from 2000-01-01).
pub type UnixMicros = i64;

/// 2000-01-01 00:00:00 UTC, PostgreSQL's epoch, in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

// Page headers (`access/xlog_internal.h`).
const SHORT_HEADER_SIZE: u64 = 24;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
const XLP_ALL_FLAGS: u16 = 0x000F;

// Record header (`access/xlogrecord.h`): xl_tot_len u32, xl_xid u32, xl_prev u64, xl_info u8,
// xl_rmid u8, 2 pad, xl_crc u32.
const RECORD_HEADER_SIZE: usize = 24;
const CRC_OFFSET: usize = 20;
/// PostgreSQL cannot allocate a record larger than `MaxAllocSize`, so it never reads one.
const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;
/// `XLR_INFO_MASK`: the low bits of `xl_info` are the WAL machinery's, the rest the rmgr's.
const XLR_INFO_MASK: u8 = 0x0F;

// Block references and data headers after the record header.
const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_WILL_INIT: u8 = 0x40;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// Before PostgreSQL 15 one bit said "compressed" (with pglz); 15 has one bit per method.
const BKPIMAGE_IS_COMPRESSED_PRE15: u8 = 0x02;
const BKPIMAGE_COMPRESSED_15: u8 = 0x04 | 0x08 | 0x10;
/// The image is restored by replay (not only kept for `wal_consistency_checking`).
const BKPIMAGE_APPLY_PRE15: u8 = 0x04;
const BKPIMAGE_APPLY_15: u8 = 0x02;

// Resource managers and the records of theirs we read.
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
/// `xl_restore_point`: TimestampTz rp_time, char rp_name[MAXFNAMELEN = 64].
const RESTORE_POINT_SIZE: usize = 8 + 64;
/// Tablespace records (`commands/tablespace.h`): `xl_tblspc_create_rec` is an Oid and the
/// location, NUL-terminated.
const RM_TBLSPC_ID: u8 = 5;
const XLOG_TBLSPC_CREATE: u8 = 0x00;

// Transaction records (`access/xact.h`).
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
/// PostgreSQL 15 and later.
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;
/// Sizes of the array elements that may follow the xinfo word.
const SUBXACT_SIZE: usize = 4; // TransactionId
const RELFILENODE_SIZE: usize = 12; // RelFileNode / RelFileLocator
const STATS_ITEM_SIZE: usize = 12; // xl_xact_stats_item: kind, dboid, objoid (up to 17)
const INVAL_MSG_SIZE: usize = 16; // SharedInvalidationMessage

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WalEvent {
    /// A transaction commit (XLOG_XACT_COMMIT or XLOG_XACT_COMMIT_PREPARED; for prepared, xid is
    /// the prepared transaction's xid from the twophase field).
    Commit {
        xid: u32,
        lsn: Lsn,
        end_lsn: Lsn,
        time: UnixMicros,
    },
    /// XLOG_XACT_ABORT / XLOG_XACT_ABORT_PREPARED (also a subtransaction rolled back on its own).
    Abort {
        xid: u32,
        lsn: Lsn,
        end_lsn: Lsn,
        time: UnixMicros,
    },
    /// XLOG_RESTORE_POINT (pg_create_restore_point)
    RestorePoint {
        name: String,
        lsn: Lsn,
        end_lsn: Lsn,
        time: UnixMicros,
    },
    /// XLOG_TBLSPC_CREATE (CREATE TABLESPACE): replaying it makes the directory `location`
    /// on the machine that replays.
    TablespaceCreated {
        oid: u32,
        location: String,
        lsn: Lsn,
        end_lsn: Lsn,
    },
}

impl WalEvent {
    /// Where the record starts.
    pub fn lsn(&self) -> Lsn {
        match self {
            Self::Commit { lsn, .. }
            | Self::Abort { lsn, .. }
            | Self::RestorePoint { lsn, .. }
            | Self::TablespaceCreated { lsn, .. } => *lsn,
        }
    }

    /// Where the record ends (what `recovery_target_lsn` would name to include it).
    pub fn end_lsn(&self) -> Lsn {
        match self {
            Self::Commit { end_lsn, .. }
            | Self::Abort { end_lsn, .. }
            | Self::RestorePoint { end_lsn, .. }
            | Self::TablespaceCreated { end_lsn, .. } => *end_lsn,
        }
    }

    /// The time the record carries (a tablespace's creation carries none).
    pub fn time(&self) -> Option<UnixMicros> {
        match self {
            Self::Commit { time, .. }
            | Self::Abort { time, .. }
            | Self::RestorePoint { time, .. } => Some(*time),
            Self::TablespaceCreated { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEvents {
    /// In LSN order.
    pub events: Vec<WalEvent>,
    /// End LSN of the last valid record that starts in this segment (or the segment start if
    /// none; a record begun in the previous segment may end later than that). After a switch,
    /// the switch record's end, which is what `pg_switch_wal()` returns.
    pub end_lsn: Lsn,
    /// Start LSN of a record that begins in this segment but continues past the bytes we were
    /// given (`next` is None, or the record is longer than `next` too). None when `next`
    /// completed it or there is none.
    pub incomplete_tail: Option<Lsn>,
    /// Whether the segment ends with an XLOG_SWITCH record (the rest is padding).
    pub switched: bool,
    /// Why valid WAL ends inside this segment (or inside `next`, for a record crossing into it);
    /// None when it runs to the segment's end, a switch, or an incomplete tail.
    pub wal_end: Option<WalEnd>,
}

/// A data block a record changes and replay must read first: one without a full-page image
/// to restore and not initialised from scratch by the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    /// `RelFileNode` / `RelFileLocator`: tablespace, database, relation file.
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    /// 0 main, 1 free space map, 2 visibility map, 3 init.
    pub fork: u8,
    pub block: u32,
}

/// Where and why valid WAL stops: the normal end of a `.partial` file or a recycled segment,
/// or a torn write. Not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEnd {
    /// Zeros where the next record's length would be.
    Zeroed { at: Lsn },
    /// A length no record can have.
    BadLength { at: Lsn, len: u32 },
    /// `xl_prev` does not point at the previous record (`expected`; None: anything earlier).
    WrongPrev {
        at: Lsn,
        prev: Lsn,
        expected: Option<Lsn>,
    },
    /// The record's CRC-32C does not match its bytes.
    BadChecksum { at: Lsn },
    /// A page header that cannot be this page's.
    BadPage { page: Lsn, why: &'static str },
    /// The page where the record at `at` should continue does not continue it.
    BadContinuation { at: Lsn, page: Lsn },
}

impl fmt::Display for WalEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zeroed { at } => write!(f, "zeros at {at}"),
            Self::BadLength { at, len } => write!(f, "record at {at} has invalid length {len}"),
            Self::WrongPrev {
                at,
                prev,
                expected: Some(e),
            } => write!(f, "record at {at} points back to {prev}, not to {e}"),
            Self::WrongPrev {
                at,
                prev,
                expected: None,
            } => write!(f, "record at {at} points back to {prev}, not before itself"),
            Self::BadChecksum { at } => write!(f, "record at {at} fails its CRC check"),
            Self::BadPage { page, why } => write!(f, "page at {page}: {why}"),
            Self::BadContinuation { at, page } => {
                write!(f, "record at {at} is not continued on the page at {page}")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("WAL segment {0}")]
    BadFirstPage(#[from] HeaderError),
    #[error("WAL segment at {start} is {actual} bytes, but its header says segments are {expected} bytes (truncated?)")]
    WrongSegmentSize {
        start: Lsn,
        actual: usize,
        expected: u32,
    },
    #[error("WAL segment's first page claims address {0}, which is no segment start")]
    MisalignedSegment(Lsn),
    #[error(
        "WAL segment at {start} has first-page flags {flags:#06X}, which PostgreSQL never sets"
    )]
    BadFirstPageFlags { start: Lsn, flags: u16 },
    #[error("WAL record at {lsn} passes its CRC check but cannot be decoded: {what} (a PostgreSQL version this reader does not know?)")]
    UndecodableRecord { lsn: Lsn, what: &'static str },
}

/// Reads every record that starts in `segment` (a whole WAL segment file's bytes, any segment size
/// PostgreSQL allows, WAL block size from the long header). `next` is the following segment's
/// bytes on the same timeline if the caller has it, used only to complete a record crossing the
/// boundary.
///
/// Reading stops at the end of valid WAL: a zero xl_tot_len, a record whose xl_prev does not
/// point at the previous record, a CRC mismatch, or a page whose header address is wrong (recycled
/// segment, .partial file). That is not an error; `wal_end` says where and why. Damage that cannot
/// be end-of-WAL (a bad first page header, a checksummed record we cannot decode) is an error.
///
/// The segment's name is not known here: check it against the header first
/// ([`LongPageHeader::check_segment`]), as a recycled file would otherwise read as its old self.
pub fn read_events(segment: &[u8], next: Option<&[u8]>) -> Result<SegmentEvents, RecordError> {
    let mut events = Vec::new();
    let mut out = walk(segment, next, &mut |h, bytes, pg_major, lsn, end_lsn| {
        if let Some(event) = interpret(h, bytes, pg_major, lsn, end_lsn)? {
            events.push(event);
        }
        Ok(())
    })?;
    out.events = events;
    Ok(out)
}

/// The blocks the records starting in `segment` make replay read, in record order (a block
/// may repeat). Records that cannot be decoded are skipped: the list guides prefetching only.
pub fn read_block_refs(segment: &[u8], next: Option<&[u8]>) -> Result<Vec<BlockRef>, RecordError> {
    let mut blocks = Vec::new();
    walk(segment, next, &mut |_, bytes, pg_major, _, _| {
        let _ = decode_blocks(bytes, pg_major, &mut |b| blocks.push(b));
        Ok(())
    })?;
    Ok(blocks)
}

/// A record as [`walk`] hands it over: header, bytes, major version, start and end LSN.
type Visit<'v> = dyn FnMut(&RecordHeader, &[u8], u32, Lsn, Lsn) -> Result<(), RecordError> + 'v;

/// Reads every valid record that starts in `segment`, handing each to `visit`; the events of
/// the result are left empty.
fn walk(
    segment: &[u8],
    next: Option<&[u8]>,
    visit: &mut Visit<'_>,
) -> Result<SegmentEvents, RecordError> {
    let first = LongPageHeader::parse(segment)?;
    let start = first.page_address.0;
    let seg_size = u64::from(first.segment_size);
    if segment.len() as u64 != seg_size {
        return Err(RecordError::WrongSegmentSize {
            start: Lsn(start),
            actual: segment.len(),
            expected: first.segment_size,
        });
    }
    if !start.is_multiple_of(seg_size) {
        return Err(RecordError::MisalignedSegment(Lsn(start)));
    }
    let flags = u16_at(segment, 2);
    if flags & !XLP_ALL_FLAGS != 0 {
        return Err(RecordError::BadFirstPageFlags {
            start: Lsn(start),
            flags,
        });
    }
    let mut reader = Reader {
        segment,
        next,
        first,
        start,
        seg_size,
        page_size: u64::from(first.block_size),
        timeline: first.timeline.0,
    };
    let mut out = SegmentEvents {
        events: Vec::new(),
        end_lsn: Lsn(start),
        incomplete_tail: None,
        switched: false,
        wal_end: None,
    };
    let seg_end = start + seg_size;

    // The segment may open with the tail of a record begun in the previous one.
    let mut pos = start + LONG_HEADER_SIZE as u64;
    if flags & XLP_FIRST_IS_CONTRECORD != 0 {
        match reader.skip_continuation(u32_at(segment, 16)) {
            Ok(Some(p)) => pos = p,
            Ok(None) => return Ok(out),
            Err(end) => {
                out.wal_end = Some(end);
                return Ok(out);
            }
        }
    }

    let mut prev: Option<u64> = None;
    let mut scratch = Vec::new();
    while pos < seg_end {
        // A record that would start at a page boundary starts after that page's header.
        if pos.is_multiple_of(reader.page_size) {
            match reader.page(pos) {
                Ok(page) if page.info & XLP_FIRST_IS_CONTRECORD != 0 => {
                    out.wal_end = Some(WalEnd::BadPage {
                        page: Lsn(pos),
                        why: "continues a record where a new one should begin",
                    });
                    break;
                }
                Ok(page) => pos += page.header_len,
                Err(fault) => {
                    out.wal_end = Some(fault.into_end(pos));
                    break;
                }
            }
        }
        match reader.read_record(pos, prev, &mut scratch) {
            Step::Record { header, bytes, end } => {
                let (lsn, end_lsn) = (Lsn(pos), Lsn(end));
                visit(&header, bytes, first.pg_major, lsn, end_lsn)?;
                out.end_lsn = end_lsn;
                prev = Some(pos);
                pos = end;
                if header.rmid == RM_XLOG_ID && header.info & !XLR_INFO_MASK == XLOG_SWITCH {
                    out.switched = true;
                    break;
                }
            }
            // The server crashed before writing the rest of the record; after recovery, new WAL
            // was written from the page where it should have continued. PostgreSQL (15, and
            // minor releases back to 10) skips it the same way.
            Step::Overwritten { restart } => pos = restart,
            Step::Incomplete => {
                out.incomplete_tail = Some(Lsn(pos));
                break;
            }
            Step::End(end) => {
                out.wal_end = Some(end);
                break;
            }
        }
    }
    Ok(out)
}

/// The fields of a record header (`XLogRecord`) we use past its length.
#[derive(Debug, Clone, Copy)]
struct RecordHeader {
    xid: u32,
    prev: u64,
    info: u8,
    rmid: u8,
    crc: u32,
}

impl RecordHeader {
    /// `b` holds at least the 24 header bytes.
    fn parse(b: &[u8]) -> Self {
        Self {
            xid: u32_at(b, 4),
            prev: u64_at(b, 8),
            info: b[16],
            rmid: b[17],
            crc: u32_at(b, CRC_OFFSET),
        }
    }
}

/// A page whose header checked out.
struct Page<'a> {
    info: u16,
    rem_len: u32,
    header_len: u64,
    /// The page's bytes after its header.
    body: &'a [u8],
}

enum PageFault {
    /// Past the bytes we were given.
    Missing,
    Bad(&'static str),
}

impl PageFault {
    fn into_end(self, page: u64) -> WalEnd {
        let why = match self {
            PageFault::Missing => "past the bytes given",
            PageFault::Bad(why) => why,
        };
        WalEnd::BadPage {
            page: Lsn(page),
            why,
        }
    }
}

/// What reading at a record's start found.
enum Step<'s> {
    Record {
        header: RecordHeader,
        /// The whole record, header included.
        bytes: &'s [u8],
        end: u64,
    },
    /// The record runs past the bytes we were given.
    Incomplete,
    /// The record never completed: the page where it should continue holds newer WAL, which
    /// starts at `restart`.
    Overwritten {
        restart: u64,
    },
    End(WalEnd),
}

struct Reader<'a> {
    segment: &'a [u8],
    next: Option<&'a [u8]>,
    first: LongPageHeader,
    start: u64,
    seg_size: u64,
    page_size: u64,
    /// The newest timeline seen on a page so far; along the WAL it may only grow.
    timeline: u32,
}

impl<'a> Reader<'a> {
    /// Checks the header of the page at `at` (a page boundary in this segment or in `next`).
    fn page(&mut self, at: u64) -> Result<Page<'a>, PageFault> {
        let (file, offset) = if at < self.start + self.seg_size {
            (self.segment, at - self.start)
        } else if at < self.start + 2 * self.seg_size {
            match self.next {
                Some(next) => (next, at - self.start - self.seg_size),
                None => return Err(PageFault::Missing),
            }
        } else {
            return Err(PageFault::Missing);
        };
        let (offset, size) = (offset as usize, self.page_size as usize);
        let page = file
            .get(offset..offset + size)
            .ok_or(PageFault::Bad("the next segment is shorter than a segment"))?;
        if u16_at(page, 0) != self.first.magic {
            return Err(PageFault::Bad(
                "page magic differs from the segment's first page",
            ));
        }
        let info = u16_at(page, 2);
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(PageFault::Bad("unknown page flags"));
        }
        let header_len = if offset == 0 {
            // The first page of `next`: it must be the same cluster, with the same layout.
            if info & XLP_LONG_HEADER == 0 {
                return Err(PageFault::Bad("segment starts without a long page header"));
            }
            match LongPageHeader::parse(page) {
                Ok(h)
                    if h.system_identifier == self.first.system_identifier
                        && h.segment_size == self.first.segment_size
                        && h.block_size == self.first.block_size => {}
                _ => {
                    return Err(PageFault::Bad(
                        "next segment is of another cluster or layout",
                    ))
                }
            }
            LONG_HEADER_SIZE as u64
        } else {
            if info & XLP_LONG_HEADER != 0 {
                return Err(PageFault::Bad("long page header inside a segment"));
            }
            SHORT_HEADER_SIZE
        };
        if u64_at(page, 8) != at {
            return Err(PageFault::Bad(
                "page address is not the page's own (recycled or overwritten)",
            ));
        }
        let timeline = u32_at(page, 4);
        if timeline < self.timeline {
            return Err(PageFault::Bad("timeline goes backwards"));
        }
        self.timeline = timeline;
        Ok(Page {
            info,
            rem_len: u32_at(page, 16),
            header_len,
            body: &page[header_len as usize..],
        })
    }

    /// Skips the tail of a record begun in the previous segment (`rem_len` bytes from the first
    /// page's data on). Returns where the first record starting here begins; None when the tail
    /// fills the whole segment.
    fn skip_continuation(&mut self, rem_len: u32) -> Result<Option<u64>, WalEnd> {
        let mut page = self.start;
        let mut header_len = LONG_HEADER_SIZE as u64;
        let mut left = u64::from(rem_len);
        if left == 0 {
            return Err(WalEnd::BadContinuation {
                at: Lsn(self.start),
                page: Lsn(page),
            });
        }
        loop {
            let room = self.page_size - header_len;
            if left <= room {
                return Ok(Some(page + header_len + align8(left)));
            }
            left -= room;
            page += self.page_size;
            if page >= self.start + self.seg_size {
                return Ok(None);
            }
            let p = self.page(page).map_err(|fault| fault.into_end(page))?;
            if p.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                return Ok(Some(page + p.header_len));
            }
            if p.info & XLP_FIRST_IS_CONTRECORD == 0 || u64::from(p.rem_len) != left {
                return Err(WalEnd::BadContinuation {
                    at: Lsn(self.start),
                    page: Lsn(page),
                });
            }
            header_len = p.header_len;
        }
    }

    /// Reads and checks the record starting at `at` (in this segment, past any page header).
    /// `prev` is the previous record's start, None for the first record read.
    fn read_record<'s>(&mut self, at: u64, prev: Option<u64>, scratch: &'s mut Vec<u8>) -> Step<'s>
    where
        'a: 's,
    {
        let segment: &'a [u8] = self.segment;
        let in_page = at % self.page_size;
        let offset = (at - self.start) as usize;
        // Alignment leaves at least 8 bytes of the page, so xl_tot_len is here.
        let here = &segment[offset..offset + (self.page_size - in_page) as usize];
        let tot_len = u32_at(here, 0);
        if tot_len == 0 {
            return Step::End(WalEnd::Zeroed { at: Lsn(at) });
        }
        if tot_len < RECORD_HEADER_SIZE as u32 || tot_len > MAX_RECORD_LEN {
            return Step::End(WalEnd::BadLength {
                at: Lsn(at),
                len: tot_len,
            });
        }
        let tot = tot_len as usize;
        if here.len() >= RECORD_HEADER_SIZE {
            if let Err(end) = check_prev(at, &RecordHeader::parse(here), prev) {
                return Step::End(end);
            }
        }
        if tot <= here.len() {
            return finish(at, &here[..tot], at + align8(tot as u64));
        }

        // The record spans pages: gather it, checking each continuation page.
        scratch.clear();
        scratch.extend_from_slice(here);
        let mut page = at - in_page + self.page_size;
        let end = loop {
            let p = match self.page(page) {
                Ok(p) => p,
                Err(PageFault::Missing) => return Step::Incomplete,
                Err(fault) => return Step::End(fault.into_end(page)),
            };
            if p.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                return Step::Overwritten {
                    restart: page + p.header_len,
                };
            }
            let left = tot - scratch.len();
            if p.info & XLP_FIRST_IS_CONTRECORD == 0 || p.rem_len as usize != left {
                return Step::End(WalEnd::BadContinuation {
                    at: Lsn(at),
                    page: Lsn(page),
                });
            }
            let take = left.min(p.body.len());
            let had = scratch.len();
            scratch.extend_from_slice(&p.body[..take]);
            // A header split across pages is checked once it is whole, as PostgreSQL does.
            if had < RECORD_HEADER_SIZE && scratch.len() >= RECORD_HEADER_SIZE {
                if let Err(end) = check_prev(at, &RecordHeader::parse(scratch), prev) {
                    return Step::End(end);
                }
            }
            if take == left {
                break page + p.header_len + align8(take as u64);
            }
            page += self.page_size;
        };
        finish(at, scratch, end)
    }
}

/// `xl_prev` must name the previous record; for the first one read, something before it.
fn check_prev(at: u64, h: &RecordHeader, prev: Option<u64>) -> Result<(), WalEnd> {
    let ok = match prev {
        Some(p) => h.prev == p,
        None => h.prev < at,
    };
    if ok {
        Ok(())
    } else {
        Err(WalEnd::WrongPrev {
            at: Lsn(at),
            prev: Lsn(h.prev),
            expected: prev.map(Lsn),
        })
    }
}

/// Checks the CRC of a whole record: CRC-32C over the bytes after the header, then over the
/// header up to `xl_crc` (that order, as `ValidXLogRecord` computes it).
fn finish(at: u64, bytes: &[u8], end: u64) -> Step<'_> {
    let header = RecordHeader::parse(bytes);
    let crc = crc32c::crc32c(&bytes[RECORD_HEADER_SIZE..]);
    let crc = crc32c::crc32c_append(crc, &bytes[..CRC_OFFSET]);
    if crc != header.crc {
        return Step::End(WalEnd::BadChecksum { at: Lsn(at) });
    }
    Step::Record { header, bytes, end }
}

/// The event a valid record stands for, if any.
fn interpret(
    h: &RecordHeader,
    bytes: &[u8],
    pg_major: u32,
    lsn: Lsn,
    end_lsn: Lsn,
) -> Result<Option<WalEvent>, RecordError> {
    let undecodable = |what| RecordError::UndecodableRecord { lsn, what };
    match h.rmid {
        RM_XACT_ID => {
            let op = h.info & XLOG_XACT_OPMASK;
            if !matches!(
                op,
                XLOG_XACT_COMMIT
                    | XLOG_XACT_ABORT
                    | XLOG_XACT_COMMIT_PREPARED
                    | XLOG_XACT_ABORT_PREPARED
            ) {
                return Ok(None);
            }
            let main = main_data(bytes, pg_major).map_err(undecodable)?;
            let (xid, time) = xact_end(h.info, h.xid, main, pg_major).map_err(undecodable)?;
            let time = pg_time(time);
            Ok(Some(match op {
                XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED => WalEvent::Commit {
                    xid,
                    lsn,
                    end_lsn,
                    time,
                },
                _ => WalEvent::Abort {
                    xid,
                    lsn,
                    end_lsn,
                    time,
                },
            }))
        }
        RM_XLOG_ID if h.info & !XLR_INFO_MASK == XLOG_RESTORE_POINT => {
            let main = main_data(bytes, pg_major).map_err(undecodable)?;
            if main.len() < RESTORE_POINT_SIZE {
                return Err(undecodable("restore point record too short"));
            }
            let raw = &main[8..RESTORE_POINT_SIZE];
            let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
            Ok(Some(WalEvent::RestorePoint {
                name: String::from_utf8_lossy(name).into_owned(),
                lsn,
                end_lsn,
                time: pg_time(i64_at(main, 0)),
            }))
        }
        RM_TBLSPC_ID if h.info & !XLR_INFO_MASK == XLOG_TBLSPC_CREATE => {
            let main = main_data(bytes, pg_major).map_err(undecodable)?;
            if main.len() < 5 {
                return Err(undecodable("tablespace creation record too short"));
            }
            let path = &main[4..];
            let path = &path[..path.iter().position(|&b| b == 0).unwrap_or(path.len())];
            Ok(Some(WalEvent::TablespaceCreated {
                oid: u32_at(main, 0),
                location: String::from_utf8_lossy(path).into_owned(),
                lsn,
                end_lsn,
            }))
        }
        _ => Ok(None),
    }
}

/// The xid and timestamp of a commit or abort record (`ParseCommitRecord`, `ParseAbortRecord`).
/// Main data starts with xact_time; then, with XLOG_XACT_HAS_INFO, an xinfo word whose bits say
/// which parts follow, in this order: dbinfo, subxacts, relfilenodes, dropped stats (15+),
/// invalidations (commits only), twophase xid, ... The twophase xid is the one a prepared
/// transaction's commit or abort is about; any other record's is its own `xl_xid`.
fn xact_end(
    info: u8,
    record_xid: u32,
    main: &[u8],
    pg_major: u32,
) -> Result<(u32, i64), &'static str> {
    let op = info & XLOG_XACT_OPMASK;
    let mut c = Cursor(main);
    let time = i64::from_le_bytes(c.array()?);
    let prepared = matches!(op, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED);
    if !prepared {
        // The rest (subtransactions, dropped relations, ...) does not change what we report.
        return Ok((record_xid, time));
    }
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
        u32::from_le_bytes(c.array()?)
    } else {
        0
    };
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        c.take(8)?;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        c.skip_counted(SUBXACT_SIZE)?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        c.skip_counted(RELFILENODE_SIZE)?;
    }
    if pg_major >= 15 && xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        c.skip_counted(STATS_ITEM_SIZE)?;
    }
    if op == XLOG_XACT_COMMIT_PREPARED && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        c.skip_counted(INVAL_MSG_SIZE)?;
    }
    if xinfo & XACT_XINFO_HAS_TWOPHASE == 0 {
        return Err("prepared transaction's commit or abort without its xid");
    }
    Ok((u32::from_le_bytes(c.array()?), time))
}

/// The main data of a record: what follows its block references, origin and top-level xid
/// (`DecodeXLogRecord`). Block images and data come after all those headers, main data last.
fn main_data(record: &[u8], pg_major: u32) -> Result<&[u8], &'static str> {
    decode_blocks(record, pg_major, &mut |_| {})
}

/// Walks a record's block references, handing `read` each block replay must read, and
/// returns its main data.
fn decode_blocks<'r>(
    record: &'r [u8],
    pg_major: u32,
    read: &mut dyn FnMut(BlockRef),
) -> Result<&'r [u8], &'static str> {
    let mut c = Cursor(&record[RECORD_HEADER_SIZE..]);
    let mut data_total: u64 = 0;
    let mut main_len: u64 = 0;
    let mut last_block: Option<u8> = None;
    let mut rel: Option<[u32; 3]> = None;
    while c.0.len() as u64 > data_total {
        let [id] = c.array()?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = u64::from(u8::from_le_bytes(c.array()?));
                data_total += main_len;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = u64::from(u32::from_le_bytes(c.array()?));
                data_total += main_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => c.skip(2)?,
            XLR_BLOCK_ID_TOPLEVEL_XID if pg_major >= 14 => c.skip(4)?,
            0..=XLR_MAX_BLOCK_ID => {
                if last_block.is_some_and(|last| id <= last) {
                    return Err("block references out of order");
                }
                last_block = Some(id);
                let [fork_flags] = c.array()?;
                let data_len = u16::from_le_bytes(c.array()?);
                if (fork_flags & BKPBLOCK_HAS_DATA != 0) != (data_len != 0) {
                    return Err("block data length disagrees with its flag");
                }
                data_total += u64::from(data_len);
                let mut applied = false;
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let image_len = u16::from_le_bytes(c.array()?);
                    c.skip(2)?; // hole_offset
                    let [bimg_info] = c.array()?;
                    let (compressed, apply) = if pg_major >= 15 {
                        (BKPIMAGE_COMPRESSED_15, BKPIMAGE_APPLY_15)
                    } else {
                        (BKPIMAGE_IS_COMPRESSED_PRE15, BKPIMAGE_APPLY_PRE15)
                    };
                    applied = bimg_info & apply != 0;
                    // Only a compressed image says how long its hole is.
                    if bimg_info & compressed != 0 && bimg_info & BKPIMAGE_HAS_HOLE != 0 {
                        c.skip(2)?;
                    }
                    data_total += u64::from(image_len);
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    let node: [u8; RELFILENODE_SIZE] = c.array()?;
                    rel = Some([0, 4, 8].map(|at| u32_at(&node, at)));
                }
                let Some([spc, db, relfile]) = rel else {
                    return Err("block reference to the same relation as no earlier one");
                };
                let block = u32::from_le_bytes(c.array()?);
                if !applied && fork_flags & BKPBLOCK_WILL_INIT == 0 {
                    read(BlockRef {
                        spc,
                        db,
                        rel: relfile,
                        fork: fork_flags & BKPBLOCK_FORK_MASK,
                        block,
                    });
                }
            }
            _ => return Err("unknown block id"),
        }
    }
    if c.0.len() as u64 != data_total {
        return Err("block and main data lengths do not add up to the record's");
    }
    Ok(&c.0[c.0.len() - main_len as usize..])
}

/// Reads little-endian fields off the front of a slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("record ends inside a field");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn skip(&mut self, n: usize) -> Result<(), &'static str> {
        self.take(n).map(|_| ())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Skips an `int` count followed by that many elements of `size` bytes.
    fn skip_counted(&mut self, size: usize) -> Result<(), &'static str> {
        let n = i32::from_le_bytes(self.array()?);
        let n = usize::try_from(n).map_err(|_| "negative element count")?;
        self.skip(n.checked_mul(size).ok_or("element count too large")?)
    }
}

fn pg_time(pg_micros: i64) -> UnixMicros {
    pg_micros.saturating_add(PG_EPOCH_UNIX_MICROS)
}

fn align8(n: u64) -> u64 {
    (n + 7) & !7
}

// Fixed-offset reads from slices whose length the caller has checked.
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    u64_at(b, at) as i64
}

#[cfg(test)]
mod tests;
