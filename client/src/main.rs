//! walvault: see `lib.rs`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = walvault::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walvault: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // As restore_command, every failure but "the archive does not have it" exits above 125,
    // which PostgreSQL treats as fatal (commands::wal_fetch).
    let fetch = matches!(cli.command, walvault::cli::Command::WalFetch { .. });
    match runtime.block_on(walvault::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("walvault: {e}");
            if fetch {
                let standby = walvault::commands::wal_fetch::standby_mode();
                ExitCode::from(walvault::commands::wal_fetch::exit_status(&e, standby))
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
