//! Running external programs with a deadline, capturing their output, and logging every
//! command (argv, duration, exit, output tails) to the test's `harness.log`, which is what a
//! developer reads first when a kept test directory is handed to them.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where harness events of one test go. Cheap to clone; every writer appends.
#[derive(Debug, Clone)]
pub struct Log {
    path: PathBuf,
}

impl Log {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn line(&self, text: &str) {
        // Logging must never fail a test by itself.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            let _ = writeln!(f, "{text}");
        }
    }
}

/// The outcome of one command.
#[derive(Debug, Clone)]
pub struct Run {
    pub argv: String,
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts the documented failure of a command: exit 1 and a one-line error containing one
    /// of `words` (case-insensitive). Returns the error line.
    pub fn assert_refused(&self, words: &[&str]) -> String {
        self.assert_refused_with(1, words)
    }

    /// [`Run::assert_refused`] with another exit status: `wal-fetch` refuses with 200, which
    /// PostgreSQL's restore_command contract reads as fatal (anything but "no such file").
    pub fn assert_refused_with(&self, status: i32, words: &[&str]) -> String {
        assert_eq!(
            self.code,
            Some(status),
            "expected a refusal: {}",
            self.describe()
        );
        let err = self.stderr.trim();
        assert_eq!(
            err.lines().count(),
            1,
            "expected a one-line error: {}",
            self.describe()
        );
        let lower = err.to_lowercase();
        assert!(
            words.iter().any(|w| lower.contains(&w.to_lowercase())),
            "the error should name the problem (one of {words:?}): {}",
            self.describe()
        );
        err.to_owned()
    }

    /// A readable account of the run, for panic messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.argv, self.code, self.stdout, self.stderr
        )
    }
}

fn argv_of(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains([' ', '\'', '"', '\n']) {
            let _ = write!(s, " '{}'", a.replace('\'', "'\\''"));
        } else {
            let _ = write!(s, " {a}");
        }
    }
    s
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs `cmd` with no stdin, capturing stdout and stderr; kills it and panics after `timeout`
/// so that a hung tool fails its test instead of hanging the suite.
pub fn run(log: &Log, cmd: &mut Command, timeout: Duration) -> Run {
    let argv = argv_of(cmd);
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{argv}`: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            log.line(&format!("$ {argv}\n  TIMED OUT after {timeout:?}"));
            panic!("`{argv}` did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let run = Run {
        argv,
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    let mut entry = format!(
        "$ {}\n  -> {:?} in {:.2?}",
        run.argv,
        run.code,
        started.elapsed()
    );
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        if !text.trim().is_empty() {
            let _ = write!(entry, "\n  {name}: {}", tail(text.trim_end(), 2000));
        }
    }
    log.line(&entry);
    run
}

/// Like [`run`], but panics with the whole output unless the command exits 0; returns stdout.
pub fn run_ok(log: &Log, cmd: &mut Command, timeout: Duration) -> String {
    let r = run(log, cmd, timeout);
    assert!(r.success(), "{}", r.describe());
    r.stdout
}

/// Words any reasonable refusal of an identity acting outside its rights contains.
pub const NOT_ALLOWED: &[&str] = &[
    "may not",
    "not allowed",
    "permission",
    "denied",
    "not authorized",
    "unauthorized",
    "forbidden",
];
