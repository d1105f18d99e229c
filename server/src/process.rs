//! The one way walvault runs external programs (`zfs`, `zpool`, `pg_ctl`, …): argv and
//! duration are logged, and a failure becomes an error carrying argv, exit status and the
//! tail of stderr, so that whoever reads it knows exactly what was run and what it said.

use std::fmt;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// How much of stderr an error keeps.
const STDERR_TAIL: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not start `{argv}`: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        argv: String,
        status: String,
        stderr: String,
    },
}

impl ProcessError {
    /// The stderr of a failed run, empty when the program could not start.
    pub fn stderr(&self) -> &str {
        match self {
            ProcessError::Failed { stderr, .. } => stderr,
            ProcessError::Spawn { .. } => "",
        }
    }
}

/// argv of a command, quoted enough to be read and pasted.
pub struct Argv<'a>(pub &'a Command);

impl fmt::Display for Argv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.get_program().to_string_lossy())?;
        for arg in self.0.get_args() {
            let a = arg.to_string_lossy();
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                write!(f, " '{}'", a.replace('\'', "'\\''"))?;
            } else {
                write!(f, " {a}")?;
            }
        }
        Ok(())
    }
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    if s.len() <= STDERR_TAIL {
        return s.to_owned();
    }
    let mut start = s.len() - STDERR_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// Runs `cmd` to completion with stdin closed; success means exit status 0.
pub fn run(cmd: &mut Command) -> Result<Output, ProcessError> {
    let argv = Argv(cmd).to_string();
    let started = Instant::now();
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ProcessError::Spawn {
            argv: argv.clone(),
            source,
        })?;
    let elapsed_ms = started.elapsed().as_millis();
    if output.status.success() {
        tracing::debug!(%argv, elapsed_ms, "ran");
        Ok(output)
    } else {
        tracing::debug!(%argv, elapsed_ms, status = %output.status, "failed");
        Err(ProcessError::Failed {
            argv,
            status: output.status.to_string(),
            stderr: tail(&output.stderr),
        })
    }
}

/// Runs `cmd` and returns its stdout as text.
pub fn run_stdout(cmd: &mut Command) -> Result<String, ProcessError> {
    let out = run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends `sig` (a kill(1) option such as `-STOP`) to process `pid`; whether it was sent.
/// kill(1) rather than libc: no unsafe code for a signal.
pub fn signal(pid: u32, sig: &str) -> bool {
    succeeds(Command::new("kill").args([sig, &pid.to_string()]))
}

/// Sends `sig` (a signal name such as `CONT`) to every child of process `ppid`; whether any
/// was sent. pkill(1), for the same reason as [`signal`].
pub fn signal_children(ppid: u32, sig: &str) -> bool {
    succeeds(Command::new("pkill").args(["--signal", sig, "-P", &ppid.to_string()]))
}

/// Whether `cmd`, run quietly, exits 0.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The path of this program, for the commands it hands to PostgreSQL (`restore_command`).
/// When the binary was replaced while the server runs (a package upgrade), Linux names the
/// running one "`<path> (deleted)`"; the commands then use the new binary at `<path>`.
pub fn own_binary() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy().into_owned();
    Ok(match strip_deleted(&text) {
        Some(live) => {
            tracing::warn!(binary = %live, "walvault-server's binary was replaced while it runs: the restore_command of new instances uses the new one; restart the server");
            std::path::PathBuf::from(live)
        }
        None => exe,
    })
}

fn strip_deleted(path: &str) -> Option<&str> {
    path.strip_suffix(" (deleted)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_binary_is_named_by_its_path() {
        assert_eq!(
            strip_deleted("/usr/bin/walvault-server (deleted)"),
            Some("/usr/bin/walvault-server")
        );
        assert_eq!(strip_deleted("/usr/bin/walvault-server"), None);
    }

    #[test]
    fn failure_carries_argv_status_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c 'echo boom >&2; exit 3'"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert_eq!(err.stderr(), "boom");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run(&mut Command::new("/nonexistent/walvault-test")).unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
    }
}
