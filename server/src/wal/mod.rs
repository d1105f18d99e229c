//! The WAL archive (DESIGN §5): what may enter it, how it is stored, how it comes back out.

pub mod archive;
pub mod header;
pub mod history;
pub mod records;
pub mod stored;
mod text;
pub mod timeindex;

pub use archive::{ArchiveError, FetchedWal, IncomingWal, PushOutcome, WalArchive};
