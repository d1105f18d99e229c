//! walvault-server: the command line of the central server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use walvault_server::auth::{pki, Principal};
use walvault_server::catalog::{rebuild::rebuild, Catalog};
use walvault_server::config::{self, Config, StorageConfig};

// glibc's malloc keeps what a burst of concurrent pushes freed in its per-thread arenas, so
// the server's RSS stayed at its peak long after (issue 12); jemalloc, with the background
// purging `.cargo/config.toml` configures, hands it back to the OS within seconds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "walvault-server",
    version,
    about = "walvault's central backup server for PostgreSQL on ZFS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a CA, the server certificate and a configuration for a fresh install.
    Init(InitArgs),
    /// Serve the API (mutual TLS) until SIGTERM or SIGINT.
    Run {
        #[arg(
            long,
            short,
            env = "WALVAULT_SERVER_CONFIG",
            default_value = "/etc/walvault/server.toml"
        )]
        config: PathBuf,
    },
    /// Client certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The catalog (run with the server stopped).
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Write an archived WAL file's original bytes to DEST (the restore_command of instances
    /// the server starts); exits 1 quietly when the archive lacks it, 200 (which makes
    /// PostgreSQL stop recovery) on any other failure.
    #[command(hide = true)]
    WalUnpack {
        /// A segment up to this one that the archive lacks is a failure (200), not a miss.
        #[arg(long, value_name = "SEGMENT")]
        require_through: Option<String>,
        /// Take the file from this directory of segments unpacked ahead, when it is there.
        #[arg(long, value_name = "DIR")]
        ahead: Option<PathBuf>,
        /// The cluster's WAL directory.
        dir: PathBuf,
        /// The file name (%f).
        name: String,
        /// Where to write it (%p).
        dest: PathBuf,
    },
}

#[derive(Args)]
struct InitArgs {
    /// Directory for ca.crt, ca.key, server.crt, server.key and server.toml.
    #[arg(long)]
    dir: PathBuf,
    /// Extra names (DNS or IP) the server certificate is valid for; localhost, 127.0.0.1 and
    /// ::1 always are.
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
    /// Where data lives: zfs:POOL/DATASET or dir:PATH.
    #[arg(long)]
    storage: String,
    #[arg(long, default_value = "0.0.0.0:7400")]
    listen: String,
    /// Catalog directory [default: DIR/catalog].
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// The OS user PostgreSQL runs as on this server.
    #[arg(long, default_value = "postgres")]
    pg_user: String,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue a client certificate signed by the CA.
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// For the database host of one cluster: TENANT/CLUSTER.
        #[arg(long, group = "role")]
        agent: Option<String>,
        /// For the backup team of one tenant.
        #[arg(long, group = "role")]
        operator: Option<String>,
        /// For administrators.
        #[arg(long, group = "role")]
        admin: bool,
        /// Writes PREFIX.crt and PREFIX.key.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Recreate the catalog from the storage alone.
    Rebuild {
        #[arg(
            long,
            short,
            env = "WALVAULT_SERVER_CONFIG",
            default_value = "/etc/walvault/server.toml"
        )]
        config: PathBuf,
    },
    /// Print the catalog as JSON.
    Dump {
        #[arg(
            long,
            short,
            env = "WALVAULT_SERVER_CONFIG",
            default_value = "/etc/walvault/server.toml"
        )]
        config: PathBuf,
    },
}

fn parse_storage(s: &str) -> Result<StorageConfig> {
    match s.split_once(':') {
        Some(("zfs", ds)) if !ds.is_empty() => Ok(StorageConfig::Zfs {
            dataset: ds.to_owned(),
        }),
        Some(("dir", p)) if !p.is_empty() => Ok(StorageConfig::Dir {
            path: std::path::absolute(p)?,
        }),
        _ => bail!("--storage {s:?}: expected zfs:POOL/DATASET or dir:PATH"),
    }
}

fn init(a: InitArgs) -> Result<()> {
    let storage = parse_storage(&a.storage)?;
    let dir = std::path::absolute(&a.dir)?;
    let config_path = dir.join("server.toml");
    if config_path.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            config_path.display()
        );
    }
    pki::init_ca(&dir, &a.hostnames)?;
    let catalog = a.catalog.unwrap_or_else(|| dir.join("catalog"));
    let text = config::template(&dir, &storage, &a.listen, &catalog, &a.pg_user);
    Config::parse(&text, &dir)
        .map_err(|e| anyhow::anyhow!("generated configuration is invalid: {e}"))?;
    pki::write_file(&config_path, text.as_bytes(), 0o644)?;
    println!("{}", config_path.display());
    Ok(())
}

fn issue(ca_dir: &Path, principal: Principal, out: &Path) -> Result<()> {
    let (cert, key) = pki::issue_client(ca_dir, &principal)?;
    let with_ext = |ext: &str| {
        let mut p = out.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    pki::write_file(&with_ext(".key"), key.as_bytes(), 0o600)?;
    pki::write_file(&with_ext(".crt"), cert.as_bytes(), 0o644)?;
    println!(
        "issued a certificate for the {principal}: {}",
        with_ext(".crt").display()
    );
    Ok(())
}

fn open_offline(config: &Path) -> Result<(Config, Catalog)> {
    let config = Config::load(config)?;
    let catalog = Catalog::open(&config.catalog)
        .with_context(|| "open the catalog (is walvault-server still running?)")?;
    Ok((config, catalog))
}

/// How long requests may go on after SIGTERM or SIGINT before the server stops anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn serve(config: &Path) -> Result<()> {
    let config = Config::load(config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    // The one line on stdout: scripts and tests read the bound port from it.
    println!("listening on {}", listener.local_addr()?);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let signalled = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let serving = walvault_server::run(config, listener, signalled(stopping.clone()));
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => r?,
        // A request stuck on a failing disk or a silent peer does not hold the stop up.
        _ = async {
            signalled(stopping.clone()).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("requests still running {SHUTDOWN_GRACE:?} after the signal; stopping anyway");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WALVAULT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(a) => init(a),
        Command::WalUnpack {
            require_through,
            ahead,
            dir,
            name,
            dest,
        } => {
            use walvault_server::wal::stored::{unpack, UnpackError};
            let fatal = |e: String| {
                eprintln!("walvault-server wal-unpack: {e}");
                ExitCode::from(walvault_proto::RESTORE_FATAL_EXIT)
            };
            let through = match require_through.map(|t| t.parse()).transpose() {
                Ok(t) => t,
                Err(e) => return fatal(format!("--require-through: {e}")),
            };
            if let Some(ahead) = ahead {
                match walvault_server::restore::wal_ahead::take(&ahead, &name, &dest) {
                    Ok(true) => return ExitCode::SUCCESS,
                    Ok(false) => {}
                    // Only a shortcut: the archive still has the file.
                    Err(e) => eprintln!(
                        "walvault-server wal-unpack: {name} from {}: {e}; unpacking it instead",
                        ahead.display()
                    ),
                }
            }
            return match unpack(&dir, &name, &dest, through.as_ref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(UnpackError::Missing) => ExitCode::from(1),
                Err(UnpackError::Failed(e)) => fatal(e),
            };
        }
        Command::Run { config } => tokio::runtime::Runtime::new()
            .context("start the runtime")
            .and_then(|rt| {
                let r = rt.block_on(serve(&config));
                // Blocking work still running (a stuck write) must not keep the process.
                rt.shutdown_background();
                r
            }),
        Command::Cert(CertCommand::Issue {
            ca_dir,
            agent,
            operator,
            admin,
            out,
        }) => {
            let principal = match (agent, operator, admin) {
                (Some(c), None, false) => {
                    c.parse().map(Principal::Agent).map_err(anyhow::Error::from)
                }
                (None, Some(t), false) => t
                    .parse()
                    .map(Principal::Operator)
                    .map_err(anyhow::Error::from),
                (None, None, true) => Ok(Principal::Admin),
                _ => Err(anyhow::anyhow!(
                    "give exactly one of --agent TENANT/CLUSTER, --operator TENANT, --admin"
                )),
            };
            principal.and_then(|p| issue(&ca_dir, p, &out))
        }
        Command::Catalog(CatalogCommand::Rebuild { config }) => (|| {
            let config = Config::load(&config)?;
            let (catalog, aside) = Catalog::open_for_rebuild(&config.catalog)
                .with_context(|| "open the catalog (is walvault-server still running?)")?;
            if let Some(old) = aside {
                eprintln!(
                    "moved the catalog of an older walvault-server aside to {}",
                    old.display()
                );
            }
            let storage = walvault_server::open_storage(&config.storage)?;
            let report = rebuild(&catalog, storage.as_ref())?;
            for s in &report.skipped {
                eprintln!("skipped {s}");
            }
            println!(
                "rebuilt the catalog: {} tenants, {} clusters, {} WAL files, {} backups, {} \
                 restores, {} files hashed into block manifests",
                report.tenants,
                report.clusters,
                report.wal_files,
                report.backups,
                report.restores,
                report.manifest_files
            );
            Ok(())
        })(),
        Command::Catalog(CatalogCommand::Dump { config }) => (|| {
            let (_, catalog) = open_offline(&config)?;
            println!("{}", serde_json::to_string_pretty(&catalog.dump()?)?);
            Ok(())
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walvault-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
