//! The catalog's store: one SQLite database (`<catalog>/catalog.sqlite`, WAL journal), one
//! table per tree, each a map of `BLOB` keys to `BLOB` values ordered by the keys' bytes, as
//! sled kept them.
//!
//! Why SQLite: a write that cannot be made durable (a full disk, an I/O error) fails its
//! statement and leaves the database as it was; once there is room again the next write goes
//! through, in the same process. sled 0.34 latches the first ENOSPC: every later insert and
//! flush fails until a restart (and opening it on a full disk panics), and under the archive's
//! per-cluster lock its flush has been seen to wait for good.
//!
//! Durability: writes commit without an fsync (`synchronous = NORMAL`); [`Store::flush`]
//! commits with one (`FULL`), which makes every earlier commit durable too, since they are all
//! in the same write-ahead log before it. So a caller writes, then flushes before it
//! acknowledges, as with sled. A crash loses only writes not flushed, never consistency.
//!
//! Concurrency: one writer connection behind a mutex (SQLite has one writer anyway), and a
//! few reader connections for scans, which read in pages of bounded size so that no scan
//! holds a connection, a lock or an unbounded buffer between pages.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// The database file inside the catalog directory.
pub const FILE: &str = "catalog.sqlite";
/// How long a statement waits for the database's lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// A scan reads at most this many rows, or about this many bytes, per page.
const PAGE_ROWS: usize = 512;
const PAGE_BYTES: usize = 8 << 20;
/// Reader connections kept for reuse.
const READERS: usize = 4;

#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// An exclusive lock on `<dir>/lock` for as long as the store is open: one process at a
    /// time (SQLite itself would let a rebuild run under a live server).
    _lock: std::fs::File,
}

/// Why a store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("another process has it open (is walvault-server running?)")]
    InUse,
    #[error("lock {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
}

/// One key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// What a tree is: a table name (one of ours, never user input).
#[derive(Debug, Clone)]
pub struct Tree {
    store: Arc<Store>,
    table: &'static str,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: readers never block the writer nor the writer them.
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

impl Store {
    /// Opens (creating) the database in `dir`, with a table for each of `tables`.
    pub fn open(dir: &Path, tables: &[&'static str]) -> Result<Arc<Self>, OpenError> {
        let lock_path = dir.join("lock");
        let lock_err = |source| OpenError::Lock {
            path: lock_path.display().to_string(),
            source,
        };
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(lock_err)?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::InUse),
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        let path = dir.join(FILE);
        let writer = Connection::open(&path)?;
        configure(&writer)?;
        writer.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
        )?;
        for t in tables {
            writer.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS \"{t}\" (k BLOB PRIMARY KEY, v BLOB NOT NULL) \
                 WITHOUT ROWID;"
            ))?;
        }
        Ok(Arc::new(Self {
            path,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            _lock: lock_file,
        }))
    }

    pub fn tree(self: &Arc<Self>, table: &'static str) -> Tree {
        Tree {
            store: self.clone(),
            table,
        }
    }

    /// A value of the `meta` table.
    pub fn meta(&self, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
        lock(&self.writer)
            .query_row("SELECT v FROM meta WHERE k = ?1", [key], |r| r.get(0))
            .optional()
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> rusqlite::Result<()> {
        lock(&self.writer).execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    /// Makes every write so far durable: one commit with a full fsync of the log.
    pub fn flush(&self) -> rusqlite::Result<()> {
        let w = lock(&self.writer);
        w.pragma_update(None, "synchronous", "FULL")?;
        let r = w.execute(
            "INSERT INTO meta (k, v) VALUES ('flushes', 1) \
             ON CONFLICT (k) DO UPDATE SET v = v + 1",
            [],
        );
        w.pragma_update(None, "synchronous", "NORMAL")?;
        r.map(|_| ())
    }

    fn reader(&self) -> rusqlite::Result<Connection> {
        if let Some(c) = lock(&self.readers).pop() {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(BUSY_TIMEOUT)?;
        Ok(c)
    }

    fn give_back(&self, c: Connection) {
        let mut r = lock(&self.readers);
        if r.len() < READERS {
            r.push(c);
        }
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: there is none).
fn after_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xFF {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

impl Tree {
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> rusqlite::Result<()> {
        lock(&self.store.writer).execute(
            &format!(
                "INSERT OR REPLACE INTO \"{}\" (k, v) VALUES (?1, ?2)",
                self.table
            ),
            params![key.as_ref(), value.as_ref()],
        )?;
        Ok(())
    }

    /// Inserts (replacing) several entries in one transaction.
    pub fn insert_all(
        &self,
        entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> rusqlite::Result<()> {
        let mut w = lock(&self.store.writer);
        let tx = w.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO \"{}\" (k, v) VALUES (?1, ?2)",
                self.table
            ))?;
            for (k, v) in entries {
                stmt.execute(params![k, v])?;
            }
        }
        tx.commit()
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> rusqlite::Result<Option<Vec<u8>>> {
        lock(&self.store.writer)
            .query_row(
                &format!("SELECT v FROM \"{}\" WHERE k = ?1", self.table),
                [key.as_ref()],
                |r| r.get(0),
            )
            .optional()
    }

    /// Removes a key; its value, if it had one.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> rusqlite::Result<Option<Vec<u8>>> {
        lock(&self.store.writer)
            .query_row(
                &format!("DELETE FROM \"{}\" WHERE k = ?1 RETURNING v", self.table),
                [key.as_ref()],
                |r| r.get(0),
            )
            .optional()
    }

    /// Removes every key starting with `prefix`, in one statement.
    pub fn remove_prefix(&self, prefix: impl AsRef<[u8]>) -> rusqlite::Result<()> {
        let prefix = prefix.as_ref();
        let w = lock(&self.store.writer);
        match after_prefix(prefix) {
            Some(end) => w.execute(
                &format!("DELETE FROM \"{}\" WHERE k >= ?1 AND k < ?2", self.table),
                params![prefix, end],
            ),
            None => w.execute(
                &format!("DELETE FROM \"{}\" WHERE k >= ?1", self.table),
                params![prefix],
            ),
        }?;
        Ok(())
    }

    pub fn clear(&self) -> rusqlite::Result<()> {
        lock(&self.store.writer).execute(&format!("DELETE FROM \"{}\"", self.table), [])?;
        Ok(())
    }

    /// Every entry whose key starts with `prefix`, in key order, read page by page.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Scan {
        let prefix = prefix.as_ref().to_vec();
        Scan {
            tree: self.clone(),
            end: after_prefix(&prefix),
            from: prefix,
            inclusive: true,
            page: VecDeque::new(),
            done: false,
        }
    }

    /// The entry with the greatest key that starts with `prefix`: one indexed lookup.
    pub fn last_with_prefix(&self, prefix: impl AsRef<[u8]>) -> rusqlite::Result<Option<Entry>> {
        let prefix = prefix.as_ref();
        let c = self.store.reader()?;
        let out = (|| {
            let row = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?));
            match after_prefix(prefix) {
                Some(end) => c
                    .prepare_cached(&format!(
                        "SELECT k, v FROM \"{}\" WHERE k >= ?1 AND k < ?2 ORDER BY k DESC LIMIT 1",
                        self.table
                    ))?
                    .query_row(params![prefix, end], row)
                    .optional(),
                None => c
                    .prepare_cached(&format!(
                        "SELECT k, v FROM \"{}\" WHERE k >= ?1 ORDER BY k DESC LIMIT 1",
                        self.table
                    ))?
                    .query_row(params![prefix], row)
                    .optional(),
            }
        })();
        self.store.give_back(c);
        out
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Scan {
        self.scan_prefix([])
    }

    /// The next page after `from`: up to [`PAGE_ROWS`] rows or about [`PAGE_BYTES`].
    fn page(
        &self,
        from: &[u8],
        inclusive: bool,
        end: Option<&[u8]>,
    ) -> rusqlite::Result<(Vec<Entry>, bool)> {
        let c = self.store.reader()?;
        let op = if inclusive { ">=" } else { ">" };
        let out = (|| {
            let mut rows = Vec::new();
            let mut bytes = 0usize;
            let mut take = |r: &rusqlite::Row<'_>| -> rusqlite::Result<bool> {
                let k: Vec<u8> = r.get(0)?;
                let v: Vec<u8> = r.get(1)?;
                bytes += k.len() + v.len();
                rows.push((k, v));
                Ok(rows.len() < PAGE_ROWS && bytes < PAGE_BYTES)
            };
            match end {
                Some(end) => {
                    let mut st = c.prepare_cached(&format!(
                        "SELECT k, v FROM \"{}\" WHERE k {op} ?1 AND k < ?2 ORDER BY k LIMIT {PAGE_ROWS}",
                        self.table
                    ))?;
                    let mut q = st.query(params![from, end])?;
                    while let Some(r) = q.next()? {
                        if !take(r)? {
                            break;
                        }
                    }
                }
                None => {
                    let mut st = c.prepare_cached(&format!(
                        "SELECT k, v FROM \"{}\" WHERE k {op} ?1 ORDER BY k LIMIT {PAGE_ROWS}",
                        self.table
                    ))?;
                    let mut q = st.query(params![from])?;
                    while let Some(r) = q.next()? {
                        if !take(r)? {
                            break;
                        }
                    }
                }
            }
            let full = rows.len() >= PAGE_ROWS || bytes >= PAGE_BYTES;
            Ok((rows, full))
        })();
        self.store.give_back(c);
        out
    }
}

/// A scan in key order, fetched a page at a time.
#[derive(Debug)]
pub struct Scan {
    tree: Tree,
    /// Where the next page starts (inclusively the first time, after it later).
    from: Vec<u8>,
    inclusive: bool,
    end: Option<Vec<u8>>,
    page: VecDeque<Entry>,
    done: bool,
}

impl Iterator for Scan {
    type Item = rusqlite::Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() && !self.done {
            match self
                .tree
                .page(&self.from, self.inclusive, self.end.as_deref())
            {
                Ok((rows, full)) => {
                    self.done = !full;
                    if let Some((k, _)) = rows.last() {
                        self.from = k.clone();
                        self.inclusive = false;
                    } else {
                        self.done = true;
                    }
                    self.page = rows.into();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.page.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_keep_byte_order_and_prefixes_do_not_bleed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &["t", "u"]).unwrap();
        let t = s.tree("t");
        for k in [&b"a\0b"[..], b"a\0a", b"a\x01", b"a", b"b\xff\xff", b"\xff"] {
            t.insert(k, k).unwrap();
        }
        s.tree("u").insert(b"a\0c", b"other tree").unwrap();
        let keys: Vec<Vec<u8>> = t.scan_prefix(b"a\0").map(|kv| kv.unwrap().0).collect();
        assert_eq!(keys, vec![b"a\0a".to_vec(), b"a\0b".to_vec()]);
        assert_eq!(t.iter().count(), 6);
        assert_eq!(t.scan_prefix(b"\xff").count(), 1);
        let last = |p: &[u8]| t.last_with_prefix(p).unwrap().map(|(k, _)| k);
        assert_eq!(last(b"a\0"), Some(b"a\0b".to_vec()));
        assert_eq!(last(b"a"), Some(b"a\x01".to_vec()));
        assert_eq!(last(b"\xff"), Some(b"\xff".to_vec()));
        assert_eq!(last(b"c"), None);
        assert_eq!(t.remove(b"a").unwrap(), Some(b"a".to_vec()));
        assert_eq!(t.remove(b"a").unwrap(), None);
        t.remove_prefix(b"a\0").unwrap();
        assert_eq!(t.iter().count(), 3);
        t.remove_prefix(b"\xff").unwrap();
        assert_eq!(t.get(b"\xff").unwrap(), None);
        s.flush().unwrap();
        assert_eq!(
            s.tree("u").get(b"a\0c").unwrap(),
            Some(b"other tree".to_vec())
        );
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &["t"]).unwrap();
        assert!(matches!(
            Store::open(dir.path(), &["t"]),
            Err(OpenError::InUse)
        ));
        drop(s);
        assert!(Store::open(dir.path(), &["t"]).is_ok());
    }

    #[test]
    fn scans_read_in_pages_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &["t"]).unwrap();
        let t = s.tree("t");
        let n = PAGE_ROWS * 2 + 7;
        for i in 0..n {
            t.insert(format!("k{i:06}"), vec![0u8; 10]).unwrap();
        }
        let big = vec![1u8; PAGE_BYTES / 3];
        for i in 0..5 {
            t.insert(format!("z{i}"), &big).unwrap();
        }
        let keys: Vec<Vec<u8>> = t.iter().map(|kv| kv.unwrap().0).collect();
        assert_eq!(keys.len(), n + 5);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "in order, once each");
        // Writes while a scan is half-way do not break it.
        let mut scan = t.scan_prefix(b"k");
        let first = scan.next().unwrap().unwrap();
        t.insert(b"k999999", b"late").unwrap();
        assert_eq!(first.0, b"k000000");
        assert_eq!(scan.count(), n);
    }
}
