//! Fault points for crash tests: `WALVAULT_FAULT=<name>` in the server's environment makes
//! the process SIGKILL itself when it reaches the point of that name, so a test can stop it
//! exactly between two steps (between publishing a WAL file and cataloguing it, say) without a
//! debugger. Unset, a point costs one comparison. Every point is listed in `POINTS`.

use std::sync::OnceLock;

/// The points there are: a name not listed is refused at start-up rather than never firing.
pub const POINTS: &[&str] = &[
    // `WalArchive::push`: the file is linked under its final name, not yet catalogued.
    "push-after-link",
    // `restore::instance::start`: PostgreSQL started on the clone, recovery under way.
    "instance-recovering",
    // `Instance::promote`: the instance's startup process stopped (SIGSTOP) for a moment.
    "instance-promote-frozen",
    // `RollForward::run`: the chain's standby started, replay under way.
    "rollforward-replaying",
    // `RollForward::run`: the snapshot taken, not yet catalogued.
    "rollforward-snapshotted",
    // `Verifier::check_snapshot`: PostgreSQL started on the verification clone.
    "verify-recovering",
];

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var("WALVAULT_FAULT")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .as_deref()
}

/// Checks `WALVAULT_FAULT` names a known point; call at start-up.
pub fn check() -> Result<(), String> {
    match armed() {
        Some(p) if !POINTS.contains(&p) => Err(format!(
            "WALVAULT_FAULT={p} names no fault point (known: {})",
            POINTS.join(", ")
        )),
        Some(p) => {
            tracing::warn!(
                point = p,
                "fault point armed: the server kills itself there"
            );
            Ok(())
        }
        None => Ok(()),
    }
}

/// Kills this process with SIGKILL if `WALVAULT_FAULT` names `name`.
pub fn point(name: &str) {
    if armed() != Some(name) {
        return;
    }
    tracing::warn!(point = name, "fault point reached: SIGKILL");
    crate::process::signal(std::process::id(), "-KILL");
    // The signal is on its way; never go on past the point.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
