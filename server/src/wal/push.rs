//! Receiving one WAL file as it streams in (DESIGN §5, §10). The bytes go to a temporary file
//! under `.incoming/` as they arrive; on the way they pass a checker that decompresses them
//! (with a bounded zstd window), hashes them, counts them against the size the client declared
//! and keeps only the beginning for the header checks (all of a small text file). Nothing the
//! client sends is held whole, and a file longer than it said, or than the cluster's segments
//! can be, is refused the moment it passes the mark.
//!
//! Only once the content checks out is it published, under the cluster's lock (never held while
//! waiting for the client): checked against the cluster, against what the archive already holds
//! under the name (the same content again is a success, a damaged copy is repaired, other
//! content is refused), against the quota; then fsynced, hard-linked into place (a rename over a
//! damaged copy), the directory fsynced, and catalogued. A push abandoned half way leaves
//! nothing: its temporary file is removed when it is dropped, and at start-up otherwise.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use walvault_proto::{ClusterId, WalFileKind, WalFileName, MAX_WAL_FILE_SIZE};

use super::archive::{ArchiveError, Existing, IncomingWal, PushOutcome, WalArchive};
use super::stored::{StoredError, StoredMeta};
use super::text;
use crate::catalog::WalRecord;
use crate::layout::{INCOMING_DIR, STORED_EXT};
use crate::unix_now;

/// zstd level when the server compresses (the client sent plain bytes): fast, since
/// PostgreSQL waits on the push.
const SERVER_ZSTD_LEVEL: i32 = 1;
/// The largest zstd window a pushed stream may use: 8 MiB (`walvault wal-push` uses 512 KiB);
/// bounds what decoding one push may allocate.
const WINDOW_LOG_MAX: u32 = 23;
/// How much of a segment's beginning the checks need (its long page header is 40 bytes).
const SEGMENT_HEAD: usize = 8192;
/// What zstd may add to incompressible data, and the frame around it.
fn compressed_bound(size: u64) -> u64 {
    size + size / 255 + (128 << 10)
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// What a client declares before it sends a file.
#[derive(Debug, Clone)]
pub struct PushHeader {
    pub name: WalFileName,
    /// Size of the original file.
    pub size: u64,
    pub blake3: [u8; 32],
    /// The payload is a zstd stream (else the file itself).
    pub zstd: bool,
}

/// How a push begins.
#[derive(Debug)]
pub enum Begun {
    /// Send the payload to [`Push::write`], then [`Push::finish`].
    Receiving(Box<Push>),
    /// The archive holds this name with this content already: nothing to receive.
    AlreadyArchived,
}

/// The decompressed side: hashed, counted against the declared size, its head kept.
#[derive(Debug)]
struct Checker {
    hasher: blake3::Hasher,
    size: u64,
    declared: u64,
    head: Vec<u8>,
    head_cap: usize,
}

impl Write for Checker {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size + buf.len() as u64 > self.declared {
            return Err(io::Error::new(io::ErrorKind::InvalidData, Longer));
        }
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        let room = self.head_cap.saturating_sub(self.head.len());
        self.head.extend_from_slice(&buf[..room.min(buf.len())]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The marker error of content longer than declared.
#[derive(Debug)]
struct Longer;

impl std::fmt::Display for Longer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("more bytes than declared")
    }
}

impl std::error::Error for Longer {}

enum Body {
    /// The client's zstd stream goes to the file as it is, and through the decoder.
    Zstd {
        file: BufWriter<fs::File>,
        decoder: zstd::stream::write::Decoder<'static, Checker>,
    },
    /// Plain bytes: checked, and compressed into the file.
    Plain {
        encoder: zstd::stream::write::Encoder<'static, BufWriter<fs::File>>,
        checker: Checker,
    },
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Body::Zstd { .. } => "Body::Zstd",
            Body::Plain { .. } => "Body::Plain",
        })
    }
}

/// A push being received.
#[derive(Debug)]
pub struct Push {
    archive: WalArchive,
    cluster: ClusterId,
    header: PushHeader,
    dir: PathBuf,
    tmp: PathBuf,
    body: Option<Body>,
    /// When the file was archived, as its metadata frame and the catalog both say.
    archived_unix: i64,
    /// Payload bytes received, and the bound they may not pass.
    received: u64,
    max_payload: u64,
    started: Instant,
    /// Time spent writing and checking pieces; the rest of the receive waited on the client.
    writing: Duration,
    published: bool,
}

impl Drop for Push {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl WalArchive {
    /// The most bytes a file of this name may have in `cluster`: its segment size once bound
    /// (PostgreSQL's maximum before), a text file's bound for history and backup files.
    pub fn max_file_size(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<u64, ArchiveError> {
        Ok(match name.kind() {
            WalFileKind::History | WalFileKind::Backup => text::MAX_TEXT_FILE as u64,
            WalFileKind::Segment | WalFileKind::Partial => self
                .cluster_record(cluster)?
                .binding
                .map_or(MAX_WAL_FILE_SIZE, |b| u64::from(b.wal_segment_size)),
        })
    }

    /// Begins a push: checks the declared size against the cluster, answers at once when the
    /// archive holds the same content, else opens the temporary file. Blocking.
    pub fn begin_push(
        &self,
        cluster: &ClusterId,
        header: PushHeader,
    ) -> Result<Begun, ArchiveError> {
        let name = header.name.clone();
        let limit = self.max_file_size(cluster, &name)?;
        if header.size > limit {
            return Err(ArchiveError::TooLarge {
                cluster: cluster.clone(),
                name,
                detail: format!("the client declared {} bytes", header.size),
                limit,
            });
        }
        let dir = self.wal_dir(cluster)?;
        let path = dir.join(format!("{name}{STORED_EXT}"));
        {
            let lock = self.lock(cluster);
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            match self.existing(cluster, &name, &path)? {
                Existing::Intact(meta) if meta.blake3 == header.blake3 => {
                    // Published by a push that died before cataloguing it: record it now,
                    // before PostgreSQL is told it is archived and recycles its copy.
                    if self.catalog.wal_file(cluster, &name)?.is_none() {
                        self.adopt(cluster, &name, &path, &meta)?;
                    }
                    tracing::info!(%cluster, %name, "already archived with the same content");
                    return Ok(Begun::AlreadyArchived);
                }
                Existing::Intact(_) => {
                    return Err(ArchiveError::ContentConflict {
                        cluster: cluster.clone(),
                        name,
                    })
                }
                Existing::Damaged {
                    expected: Some(b3), ..
                } if b3 != header.blake3 => {
                    return Err(ArchiveError::ContentConflict {
                        cluster: cluster.clone(),
                        name,
                    })
                }
                // Absent, or damaged and this may be its good copy: `finish` decides.
                _ => {}
            }
        }
        let incoming = dir.join(INCOMING_DIR);
        fs::create_dir_all(&incoming).map_err(WalArchive::io_err(
            cluster,
            format!("create {}", incoming.display()),
        ))?;
        let tmp = incoming.join(format!(
            "{name}.{}.{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        let meta = StoredMeta {
            size: header.size,
            archived_unix: unix_now(),
            blake3: header.blake3,
        };
        let io = |context: String| WalArchive::io_err(cluster, context);
        let mut file = BufWriter::with_capacity(
            256 << 10,
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io(format!("create {}", tmp.display())))?,
        );
        let mut push = Push {
            archive: self.clone(),
            cluster: cluster.clone(),
            dir,
            tmp,
            body: None,
            archived_unix: meta.archived_unix,
            received: 0,
            max_payload: if header.zstd {
                compressed_bound(header.size)
            } else {
                header.size
            },
            started: Instant::now(),
            writing: Duration::ZERO,
            published: false,
            header,
        };
        file.write_all(&meta.encode())
            .map_err(|e| push.write_error(e))?;
        let checker = Checker {
            hasher: blake3::Hasher::new(),
            size: 0,
            declared: push.header.size,
            head: Vec::new(),
            head_cap: match push.header.name.kind() {
                WalFileKind::History | WalFileKind::Backup => text::MAX_TEXT_FILE,
                _ => SEGMENT_HEAD,
            },
        };
        push.body = Some(if push.header.zstd {
            let mut decoder = zstd::stream::write::Decoder::new(checker)
                .map_err(io("start decompressing".into()))?;
            decoder
                .window_log_max(WINDOW_LOG_MAX)
                .map_err(io("bound the zstd window".into()))?;
            Body::Zstd { file, decoder }
        } else {
            Body::Plain {
                encoder: zstd::stream::write::Encoder::new(file, SERVER_ZSTD_LEVEL)
                    .map_err(io("start compressing".into()))?,
                checker,
            }
        });
        Ok(Begun::Receiving(Box::new(push)))
    }

    /// Archives a file held whole (tests, and callers that have it anyway). Blocking.
    pub fn push(
        &self,
        cluster: &ClusterId,
        incoming: IncomingWal,
    ) -> Result<PushOutcome, ArchiveError> {
        let header = PushHeader {
            name: incoming.name,
            size: incoming.size,
            blake3: incoming.blake3,
            zstd: incoming.zstd,
        };
        match self.begin_push(cluster, header)? {
            Begun::AlreadyArchived => Ok(PushOutcome::AlreadyArchived),
            Begun::Receiving(mut p) => {
                for chunk in incoming.payload.chunks(walvault_proto::CHUNK_SIZE) {
                    p.write(chunk)?;
                }
                p.finish()
            }
        }
    }
}

impl Push {
    pub fn name(&self) -> &WalFileName {
        &self.header.name
    }

    /// A write error as the client should hear it: the quota or a full pool named as such.
    fn write_error(&self, e: io::Error) -> ArchiveError {
        let name = &self.header.name;
        if e.get_ref().is_some_and(|inner| inner.is::<Longer>()) {
            return ArchiveError::SizeMismatch {
                cluster: self.cluster.clone(),
                name: name.clone(),
                declared: self.header.size,
                actual: self.header.size + 1,
            };
        }
        match e.raw_os_error() {
            // ZFS refused the write itself: its accounting ran ahead of our pre-check.
            Some(libc::EDQUOT) => self
                .archive
                .quota_refusal(&self.cluster, name, self.received),
            Some(libc::ENOSPC) => ArchiveError::StorageFull {
                cluster: self.cluster.clone(),
                name: name.clone(),
            },
            _ => WalArchive::io_err(&self.cluster, format!("write {}", self.tmp.display()))(e),
        }
    }

    /// Takes the next piece of the payload. Blocking (file I/O, decompression).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ArchiveError> {
        let began = Instant::now();
        self.received += chunk.len() as u64;
        if self.received > self.max_payload {
            return Err(ArchiveError::TooLarge {
                cluster: self.cluster.clone(),
                name: self.header.name.clone(),
                detail: format!(
                    "the client sent {} bytes for a file it declared of {}",
                    self.received, self.header.size
                ),
                limit: self.header.size,
            });
        }
        // (error, whether it came from checking the content rather than from the disk)
        let r: Result<(), (io::Error, bool)> = match self.body.as_mut() {
            Some(Body::Zstd { file, decoder }) => file
                .write_all(chunk)
                .map_err(|e| (e, false))
                .and_then(|()| decoder.write_all(chunk).map_err(|e| (e, true))),
            Some(Body::Plain { encoder, checker }) => checker
                .write_all(chunk)
                .map_err(|e| (e, true))
                .and_then(|()| encoder.write_all(chunk).map_err(|e| (e, false))),
            None => Ok(()),
        };
        self.writing += began.elapsed();
        r.map_err(|(e, decoding)| self.payload_error(e, decoding))
    }

    /// An error of the payload: undecodable or too long (`decoding`), else the disk's.
    fn payload_error(&self, e: io::Error, decoding: bool) -> ArchiveError {
        let too_long = e.get_ref().is_some_and(|inner| inner.is::<Longer>());
        if decoding && !too_long {
            return ArchiveError::Undecodable {
                cluster: self.cluster.clone(),
                name: self.header.name.clone(),
                detail: e.to_string(),
            };
        }
        self.write_error(e)
    }

    /// Checks what arrived and publishes it. Blocking.
    pub fn finish(mut self) -> Result<PushOutcome, ArchiveError> {
        let cluster = self.cluster.clone();
        let name = self.header.name.clone();
        let received_ms = self.started.elapsed();
        let (checker, file) = match self.body.take() {
            Some(Body::Zstd { mut file, decoder }) => {
                let checker = decoder.finish().map_err(|e| self.payload_error(e, true))?;
                file.flush().map_err(|e| self.write_error(e))?;
                (checker, file)
            }
            Some(Body::Plain { encoder, checker }) => {
                let mut file = encoder.finish().map_err(|e| self.write_error(e))?;
                file.flush().map_err(|e| self.write_error(e))?;
                (checker, file)
            }
            None => {
                return Err(WalArchive::io_err(&cluster, "finish a push".to_owned())(
                    io::Error::other("nothing was received"),
                ))
            }
        };
        if checker.size != self.header.size {
            return Err(ArchiveError::SizeMismatch {
                cluster,
                name,
                declared: self.header.size,
                actual: checker.size,
            });
        }
        if *checker.hasher.finalize().as_bytes() != self.header.blake3 {
            return Err(ArchiveError::ChecksumMismatch { cluster, name });
        }
        let file = file
            .into_inner()
            .map_err(|e| self.write_error(e.into_error()))?;
        let stored_size = file.metadata().map_err(|e| self.write_error(e))?.len();
        let verified = self.started.elapsed();

        let archive = self.archive.clone();
        let lock = archive.lock(&cluster);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let binding = archive.check_content(&cluster, &name, &checker.head, checker.size)?;
        let path = self.dir.join(format!("{name}{STORED_EXT}"));
        let repair = match archive.existing(&cluster, &name, &path)? {
            Existing::None => None,
            Existing::Intact(meta) if meta.blake3 == self.header.blake3 => {
                // Another push of the same file won while this one was under way.
                return Ok(PushOutcome::AlreadyArchived);
            }
            Existing::Intact(_) => return Err(ArchiveError::ContentConflict { cluster, name }),
            Existing::Damaged {
                expected: Some(b3),
                reason,
            } if b3 == self.header.blake3 => Some(reason),
            Existing::Damaged {
                expected: Some(_), ..
            } => return Err(ArchiveError::ContentConflict { cluster, name }),
            Existing::Damaged {
                expected: None,
                reason,
            } => {
                // Nothing says what it was archived with: replacing it could replace history.
                return Err(ArchiveError::Damaged {
                    cluster: cluster.clone(),
                    path: path.display().to_string(),
                    source: StoredError::Io(io::Error::other(format!(
                        "{reason}, and the catalog has no record of its content; check it and \
                         remove it by hand before pushing {name} again"
                    ))),
                });
            }
        };
        archive.check_quota(cluster.tenant(), &name, stored_size)?;
        if let Some(b) = binding {
            archive.bind(&cluster, b)?;
        }
        let checked = self.started.elapsed();
        let publish = || -> io::Result<()> {
            file.sync_all()?;
            drop(file);
            if repair.is_some() {
                fs::rename(&self.tmp, &path)?;
            } else {
                // A hard link never replaces: if another writer won, we get AlreadyExists.
                fs::hard_link(&self.tmp, &path)?;
                fs::remove_file(&self.tmp)?;
            }
            fs::File::open(&self.dir)?.sync_all()
        };
        publish().map_err(|e| self.write_error(e))?;
        self.published = true;
        crate::fault::point("push-after-link");
        archive.catalog.put_wal(
            &cluster,
            &WalRecord {
                name: name.to_string(),
                size: self.header.size,
                stored_size,
                blake3: hex::encode(self.header.blake3),
                archived_unix: self.archived_unix,
            },
        )?;
        archive.published(&cluster, &name, &checker.head)?;
        if let Some(reason) = &repair {
            archive.catalog.remove_damage(&cluster, &name)?;
            tracing::info!(%cluster, %name, was = %reason, "repaired: the damaged copy was replaced by the pushed one, which has the content it was archived with");
        }
        tracing::info!(%cluster, %name, size = self.header.size, stored_size, "archived");
        // Where a push spends its time, for tuning (WALVAULT_LOG=walvault_server::wal=debug).
        tracing::debug!(
            %cluster, %name,
            receive_ms = received_ms.as_millis(),
            writing_ms = self.writing.as_millis(),
            verify_ms = (verified - received_ms).as_millis(),
            check_ms = (checked - verified).as_millis(),
            publish_ms = (self.started.elapsed() - checked).as_millis(),
            "push timings"
        );
        Ok(if repair.is_some() {
            PushOutcome::Repaired
        } else {
            PushOutcome::Archived
        })
    }
}
