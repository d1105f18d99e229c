//! What a restore aims at, as people write it on the command line: the recovery target (a
//! time, an LSN, a transaction id, a restore point, the backup's consistent point, or the end
//! of the archive), the timeline, and where the result goes (`dir:PATH` or `instance`).
//!
//! Parsing here is pure, so a typo is refused before anything is sent or written. Times
//! without a zone are UTC: the server's window and listings print UTC.

use std::path::{Component, Path, PathBuf};

use walvault_proto::pb::{self, restore_target::Kind};
use walvault_proto::{utc_civil, Lsn};

use crate::error::ClientError;

/// The point where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Microseconds since the Unix epoch (UTC).
    Time(i64),
    Lsn(Lsn),
    Xid(u32),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
    /// The backup's consistent point.
    Immediate,
    /// Everything archived.
    Latest,
}

impl Target {
    pub fn to_pb(&self) -> pb::RestoreTarget {
        let kind = match self {
            Target::Time(t) => Kind::TimeMicros(*t),
            Target::Lsn(l) => Kind::Lsn(l.0),
            Target::Xid(x) => Kind::Xid(*x),
            Target::Name(n) => Kind::RestorePoint(n.clone()),
            Target::Immediate => Kind::Immediate(true),
            Target::Latest => Kind::Latest(true),
        };
        pb::RestoreTarget { kind: Some(kind) }
    }

    /// A point inside the WAL, where "just before" (`--exclusive`) means something.
    pub fn is_point(&self) -> bool {
        matches!(
            self,
            Target::Time(_) | Target::Lsn(_) | Target::Xid(_) | Target::Name(_)
        )
    }
}

/// The target flags as given; at most one may be set.
#[derive(Debug, Clone, Default)]
pub struct TargetFlags<'a> {
    pub time: Option<&'a str>,
    pub lsn: Option<&'a str>,
    pub xid: Option<&'a str>,
    pub name: Option<&'a str>,
    pub immediate: bool,
    pub latest: bool,
}

/// The one target the flags name; `--latest` when none does.
pub fn parse_target(f: &TargetFlags<'_>) -> Result<Target, ClientError> {
    let given: Vec<&str> = [
        (f.time.is_some(), "--time"),
        (f.lsn.is_some(), "--lsn"),
        (f.xid.is_some(), "--xid"),
        (f.name.is_some(), "--name"),
        (f.immediate, "--immediate"),
        (f.latest, "--latest"),
    ]
    .into_iter()
    .filter_map(|(set, flag)| set.then_some(flag))
    .collect();
    if given.len() > 1 {
        return Err(usage(format!(
            "give at most one recovery target; got {}",
            given.join(" and ")
        )));
    }
    if let Some(t) = f.time {
        return parse_time(t).map(Target::Time).map_err(usage);
    }
    if let Some(l) = f.lsn {
        return l
            .trim()
            .parse::<Lsn>()
            .map(Target::Lsn)
            .map_err(|e| usage(format!("--lsn: {e}")));
    }
    if let Some(x) = f.xid {
        return parse_xid(x).map(Target::Xid).map_err(usage);
    }
    if let Some(n) = f.name {
        return parse_restore_point(n).map(Target::Name).map_err(usage);
    }
    Ok(if f.immediate {
        Target::Immediate
    } else {
        Target::Latest
    })
}

fn usage(message: String) -> ClientError {
    ClientError::Usage(message)
}

fn parse_xid(s: &str) -> Result<u32, String> {
    let bad = || format!("--xid {s:?} is not a transaction id (a number from 3 to 4294967295)");
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // 0, 1 and 2 are PostgreSQL's invalid, bootstrap and frozen ids: never a commit.
    t.parse::<u32>().ok().filter(|x| *x >= 3).ok_or_else(bad)
}

fn parse_restore_point(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("--name: a restore point name is not empty".into());
    }
    // pg_create_restore_point takes at most 63 bytes.
    if s.len() > 63 {
        return Err(format!(
            "--name {s:?} is longer than a restore point name can be (63 bytes)"
        ));
    }
    Ok(s.to_owned())
}

/// `latest` (sent as 0) or a timeline id.
pub fn parse_timeline(s: &str) -> Result<u32, ClientError> {
    if s.trim().eq_ignore_ascii_case("latest") {
        return Ok(0);
    }
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|t| *t >= 1)
        .ok_or_else(|| {
            usage(format!(
                "--timeline {s:?}: give a timeline id (1, 2, …) or latest"
            ))
        })
}

/// Where the restored cluster goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A data directory on this host (absolute).
    Dir(PathBuf),
    /// An instance the server starts on a clone.
    Instance,
}

/// `dir:PATH` (relative to `cwd` unless absolute) or `instance`.
pub fn parse_delivery(s: &str, cwd: &Path) -> Result<Delivery, ClientError> {
    if s == "instance" {
        return Ok(Delivery::Instance);
    }
    match s.strip_prefix("dir:") {
        Some(p) if !p.is_empty() => Ok(Delivery::Dir(absolute(Path::new(p), cwd))),
        _ => Err(usage(format!(
            "--to {s:?}: give dir:PATH (a data directory on this host) or instance (started on \
             the server)"
        ))),
    }
}

/// `path` made absolute against `cwd`, with `.` and `..` resolved lexically.
pub fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        cwd.join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Parses `2026-11-22 10:03:00[.ffffff]` (UTC, also with a trailing ` UTC` as walvault prints
/// times) or RFC 3339 (`2026-11-22T10:03:00+01:00`, `…Z`) into microseconds since the epoch.
/// Seconds may be left out (`10:03`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let bad = |why: &str| {
        format!(
            "--time {s:?} is not a time{why}: use \"2026-11-22 10:03:00[.ffffff]\" (UTC) or RFC \
             3339 like \"2026-11-22T10:03:00+01:00\""
        )
    };
    let mut p = Cursor(s.trim());
    let year = p.digits(4).ok_or_else(|| bad(""))?;
    p.expect('-').ok_or_else(|| bad(""))?;
    let month = p.digits(2).ok_or_else(|| bad(""))?;
    p.expect('-').ok_or_else(|| bad(""))?;
    let day = p.digits(2).ok_or_else(|| bad(""))?;
    if !(p.eat('T') || p.eat('t') || p.eat(' ')) {
        return Err(bad(" (a date needs a time of day)"));
    }
    let hour = p.digits(2).ok_or_else(|| bad(""))?;
    p.expect(':').ok_or_else(|| bad(""))?;
    let minute = p.digits(2).ok_or_else(|| bad(""))?;
    let (mut second, mut micros) = (0, 0);
    if p.eat(':') {
        second = p.digits(2).ok_or_else(|| bad(""))?;
        if p.eat('.') || p.eat(',') {
            let frac = p.take_digits();
            if frac.is_empty() || frac.len() > 6 {
                return Err(bad(" (fractions of a second: 1 to 6 digits)"));
            }
            micros = format!("{frac:0<6}").parse::<i64>().map_err(|_| bad(""))?;
        }
    }
    let offset_secs = parse_zone(p.0.trim_start()).ok_or_else(|| bad(""))?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad(" (no such date)"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad(" (no such time of day)"));
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Ok(secs * 1_000_000 + micros)
}

/// The zone after a time: nothing, `Z`, `UTC`, or `±HH[:MM]`/`±HHMM`; seconds east of UTC.
fn parse_zone(z: &str) -> Option<i64> {
    if z.is_empty() || z.eq_ignore_ascii_case("z") || z.eq_ignore_ascii_case("utc") {
        return Some(0);
    }
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    let mut p = Cursor(rest);
    let h = p.digits(2)?;
    let m = if p.0.is_empty() {
        0
    } else {
        p.eat(':');
        p.digits(2)?
    };
    if !p.0.is_empty() || h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

struct Cursor<'a>(&'a str);

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<i64> {
        let head = self.0.get(..n)?;
        if !head.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.0 = &self.0[n..];
        head.parse().ok()
    }

    fn take_digits(&mut self) -> &str {
        let n = self.0.bytes().take_while(u8::is_ascii_digit).count();
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn eat(&mut self, c: char) -> bool {
        match self.0.strip_prefix(c) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char) -> Option<()> {
        self.eat(c).then_some(())
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of
/// [`walvault_proto::utc_civil`]): count whole 400-year eras from 0000-03-01, then days into
/// the era with March as the first month, so that leap days fall at the end of a year.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (m + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A time in microseconds as people read it, in UTC, with the fraction only when there is
/// one: `2026-11-22 10:03:00.250000 UTC`. Parses back with [`parse_time`].
pub fn utc_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (y, mo, d, h, mi, s) = utc_civil(secs);
    if frac == 0 {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
    } else {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{frac:06} UTC")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_795_341_780; // 2026-11-22 10:03:00 UTC

    #[test]
    fn times_without_a_zone_are_utc() {
        assert_eq!(parse_time("2026-11-22 10:03:00"), Ok(T * 1_000_000));
        assert_eq!(parse_time("2026-11-22T10:03:00"), Ok(T * 1_000_000));
        assert_eq!(parse_time(" 2026-11-22 10:03 "), Ok(T * 1_000_000));
        assert_eq!(parse_time("2026-11-22 10:03:00 UTC"), Ok(T * 1_000_000));
        assert_eq!(parse_time("2026-11-22T10:03:00Z"), Ok(T * 1_000_000));
    }

    #[test]
    fn fractions_of_a_second() {
        assert_eq!(
            parse_time("2026-11-22 10:03:00.5"),
            Ok(T * 1_000_000 + 500_000)
        );
        assert_eq!(
            parse_time("2026-11-22 10:03:00.000123"),
            Ok(T * 1_000_000 + 123)
        );
        assert!(parse_time("2026-11-22 10:03:00.1234567").is_err());
        assert!(parse_time("2026-11-22 10:03:00.").is_err());
    }

    #[test]
    fn zones_shift_to_utc() {
        let h = 3600 * 1_000_000;
        assert_eq!(parse_time("2026-11-22T11:03:00+01:00"), Ok(T * 1_000_000));
        assert_eq!(parse_time("2026-11-22T11:03:00+0100"), Ok(T * 1_000_000));
        assert_eq!(parse_time("2026-11-22 11:03:00 +01"), Ok(T * 1_000_000));
        assert_eq!(
            parse_time("2026-11-22T10:03:00-05:30"),
            Ok(T * 1_000_000 + 5 * h + h / 2)
        );
        assert_eq!(
            parse_time("2026-11-22T11:03:00.25+01:00"),
            Ok(T * 1_000_000 + 250_000)
        );
    }

    #[test]
    fn bad_times_are_refused() {
        for bad in [
            "",
            "yesterday",
            "2026-11-22",
            "2026-13-01 00:00:00",
            "2026-02-29 00:00:00",
            "2026-11-31 00:00:00",
            "2026-11-22 24:00:00",
            "2026-11-22 10:60:00",
            "2026-11-22 10:03:61",
            "2026-11-22 10:03:00+25:00",
            "2026-11-22 10:03:00 CET",
            "26-11-22 10:03:00",
            "2026-11-22 10:03:00 junk",
            "1795341780",
        ] {
            let e = parse_time(bad).expect_err(bad);
            assert!(e.contains("is not a time"), "{bad}: {e}");
        }
        assert!(parse_time("2024-02-29 00:00:00").is_ok());
    }

    #[test]
    fn civil_days_invert_the_shared_calendar() {
        for days in [-800_000i64, -1, 0, 1, 59, 10_956, 11_016, 20_779, 2_932_896] {
            let (y, m, d, ..) = utc_civil(days * 86_400);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn printed_times_parse_back() {
        for micros in [T * 1_000_000, T * 1_000_000 + 250_000, 1] {
            let text = utc_micros(micros);
            assert_eq!(parse_time(&text), Ok(micros), "{text}");
        }
        assert_eq!(utc_micros(T * 1_000_000), "2026-11-22 10:03:00 UTC");
    }

    fn flags() -> TargetFlags<'static> {
        TargetFlags::default()
    }

    #[test]
    fn one_target_at_most_latest_by_default() {
        assert_eq!(parse_target(&flags()).unwrap(), Target::Latest);
        let f = TargetFlags {
            lsn: Some("0/3000028"),
            ..flags()
        };
        assert_eq!(parse_target(&f).unwrap(), Target::Lsn(Lsn(0x300_0028)));
        let f = TargetFlags {
            xid: Some("748"),
            ..flags()
        };
        assert_eq!(parse_target(&f).unwrap(), Target::Xid(748));
        let f = TargetFlags {
            name: Some("before-upgrade"),
            ..flags()
        };
        assert_eq!(
            parse_target(&f).unwrap(),
            Target::Name("before-upgrade".into())
        );
        let f = TargetFlags {
            immediate: true,
            ..flags()
        };
        assert_eq!(parse_target(&f).unwrap(), Target::Immediate);

        let two = TargetFlags {
            time: Some("2026-11-22 10:03:00"),
            lsn: Some("0/3000028"),
            ..flags()
        };
        let e = parse_target(&two).unwrap_err().to_string();
        assert!(e.contains("--time and --lsn"), "{e}");
        let two = TargetFlags {
            immediate: true,
            latest: true,
            ..flags()
        };
        assert!(parse_target(&two).is_err());
    }

    #[test]
    fn bad_targets_are_refused() {
        for f in [
            TargetFlags {
                lsn: Some("3000028"),
                ..flags()
            },
            TargetFlags {
                lsn: Some("0/G"),
                ..flags()
            },
            TargetFlags {
                xid: Some("-1"),
                ..flags()
            },
            TargetFlags {
                xid: Some("2"),
                ..flags()
            },
            TargetFlags {
                xid: Some("4294967296"),
                ..flags()
            },
            TargetFlags {
                name: Some(""),
                ..flags()
            },
            TargetFlags {
                time: Some("10:03"),
                ..flags()
            },
        ] {
            assert!(parse_target(&f).is_err(), "{f:?}");
        }
        let long = "x".repeat(64);
        let f = TargetFlags {
            name: Some(&long),
            ..flags()
        };
        assert!(parse_target(&f).is_err());
    }

    #[test]
    fn timelines() {
        assert_eq!(parse_timeline("latest").unwrap(), 0);
        assert_eq!(parse_timeline("2").unwrap(), 2);
        assert!(parse_timeline("0").is_err());
        assert!(parse_timeline("current").is_err());
    }

    #[test]
    fn deliveries() {
        let cwd = Path::new("/home/pg");
        assert_eq!(
            parse_delivery("dir:/srv/pg/restored", cwd).unwrap(),
            Delivery::Dir("/srv/pg/restored".into())
        );
        assert_eq!(
            parse_delivery("dir:restored/./x/../y", cwd).unwrap(),
            Delivery::Dir("/home/pg/restored/y".into())
        );
        assert_eq!(parse_delivery("instance", cwd).unwrap(), Delivery::Instance);
        for bad in ["dir:", "dir", "/srv/pg", "nfs:/x", "Instance", ""] {
            let e = parse_delivery(bad, cwd).unwrap_err().to_string();
            assert!(e.contains("dir:PATH"), "{bad}: {e}");
        }
    }
}
