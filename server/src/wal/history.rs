//! Timeline history files (`NNNNNNNN.history`): which timelines a timeline descends from and
//! at which LSN each one was left. Parsing follows PostgreSQL's `readTimeLineHistory`: one line
//! per ancestor, oldest first, `parentTLI <ws> switchpoint <ws> reason`; `#` comments and blank
//! lines are skipped; parents strictly increase and are older than the file's own timeline.
//!
//! A point `(tli, lsn)` lies on a timeline's history when WAL up to `lsn` on `tli` is also WAL of
//! that timeline: everything of an ancestor up to the switch point is shared, nothing after it.

use walvault_proto::{Lsn, TimelineId};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    pub parent: TimelineId,
    /// Where `parent` was left: its WAL up to here is shared with the child.
    pub switch_lsn: Lsn,
    /// Free text PostgreSQL writes, like "no recovery target specified"; may be empty.
    pub reason: String,
}

/// Parses `NNNNNNNN.history` content: lines `parentTLI <ws> switchpoint <ws> reason`, `#`
/// comments, blank lines.
pub fn parse_history(timeline: TimelineId, content: &[u8]) -> Result<Vec<HistoryEntry>, String> {
    let text = std::str::from_utf8(content)
        .map_err(|e| format!("history of timeline {timeline} is not UTF-8 text: {e}"))?;
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| {
            format!(
                "history of timeline {timeline}, line {}: {what}: {line:?}",
                i + 1
            )
        };
        let (tli, rest) = split_field(line);
        let (lsn, reason) = split_field(rest);
        let parent = tli
            .parse::<u32>()
            .map(TimelineId)
            .map_err(|_| bad("expected a numeric timeline id"))?;
        let switch_lsn = lsn
            .parse::<Lsn>()
            .map_err(|_| bad("expected a switch point like 0/3000158"))?;
        if entries.last().is_some_and(|last| parent <= last.parent) {
            return Err(bad("timeline ids must increase"));
        }
        if parent >= timeline {
            return Err(bad("a parent timeline must be older than the file's own"));
        }
        entries.push(HistoryEntry {
            parent,
            switch_lsn,
            reason: reason.to_owned(),
        });
    }
    Ok(entries)
}

/// The first whitespace-separated field of `s` and the rest, trimmed.
fn split_field(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((field, rest)) => (field, rest.trim()),
        None => (s, ""),
    }
}

/// The timelines a target timeline's history passes through: (tli, end) where end is the
/// switch LSN at which it left that timeline, None for the target itself; oldest first.
pub fn ancestry(timeline: TimelineId, entries: &[HistoryEntry]) -> Vec<(TimelineId, Option<Lsn>)> {
    entries
        .iter()
        .map(|e| (e.parent, Some(e.switch_lsn)))
        .chain(std::iter::once((timeline, None)))
        .collect()
}

/// Whether the point (tli, lsn) lies on the history of `target` (tli == target, or tli is an
/// ancestor and lsn <= its switch LSN).
pub fn on_history(target: TimelineId, entries: &[HistoryEntry], tli: TimelineId, lsn: Lsn) -> bool {
    tli == target
        || entries
            .iter()
            .any(|e| e.parent == tli && lsn <= e.switch_lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    /// What PostgreSQL writes after two promotions (tabs, reasons with spaces).
    const TL3: &[u8] = b"1\t0/3000158\tno recovery target specified\n\n\
2\t0/5000000\tbefore 2026-01-01 00:00:00+00\n";

    #[test]
    fn parses_what_postgres_writes() {
        let entries = parse_history(TimelineId(3), TL3).unwrap();
        assert_eq!(
            entries,
            vec![
                HistoryEntry {
                    parent: TimelineId(1),
                    switch_lsn: lsn("0/3000158"),
                    reason: "no recovery target specified".into(),
                },
                HistoryEntry {
                    parent: TimelineId(2),
                    switch_lsn: lsn("0/5000000"),
                    reason: "before 2026-01-01 00:00:00+00".into(),
                },
            ]
        );
        // Comments, blank lines, any whitespace, a missing reason.
        let e = parse_history(TimelineId(2), b"# made by hand\n  \n1 0/AB  \n").unwrap();
        assert_eq!(e[0].switch_lsn, lsn("0/AB"));
        assert_eq!(e[0].reason, "");
        assert_eq!(parse_history(TimelineId(1), b"").unwrap(), vec![]);
    }

    #[test]
    fn refuses_what_postgres_refuses() {
        for (tli, bad) in [
            (3, &b"x\t0/1\twhy\n"[..]),
            (3, b"1\n"),
            (3, b"1\t01\twhy\n"),
            (3, b"2\t0/1\ta\n1\t0/2\tb\n"),
            (3, b"1\t0/1\ta\n1\t0/2\tb\n"),
            (3, b"3\t0/1\tloop\n"),
            (3, b"4\t0/1\tfuture\n"),
            (3, &[0xff, 0xfe]),
        ] {
            let err = parse_history(TimelineId(tli), bad).unwrap_err();
            assert!(err.starts_with("history of timeline 3"), "{err}");
        }
        let err = parse_history(TimelineId(3), b"1\t0/1\ta\nnope\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn ancestry_is_oldest_first() {
        let entries = parse_history(TimelineId(3), TL3).unwrap();
        assert_eq!(
            ancestry(TimelineId(3), &entries),
            vec![
                (TimelineId(1), Some(lsn("0/3000158"))),
                (TimelineId(2), Some(lsn("0/5000000"))),
                (TimelineId(3), None),
            ]
        );
        assert_eq!(ancestry(TimelineId(1), &[]), vec![(TimelineId(1), None)]);
    }

    #[test]
    fn points_on_and_off_the_history() {
        let entries = parse_history(TimelineId(3), TL3).unwrap();
        let on = |tli: u32, l: &str| on_history(TimelineId(3), &entries, TimelineId(tli), lsn(l));
        assert!(on(3, "0/1"));
        assert!(on(3, "9/0"));
        assert!(on(1, "0/3000158"));
        assert!(!on(1, "0/3000159"));
        assert!(on(2, "0/4000000"));
        assert!(on(2, "0/5000000"));
        assert!(!on(2, "0/5000001"));
        // A sibling timeline that is no ancestor, and a descendant.
        assert!(!on(4, "0/1"));
        assert!(!on(7, "0/1"));
        assert!(on_history(TimelineId(1), &[], TimelineId(1), lsn("5/0")));
        assert!(!on_history(TimelineId(1), &[], TimelineId(2), lsn("0/0")));
    }
}
