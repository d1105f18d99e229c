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
    // PostgreSQL treats exit codes above 125 as fatal for restore_command: we use 0 and 1.
    match runtime.block_on(walvault::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("walvault: {e}");
            ExitCode::FAILURE
        }
    }
}
