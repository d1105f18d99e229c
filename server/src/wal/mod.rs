//! The WAL archive (DESIGN §5): what may enter it, how it is stored, how it comes back out.

pub mod archive;
mod continuity;
pub mod header;
pub mod history;
pub mod ledger;
pub mod push;
pub mod records;
pub mod stored;
mod text;
pub mod timeindex;
mod upkeep;

pub use archive::{ArchiveError, FetchedWal, IncomingWal, PushOutcome, Reconciled, WalArchive};
pub use continuity::{decode_pruned, encode_pruned};
pub use push::{Begun, Push, PushHeader};
