//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use walvault_proto::{ClusterId, TenantId};

use crate::config::DEFAULT_PATH;

#[derive(Parser)]
#[command(
    name = "walvault",
    version,
    about = "walvault client: archive_command and restore_command for PostgreSQL, and administration",
    after_help = "In postgresql.conf:\n  archive_command = 'walvault wal-push %p'\n  restore_command = 'walvault wal-fetch %f %p'"
)]
pub struct Cli {
    /// Configuration file [default: $WALVAULT_CONFIG, else /etc/walvault/walvault.toml].
    #[arg(long, short, global = true, env = "WALVAULT_CONFIG", default_value = DEFAULT_PATH, hide_default_value = true)]
    pub config: PathBuf,
    /// The cluster (TENANT/CLUSTER) to act on, instead of the configuration's.
    #[arg(long, global = true)]
    pub cluster: Option<ClusterId>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Archive one WAL file (archive_command = 'walvault wal-push %p'); exits 0 only when the
    /// server has it on stable storage.
    WalPush {
        /// The file, as PostgreSQL's %p gives it (relative to PGDATA).
        path: PathBuf,
    },
    /// Fetch one archived WAL file (restore_command = 'walvault wal-fetch %f %p'); exits 1
    /// quietly when the archive does not have it.
    WalFetch {
        /// The file name (%f).
        name: String,
        /// Where to write it (%p).
        dest: PathBuf,
    },
    /// List the WAL files archived for a cluster.
    WalList {
        #[arg(long)]
        json: bool,
    },
    /// Send a base backup of the local PostgreSQL cluster (run as the PostgreSQL OS user):
    /// only blocks that changed since the server's copy cross the network.
    Backup {
        /// A label for PostgreSQL and the listing [default: walvault <time>].
        #[arg(long)]
        label: Option<String>,
        /// The data directory [default: PostgreSQL's data_directory].
        #[arg(long)]
        pgdata: Option<PathBuf>,
        /// How to reach PostgreSQL, libpq style ("host=/var/run/postgresql port=5432 user=postgres")
        /// [default: PGHOST, PGPORT, PGUSER, PGDATABASE, else the local socket as this user].
        #[arg(long)]
        conninfo: Option<String>,
        /// Read at most this many bytes per second (like 50M) to spare the database's disks.
        #[arg(long)]
        max_rate: Option<String>,
        /// Let PostgreSQL spread the starting checkpoint over checkpoint_completion_target
        /// instead of doing it at once (slower start, gentler on the disks).
        #[arg(long)]
        spread_checkpoint: bool,
        /// No progress display.
        #[arg(long, short)]
        quiet: bool,
        /// Print the finished backup as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the backups of a cluster (the running one too).
    Backups {
        #[arg(long)]
        json: bool,
    },
    /// Print the identity the server sees in our certificate.
    Whoami,
    /// Tenants (admin certificate).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Clusters (admin certificate to create).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        name: TenantId,
        /// Quota for everything of this tenant, like 500G; none by default.
        #[arg(long)]
        quota: Option<String>,
        /// Deduplicate this tenant's data (ZFS dedup; costs memory on the server).
        #[arg(long)]
        dedup: bool,
    },
    /// Change a tenant's quota (a size like 500G, or none).
    SetQuota { name: TenantId, quota: String },
    /// List tenants with their space.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster: TENANT/CLUSTER.
    Create { id: ClusterId },
    /// List clusters.
    List {
        #[arg(long)]
        tenant: Option<TenantId>,
        #[arg(long)]
        json: bool,
    },
}
