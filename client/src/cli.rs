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
