//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
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
    /// quietly only when the archive does not have it, and 200 on any other failure (after
    /// retrying an unreachable server), which makes PostgreSQL stop recovery instead of
    /// ending it early.
    WalFetch {
        /// A segment up to this one that the archive lacks stops recovery (200) instead of
        /// ending it (written by `walvault restore --to dir:`).
        #[arg(long, value_name = "SEGMENT")]
        require_through: Option<String>,
        /// The file name (%f).
        name: String,
        /// Where to write it (%p).
        dest: PathBuf,
    },
    /// List the WAL files archived for a cluster, and per timeline the stretches the archive
    /// holds without a break and every hole.
    WalList {
        /// Print files and timelines as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-read every archived file of a cluster (--cluster, or the configuration's), of a
    /// tenant's clusters (--tenant) or of every cluster, check the continuity of every
    /// timeline and that every backup's snapshots exist (operator or admin certificate);
    /// exits 1 when it finds a problem.
    Verify {
        /// Every cluster of this tenant.
        #[arg(long)]
        tenant: Option<TenantId>,
        /// Every cluster the certificate may see (admins: all).
        #[arg(long, conflicts_with = "tenant")]
        all: bool,
        /// Also clone, recover and check this backup or roll-forward snapshot of the cluster
        /// now (the server checks every new snapshot by itself; see `walvault backups`).
        #[arg(long, value_name = "ID", conflicts_with_all = ["tenant", "all"])]
        snapshot: Option<String>,
        /// Print the reports as JSON.
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
    /// The restorable window of a cluster, per timeline (times in UTC).
    Window {
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a cluster to a point in time: into a directory on this host (run as the
    /// PostgreSQL OS user), or as an instance the server starts on a clone.
    Restore(Box<RestoreArgs>),
    /// List restores (of --cluster, or all you may see), or drop one.
    Restores {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<RestoresCommand>,
    },
    /// Print the identity the server sees in our certificate.
    Whoami,
    /// Tenants (admin certificate).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Retention policies of a tenant (--tenant) or a cluster (--cluster or the configuration's;
    /// operator or admin certificate).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Destroy the backups and WAL of a cluster that no rule of its policy keeps (operator or
    /// admin certificate); prints every item with why it stays or goes.
    Prune {
        /// Only show the plan.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Clusters (admin certificate to create).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Show a tenant's policy, or a cluster's override and the policy it lives by.
    Show {
        /// The tenant instead of a cluster.
        #[arg(long)]
        tenant: Option<TenantId>,
        #[arg(long)]
        json: bool,
    },
    /// Change a tenant's policy, or a cluster's override (fields not given stay as they are).
    Set {
        /// The tenant instead of a cluster.
        #[arg(long)]
        tenant: Option<TenantId>,
        /// Keep any point of the last DAYS days restorable, or `none`.
        #[arg(long, value_name = "DAYS|none")]
        window: Option<String>,
        /// Keep the newest backup of each of the N most recent hours with backups.
        #[arg(long, value_name = "N")]
        hourly: Option<u32>,
        /// … days.
        #[arg(long, value_name = "N")]
        daily: Option<u32>,
        /// … ISO weeks.
        #[arg(long, value_name = "N")]
        weekly: Option<u32>,
        /// … months.
        #[arg(long, value_name = "N")]
        monthly: Option<u32>,
        /// Keep the N newest backups whatever their age.
        #[arg(long, value_name = "N")]
        min_backups: Option<u32>,
        /// Roll forward to a new snapshot once the newest is N minutes old and commits
        /// followed it (0: never by age; default: the server's `every_minutes`).
        #[arg(long, value_name = "N")]
        rollforward_minutes: Option<u32>,
        /// … or once N MiB of WAL followed it (0: never by size; default: `every_mib`).
        #[arg(long, value_name = "N")]
        rollforward_mib: Option<u32>,
        /// For a cluster: drop its override first (inherit the tenant's policy).
        #[arg(long)]
        reset: bool,
        #[arg(long)]
        json: bool,
    },
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

#[derive(Args, Debug, Clone, Default)]
#[command(
    after_help = "Examples:\n  walvault restore --cluster acme/orders --time '2026-11-22 10:03:00' --to dir:/srv/pg/orders\n  walvault restore --cluster acme/orders --lsn 0/3000028 --to instance\n  walvault restore --cluster acme/orders --standby --delta --to dir:/var/lib/postgresql/15/main \\\n      --primary-conninfo 'host=new-primary user=replicator'"
)]
pub struct RestoreArgs {
    /// Recover to this time: "2026-11-22 10:03:00[.ffffff]" (UTC when no zone is given) or
    /// RFC 3339 ("2026-11-22T10:03:00+01:00").
    #[arg(
        long,
        value_name = "TIME",
        help_heading = "Target (at most one; default --latest)"
    )]
    pub time: Option<String>,
    /// Recover to this WAL location, like 0/3000028.
    #[arg(
        long,
        value_name = "LSN",
        help_heading = "Target (at most one; default --latest)"
    )]
    pub lsn: Option<String>,
    /// Recover to the commit of this transaction id.
    #[arg(
        long,
        value_name = "XID",
        help_heading = "Target (at most one; default --latest)"
    )]
    pub xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Target (at most one; default --latest)"
    )]
    pub name: Option<String>,
    /// Stop as soon as the backup is consistent.
    #[arg(long, help_heading = "Target (at most one; default --latest)")]
    pub immediate: bool,
    /// Replay all archived WAL.
    #[arg(long, help_heading = "Target (at most one; default --latest)")]
    pub latest: bool,
    /// The timeline to recover along: a number or latest [default: latest].
    #[arg(long, value_name = "N|latest")]
    pub timeline: Option<String>,
    /// Restore this backup instead of the one the server picks.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// What PostgreSQL does at the target.
    #[arg(long, value_enum, default_value_t = ActionArg::Promote)]
    pub action: ActionArg,
    /// Stop just before the target instead of just after it (recovery_target_inclusive = off).
    #[arg(long)]
    pub exclusive: bool,
    /// Where the restored cluster goes: dir:PATH (written by this client) or instance
    /// (started on the server).
    #[arg(long, value_name = "dir:PATH|instance")]
    pub to: Option<String>,
    /// PATH already holds a copy (an old primary, an earlier restore): rewrite only the blocks
    /// that differ, delete what the backup does not have.
    #[arg(long, help_heading = "Directory delivery")]
    pub delta: bool,
    /// Put the tablespace that was at OLD on the source at NEW (repeatable).
    #[arg(long, value_name = "OLD=NEW", help_heading = "Directory delivery")]
    pub tablespace_map: Vec<String>,
    /// Set it up as a standby (standby.signal, following the latest timeline); only with
    /// --latest.
    #[arg(long, help_heading = "Directory delivery")]
    pub standby: bool,
    /// primary_conninfo for --standby.
    #[arg(long, value_name = "CONNINFO", help_heading = "Directory delivery")]
    pub primary_conninfo: Option<String>,
    /// restore_command to write instead of this client's wal-fetch.
    #[arg(long, value_name = "CMD", help_heading = "Directory delivery")]
    pub restore_command: Option<String>,
    /// Show the plan (backup, target, WAL to replay) and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress display or messages.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What PostgreSQL does when it reaches the target.
#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ActionArg {
    /// End recovery and accept writes.
    #[default]
    Promote,
    /// Stay in recovery, paused, for inspection (pg_wal_replay_resume() to go on).
    Pause,
    /// Stop the server.
    Shutdown,
}

#[derive(Subcommand)]
pub enum RestoresCommand {
    /// Stop a restore's instance and destroy its clone.
    Drop {
        id: String,
        /// Print the dropped restore as JSON.
        #[arg(long)]
        json: bool,
    },
}
