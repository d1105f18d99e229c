//! The at-rest format of an archived WAL file: a standard zstd file (so `zstd -d` restores
//! the original bytes) that opens with a zstd *skippable frame* carrying our metadata — the
//! original size, its blake3 and when it was archived. The file is self-describing, so the
//! catalog can be rebuilt from the archive alone and a fetch can verify end to end.

use std::io::Read;

/// Skippable frame magic 0x184D2A50 + 7 ('W' for walvault; any of 0..=15 is valid).
const SKIPPABLE_MAGIC: u32 = 0x184D_2A57;
const TAG: &[u8; 8] = b"WALVAULT";
const VERSION: u8 = 1;
/// tag + version + size + archived_at + blake3
const PAYLOAD_LEN: usize = 8 + 1 + 8 + 8 + 32;
pub const HEADER_LEN: usize = 8 + PAYLOAD_LEN;

/// What the metadata frame records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredMeta {
    /// Size of the original file.
    pub size: u64,
    pub archived_unix: i64,
    pub blake3: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error("has no walvault metadata frame (not written by walvault, or damaged)")]
    NoMetadata,
    #[error("has walvault metadata of unknown version {0}")]
    UnknownVersion(u8),
    #[error("could not be read: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot be decompressed: {0}")]
    Undecompressable(String),
    #[error("decompresses to {actual} bytes, but {recorded} were archived")]
    SizeMismatch { recorded: u64, actual: u64 },
    #[error("does not match the blake3 recorded when it was archived")]
    ChecksumMismatch,
}

impl StoredError {
    /// Whether the file's own bytes are wrong (rather than unreadable for now).
    pub fn is_damage(&self) -> bool {
        !matches!(self, StoredError::Io(_))
    }
}

/// An archived file read back and checked against its metadata frame.
#[derive(Debug)]
pub struct Verified {
    pub meta: StoredMeta,
    /// The zstd stream after the metadata frame.
    pub zstd: Vec<u8>,
    /// The original bytes: all of them, or (see [`verify`]) only the first ones.
    pub plain: Vec<u8>,
}

/// Checks the bytes of an archived file (`<name>.zst`): its metadata frame, then that the
/// content decompresses to the recorded size and blake3. Keeps the original bytes up to
/// `keep` of them (`usize::MAX`: all), hashing the rest as it goes, so a check need not hold a
/// whole segment.
pub fn verify(bytes: Vec<u8>, keep: usize) -> Result<Verified, StoredError> {
    let meta = StoredMeta::decode(&bytes)?;
    let keep = keep.min(meta.size.min(walvault_proto::MAX_WAL_FILE_SIZE) as usize);
    let mut plain = Vec::with_capacity(keep);
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut decoder = zstd::stream::read::Decoder::new(&bytes[HEADER_LEN..])
        .map_err(|e| StoredError::Undecompressable(e.to_string()))?;
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoredError::Undecompressable(e.to_string())),
        };
        size += n as u64;
        // One byte past the recorded size is enough to know it is wrong.
        if size > meta.size {
            return Err(StoredError::SizeMismatch {
                recorded: meta.size,
                actual: size,
            });
        }
        hasher.update(&buf[..n]);
        let room = keep - plain.len();
        plain.extend_from_slice(&buf[..n.min(room)]);
    }
    if size != meta.size {
        return Err(StoredError::SizeMismatch {
            recorded: meta.size,
            actual: size,
        });
    }
    if *hasher.finalize().as_bytes() != meta.blake3 {
        return Err(StoredError::ChecksumMismatch);
    }
    let mut zstd = bytes;
    zstd.drain(..HEADER_LEN);
    Ok(Verified { meta, zstd, plain })
}

impl StoredMeta {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&(PAYLOAD_LEN as u32).to_le_bytes());
        out[8..16].copy_from_slice(TAG);
        out[16] = VERSION;
        out[17..25].copy_from_slice(&self.size.to_le_bytes());
        out[25..33].copy_from_slice(&self.archived_unix.to_le_bytes());
        out[33..65].copy_from_slice(&self.blake3);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, StoredError> {
        if b.len() < HEADER_LEN
            || b[0..4] != SKIPPABLE_MAGIC.to_le_bytes()
            || b[4..8] != (PAYLOAD_LEN as u32).to_le_bytes()
            || &b[8..16] != TAG
        {
            return Err(StoredError::NoMetadata);
        }
        if b[16] != VERSION {
            return Err(StoredError::UnknownVersion(b[16]));
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[17..25]);
        let mut at = [0u8; 8];
        at.copy_from_slice(&b[25..33]);
        let mut blake3 = [0u8; 32];
        blake3.copy_from_slice(&b[33..65]);
        Ok(Self {
            size: u64::from_le_bytes(size),
            archived_unix: i64::from_le_bytes(at),
            blake3,
        })
    }

    /// Reads only the metadata frame at the start of `r`.
    pub fn read_from(r: &mut impl Read) -> Result<Self, StoredError> {
        let mut b = [0u8; HEADER_LEN];
        match r.read_exact(&mut b) {
            Ok(()) => Self::decode(&b),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(StoredError::NoMetadata),
            Err(e) => Err(e.into()),
        }
    }
}

/// Why `wal-unpack` could not deliver a file.
#[derive(Debug)]
pub enum UnpackError {
    /// The archive does not have it (and need not: PostgreSQL probes for files).
    Missing,
    /// Anything else: recovery must stop rather than end here.
    Failed(String),
}

/// Writes the original bytes of the archived file `<dir>/<name>.zst` to `dest`, checked
/// against its size and blake3. This is the `restore_command` of instances the server starts
/// (`walvault-server wal-unpack`), run as the PostgreSQL OS user. A segment up to `through`
/// (the last one the restore needs) that the archive lacks is a failure, not a miss.
pub fn unpack(
    dir: &std::path::Path,
    name: &str,
    dest: &std::path::Path,
    through: Option<&walvault_proto::WalFileName>,
) -> Result<(), UnpackError> {
    let name: walvault_proto::WalFileName = name
        .parse()
        .map_err(|e| UnpackError::Failed(format!("{e}")))?;
    let src = dir.join(format!("{name}{}", crate::layout::STORED_EXT));
    let bytes = match std::fs::read(&src) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match through.filter(|t| name.is_needed_through(t)) {
                Some(t) => Err(UnpackError::Failed(format!(
                    "{name} is not in the archive, but this restore needs every segment \
                     through {t}; stopping recovery instead of ending it early"
                ))),
                None => Err(UnpackError::Missing),
            };
        }
        Err(e) => return Err(UnpackError::Failed(format!("read {}: {e}", src.display()))),
    };
    let plain = verify(bytes, usize::MAX)
        .map_err(|e| {
            UnpackError::Failed(format!(
                "{} {e}: the archived copy is damaged",
                src.display()
            ))
        })?
        .plain;
    std::fs::write(dest, plain)
        .map_err(|e| UnpackError::Failed(format!("write {}: {e}", dest.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_stays_a_standard_zstd_file() {
        let original = b"hello WAL".repeat(1000);
        let meta = StoredMeta {
            size: original.len() as u64,
            archived_unix: 1_700_000_000,
            blake3: *blake3::hash(&original).as_bytes(),
        };
        let mut file = meta.encode().to_vec();
        file.extend(zstd::encode_all(&original[..], 1).unwrap());
        // Any zstd decoder skips our frame.
        assert_eq!(zstd::decode_all(&file[..]).unwrap(), original);
        assert_eq!(StoredMeta::read_from(&mut &file[..]).unwrap(), meta);
    }

    #[test]
    fn damage_is_told_apart() {
        // Bytes that do not compress to nothing, so a flipped byte lands in real data.
        let original: Vec<u8> = (0u32..20_000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let meta = StoredMeta {
            size: original.len() as u64,
            archived_unix: 1,
            blake3: *blake3::hash(&original).as_bytes(),
        };
        let mut file = meta.encode().to_vec();
        file.extend(zstd::encode_all(&original[..], 1).unwrap());
        assert_eq!(verify(file.clone(), usize::MAX).unwrap().plain, original);
        // Checked whole, kept in part.
        assert_eq!(verify(file.clone(), 100).unwrap().plain, original[..100]);
        // Another content under the same frame.
        let mut other = meta.encode().to_vec();
        other.extend(zstd::encode_all(&vec![7u8; original.len()][..], 1).unwrap());
        assert!(matches!(
            verify(other, 0),
            Err(StoredError::ChecksumMismatch)
        ));
        // A flipped byte in the stream, and a truncated one.
        let mut flipped = file.clone();
        let at = HEADER_LEN + (file.len() - HEADER_LEN) / 2;
        flipped[at] ^= 0xFF;
        assert!(verify(flipped, 0).unwrap_err().is_damage());
        let short = file[..file.len() - 10].to_vec();
        assert!(verify(short, 0).unwrap_err().is_damage());
    }

    #[test]
    fn refuses_foreign_files() {
        let plain = zstd::encode_all(&b"x"[..], 1).unwrap();
        assert!(matches!(
            StoredMeta::decode(&plain),
            Err(StoredError::NoMetadata)
        ));
        assert!(matches!(
            StoredMeta::read_from(&mut &b"ab"[..]),
            Err(StoredError::NoMetadata)
        ));
    }
}
