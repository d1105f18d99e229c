//! walvault: the thin client that runs on database hosts (archive_command,
//! restore_command) and for the backup team (administration). The binary's `main.rs` only
//! parses the command line and prints errors.

pub mod backup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connect;
pub mod durable;
pub mod error;
pub mod output;
pub mod pgdata;
pub mod postgres;
pub mod progress;
pub mod restore;
pub mod retry;
pub mod spool;

use cli::{Cli, ClusterCommand, Command, PolicyCommand, RestoresCommand, TenantCommand};
use commands::wal_fetch::Fetched;
use config::ClientConfig;
use error::ClientError;

/// Runs a parsed command; `Ok(false)` means "failed quietly" (a WAL file the archive does
/// not have, a verification that found problems and said so), which exits 1.
pub async fn run(cli: Cli) -> Result<bool, ClientError> {
    // A mistyped restore is refused before anything else, even without a configuration.
    if let Command::Restore(args) = &cli.command {
        commands::restore::check(args)?;
    }
    let config = ClientConfig::load(&cli.config)?;
    let cluster = cli.cluster.as_ref();
    let size = |s: &Option<String>| -> Result<Option<u64>, ClientError> {
        match s {
            None => Ok(None),
            Some(s) => output::parse_size(s).map_err(ClientError::Usage),
        }
    };
    match cli.command {
        Command::WalPush { path } => {
            commands::wal_push::run(&config, cluster, &path).await?;
        }
        Command::WalFetch {
            require_through,
            name,
            dest,
        } => {
            if let Fetched::Missing(msg) =
                commands::wal_fetch::run(&config, cluster, &name, &dest, require_through.as_deref())
                    .await?
            {
                eprintln!("walvault: {msg}");
                return Ok(false);
            }
        }
        Command::WalList { json } => commands::wal_list::run(&config, cluster, json).await?,
        Command::Verify {
            tenant,
            all,
            snapshot,
            json,
        } => {
            let scope = match (cluster, tenant.as_ref(), all) {
                (_, Some(t), _) => commands::verify::Scope::Tenant(t),
                (_, None, true) => commands::verify::Scope::All,
                (c, None, false) => commands::verify::Scope::Cluster(c),
            };
            return commands::verify::run(&config, scope, snapshot.as_deref(), json).await;
        }
        Command::Backup {
            label,
            pgdata,
            conninfo,
            max_rate,
            spread_checkpoint,
            quiet,
            json,
        } => {
            let max_rate = match max_rate {
                Some(r) => output::parse_size(&r)
                    .map_err(|e| ClientError::Usage(format!("--max-rate: {e}")))?,
                None => None,
            };
            let opts = backup::Options {
                label,
                pgdata,
                conninfo,
                max_rate,
                spread_checkpoint,
                progress: !quiet && !json,
            };
            commands::backup::run(&config, cluster, opts, json).await?
        }
        Command::Backups { json } => commands::backup::list(&config, cluster, json).await?,
        Command::Window { json } => commands::restore::window(&config, cluster, json).await?,
        Command::Restore(args) => commands::restore::run(&config, cluster, &args).await?,
        Command::Restores { json, command } => match command {
            None => commands::restore::list(&config, cluster, json).await?,
            Some(RestoresCommand::Drop {
                id,
                json: drop_json,
            }) => commands::restore::drop(&config, &id, json || drop_json).await?,
        },
        Command::Whoami => commands::admin::whoami(&config).await?,
        Command::Prune { dry_run, json } => {
            commands::policy::prune(&config, cluster, dry_run, json).await?
        }
        Command::Policy(PolicyCommand::Show { tenant, json }) => {
            commands::policy::show(&config, cluster, tenant.as_ref(), json).await?
        }
        Command::Policy(PolicyCommand::Set {
            tenant,
            window,
            hourly,
            daily,
            weekly,
            monthly,
            min_backups,
            rollforward_minutes,
            rollforward_mib,
            reset,
            json,
        }) => {
            let mut change = commands::policy::change(
                window.as_deref(),
                [hourly, daily, weekly, monthly, min_backups],
            )?;
            change.rollforward_minutes = rollforward_minutes;
            change.rollforward_mib = rollforward_mib;
            commands::policy::set(&config, cluster, tenant.as_ref(), change, reset, json).await?
        }
        Command::Tenant(TenantCommand::Create { name, quota, dedup }) => {
            commands::admin::tenant_create(&config, &name, size(&quota)?, dedup).await?
        }
        Command::Tenant(TenantCommand::SetQuota { name, quota }) => {
            commands::admin::tenant_set_quota(&config, &name, size(&Some(quota))?).await?
        }
        Command::Tenant(TenantCommand::List { json }) => {
            commands::admin::tenant_list(&config, json).await?
        }
        Command::Cluster(ClusterCommand::Create { id }) => {
            commands::admin::cluster_create(&config, &id).await?
        }
        Command::Cluster(ClusterCommand::List { tenant, json }) => {
            commands::admin::cluster_list(&config, tenant.as_ref(), json).await?
        }
    }
    Ok(true)
}

/// Seconds since the Unix epoch, as the wire and the spool record times.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
