//! Talking to the local PostgreSQL for a base backup: what the cluster is, and the
//! non-exclusive `pg_backup_start` / `pg_backup_stop` pair (named `pg_start_backup` /
//! `pg_stop_backup` before PostgreSQL 15), both in one session as PostgreSQL requires; if
//! the session ends early, PostgreSQL aborts the backup itself.

use std::path::PathBuf;

use tokio_postgres::{Client, Config, NoTls};
use walvault_proto::{Lsn, TimelineId};

use crate::error::ClientError;
use crate::pgdata::Tablespace;

/// What the backup needs to know about the running cluster.
#[derive(Debug, Clone)]
pub struct Facts {
    pub system_identifier: u64,
    /// `server_version_num`, like 150004.
    pub version_num: u32,
    pub wal_segment_size: u32,
    pub data_directory: PathBuf,
    pub tablespaces: Vec<Tablespace>,
}

impl Facts {
    pub fn major(&self) -> u32 {
        self.version_num / 10_000
    }
}

/// Where pg_backup_stop leaves us.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub lsn: Lsn,
    pub backup_label: String,
    pub tablespace_map: String,
}

pub struct Database {
    client: Client,
    describe: String,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// A libpq-style `key=value` conninfo, completed from PGHOST, PGPORT, PGUSER and PGDATABASE
/// and then from the defaults of a Debian host (the socket in /var/run/postgresql, port 5432,
/// the OS user's name, database postgres).
pub fn config(conninfo: Option<&str>) -> Result<Config, ClientError> {
    let mut c: Config = match conninfo {
        Some(s) => s
            .parse()
            .map_err(|e| ClientError::Usage(format!("--conninfo {s:?}: {e}")))?,
        None => Config::new(),
    };
    if c.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(h) => {
                c.host(&h);
            }
            None => {
                let socket = ["/var/run/postgresql", "/tmp"]
                    .into_iter()
                    .find(|d| std::path::Path::new(d).is_dir())
                    .unwrap_or("/var/run/postgresql");
                c.host_path(socket);
            }
        }
    }
    if c.get_ports().is_empty() {
        let port = env("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432);
        c.port(port);
    }
    if c.get_user().is_none() {
        let user = env("PGUSER")
            .or_else(|| env("USER"))
            .or_else(|| env("LOGNAME"))
            .unwrap_or_else(|| "postgres".into());
        c.user(&user);
    }
    if c.get_dbname().is_none() {
        c.dbname(env("PGDATABASE").as_deref().unwrap_or("postgres"));
    }
    c.application_name("walvault backup");
    Ok(c)
}

fn describe(c: &Config) -> String {
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    format!(
        "PostgreSQL at {host} port {} as {}",
        c.get_ports().first().copied().unwrap_or(5432),
        c.get_user().unwrap_or("?")
    )
}

impl Database {
    pub async fn connect(conninfo: Option<&str>) -> Result<Self, ClientError> {
        let c = config(conninfo)?;
        let describe = describe(&c);
        let (client, connection) = c.connect(NoTls).await.map_err(|e| {
            ClientError::Postgres(format!(
                "cannot connect to {describe}: {}; run walvault backup as the PostgreSQL OS \
                 user or give --conninfo",
                pg_message(&e)
            ))
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!(
                    "walvault: the PostgreSQL connection ended: {}",
                    pg_message(&e)
                );
            }
        });
        Ok(Self { client, describe })
    }

    fn err(&self, what: &str) -> impl FnOnce(tokio_postgres::Error) -> ClientError + '_ {
        let what = what.to_owned();
        move |e| ClientError::Postgres(format!("{what} on {}: {}", self.describe, pg_message(&e)))
    }

    async fn text(&self, what: &str, sql: &str) -> Result<String, ClientError> {
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .map_err(self.err(what))?;
        row.try_get::<_, String>(0).map_err(self.err(what))
    }

    pub async fn facts(&self) -> Result<Facts, ClientError> {
        let bad = |what: &str, v: &str| {
            ClientError::Postgres(format!("{} reported {what} {v:?}", self.describe))
        };
        let sysid = self
            .text(
                "read the system identifier",
                "SELECT system_identifier::text FROM pg_control_system()",
            )
            .await?;
        // The identifier is an unsigned 64-bit number that SQL shows as a signed bigint.
        let system_identifier = sysid
            .parse::<i64>()
            .map(|v| v as u64)
            .map_err(|_| bad("system identifier", &sysid))?;
        let version = self
            .text("read the version", "SHOW server_version_num")
            .await?;
        let version_num: u32 = version.parse().map_err(|_| bad("version", &version))?;
        if version_num < 120_000 {
            return Err(ClientError::Postgres(format!(
                "{} is version {version_num}; walvault backs up PostgreSQL 12 and later",
                self.describe
            )));
        }
        let seg = self
            .text(
                "read wal_segment_size",
                "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'",
            )
            .await?;
        let wal_segment_size: u32 = seg.parse().map_err(|_| bad("wal_segment_size", &seg))?;
        let data_directory = PathBuf::from(
            self.text(
                "read data_directory (superuser or pg_read_all_settings needed)",
                "SHOW data_directory",
            )
            .await?,
        );
        let rows = self
            .client
            .query(
                "SELECT oid::int8, pg_tablespace_location(oid) FROM pg_tablespace \
                 WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid",
                &[],
            )
            .await
            .map_err(self.err("list tablespaces"))?;
        let mut tablespaces = Vec::new();
        for row in rows {
            let oid: i64 = row.try_get(0).map_err(self.err("list tablespaces"))?;
            let location: String = row.try_get(1).map_err(self.err("list tablespaces"))?;
            let location = PathBuf::from(location);
            // In-place tablespaces (allow_in_place_tablespaces) live inside PGDATA.
            let location = if location.is_absolute() {
                location
            } else {
                data_directory.join(location)
            };
            tablespaces.push(Tablespace {
                oid: u32::try_from(oid).map_err(|_| bad("tablespace oid", &oid.to_string()))?,
                location,
            });
        }
        Ok(Facts {
            system_identifier,
            version_num,
            wal_segment_size,
            data_directory,
            tablespaces,
        })
    }

    /// Begins a non-exclusive backup; returns the start LSN and the timeline of its checkpoint.
    pub async fn start_backup(
        &self,
        facts: &Facts,
        label: &str,
        fast: bool,
    ) -> Result<(Lsn, TimelineId), ClientError> {
        let sql = if facts.major() >= 15 {
            "SELECT pg_backup_start($1, $2)::text"
        } else {
            "SELECT pg_start_backup($1, $2, false)::text"
        };
        let row = self
            .client
            .query_one(sql, &[&label, &fast])
            .await
            .map_err(self.err("start the backup"))?;
        let lsn: String = row.try_get(0).map_err(self.err("start the backup"))?;
        let lsn = lsn
            .parse::<Lsn>()
            .map_err(|e| ClientError::Postgres(e.to_string()))?;
        let row = self
            .client
            .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
            .await
            .map_err(self.err("read the timeline"))?;
        let tli: i32 = row.try_get(0).map_err(self.err("read the timeline"))?;
        Ok((lsn, TimelineId(tli.max(0) as u32)))
    }

    /// Ends the backup. The server waits for the WAL itself, so PostgreSQL is not asked to.
    pub async fn stop_backup(&self, facts: &Facts) -> Result<Stopped, ClientError> {
        let sql = if facts.major() >= 15 {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        } else {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        };
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .map_err(self.err("stop the backup"))?;
        let lsn: String = row.try_get(0).map_err(self.err("stop the backup"))?;
        Ok(Stopped {
            lsn: lsn
                .parse()
                .map_err(|e: walvault_proto::LsnParseError| ClientError::Postgres(e.to_string()))?,
            backup_label: row.try_get(1).map_err(self.err("stop the backup"))?,
            tablespace_map: row
                .try_get::<_, Option<String>>(2)
                .map_err(self.err("stop the backup"))?
                .unwrap_or_default(),
        })
    }
}

/// PostgreSQL's own message where there is one (tokio-postgres's Display says only "db error").
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            let mut m = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                m = format!("{m}: {s}");
                source = s.source();
            }
            m
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_is_completed_with_defaults() {
        let c = config(Some("host=/tmp/sock port=5433 user=postgres")).unwrap();
        assert_eq!(c.get_ports(), [5433]);
        assert_eq!(c.get_user(), Some("postgres"));
        assert!(c.get_dbname().is_some());
        let e = config(Some("port=notaport")).unwrap_err().to_string();
        assert!(e.contains("--conninfo"), "{e}");
    }
}
