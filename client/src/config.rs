//! The client's configuration file: where the server is, which certificate proves who we
//! are, and which cluster we archive for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use walvault_proto::ClusterId;

use crate::error::ClientError;

/// Where the configuration is looked for when neither `--config` nor `WALVAULT_CONFIG` says.
pub const DEFAULT_PATH: &str = "/etc/walvault/walvault.toml";
/// How long wal-push and wal-fetch retry an unreachable server by default: long enough for a
/// server restart, short enough that PostgreSQL hears of an outage within a minute.
pub const DEFAULT_RETRY_SECS: u64 = 60;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: String,
    server_name: Option<String>,
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    cluster: Option<String>,
    #[serde(default)]
    compression: Compression,
    timeout_secs: Option<u64>,
    retry_secs: Option<u64>,
    push_ahead: Option<u32>,
    push_parallel: Option<u32>,
    spool_dir: Option<PathBuf>,
}

/// Most segments one `wal-push` pushes ahead of PostgreSQL's asking, and most in flight.
pub const MAX_PUSH_AHEAD: u32 = 64;
pub const MAX_PUSH_PARALLEL: u32 = 16;

/// `wal-push` look-ahead: besides the file PostgreSQL asks for, push up to `ahead` more of
/// its `.ready` segments, `parallel` at a time, and remember the acknowledged ones in the
/// spool so that PostgreSQL's later calls for them return at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAhead {
    /// 0: off, every call pushes only its own file.
    pub ahead: u32,
    pub parallel: u32,
    /// Where acknowledgements and the status live; by default `walvault.spool` in the
    /// directory of the pushed file (PostgreSQL's `pg_wal`, which backups leave out).
    pub spool_dir: Option<PathBuf>,
}

/// Compression on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    None,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub path: PathBuf,
    pub server: String,
    pub server_name: Option<String>,
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub cluster: Option<ClusterId>,
    pub compression: Compression,
    pub timeout: Duration,
    /// How long wal-push and wal-fetch go on retrying a server they cannot reach.
    pub retry: Duration,
    pub push: PushAhead,
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Config(format!(
                "cannot read {}: {e} (give --config FILE or set WALVAULT_CONFIG)",
                path.display()
            ))
        })?;
        let bad = |m: String| ClientError::Config(format!("{}: {m}", path.display()));
        let raw: RawConfig = toml::from_str(&text).map_err(|e| {
            // toml's own text spans several lines; name the line instead.
            bad(match e.span() {
                Some(span) => {
                    let n = text[..span.start.min(text.len())].matches('\n').count();
                    let line = text.lines().nth(n).unwrap_or_default().trim();
                    format!("line {} ({line}): {}", n + 1, e.message())
                }
                None => e.message().to_owned(),
            })
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if !raw.server.starts_with("https://") {
            return Err(bad(format!(
                "server = {:?} must be an https:// address",
                raw.server
            )));
        }
        let cluster = raw
            .cluster
            .map(|c| c.parse::<ClusterId>())
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        let ahead = raw.push_ahead.unwrap_or(0);
        if ahead > MAX_PUSH_AHEAD {
            return Err(bad(format!(
                "push_ahead = {ahead}: at most {MAX_PUSH_AHEAD} (0 turns look-ahead off)"
            )));
        }
        let parallel = raw.push_parallel.unwrap_or(3);
        if !(1..=MAX_PUSH_PARALLEL).contains(&parallel) {
            return Err(bad(format!(
                "push_parallel = {parallel}: give 1 to {MAX_PUSH_PARALLEL}"
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            server: raw.server,
            server_name: raw.server_name,
            ca: abs(raw.ca),
            cert: raw.cert.map(abs),
            key: raw.key.map(abs),
            cluster,
            compression: raw.compression,
            timeout: Duration::from_secs(raw.timeout_secs.unwrap_or(300).max(1)),
            retry: Duration::from_secs(raw.retry_secs.unwrap_or(DEFAULT_RETRY_SECS)),
            push: PushAhead {
                ahead,
                parallel,
                spool_dir: raw.spool_dir.map(abs),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> Result<ClientConfig, ClientError> {
        let dir = std::env::temp_dir().join(format!("walvault-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("c{}.toml", extra.len()));
        std::fs::write(
            &path,
            format!("server = \"https://localhost:7400\"\nca = \"ca.crt\"\n{extra}"),
        )
        .unwrap();
        let c = ClientConfig::load(&path);
        let _ = std::fs::remove_file(&path);
        c
    }

    #[test]
    fn look_ahead_is_off_by_default_and_bounded() {
        let c = load("").unwrap();
        assert_eq!(c.push.ahead, 0);
        assert_eq!(c.push.parallel, 3);
        let c = load("push_ahead = 8\nspool_dir = \"spool\"\n").unwrap();
        assert_eq!(c.push.ahead, 8);
        assert!(c.push.spool_dir.unwrap().is_absolute());
        for (bad, word) in [
            ("push_ahead = 65\n", "push_ahead"),
            ("push_parallel = 0\n", "push_parallel"),
            ("push_parallel = 17\n", "push_parallel"),
            ("push_ahead = -1\n", "push_ahead"),
        ] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains(word) && !e.contains('\n'), "{bad}: {e}");
        }
    }
}
