//! Checks of the small text files PostgreSQL archives beside segments: timeline history
//! files and backup history files. They are kept as they are; these checks only make sure a
//! file named like one is one.

use walvault_proto::{Lsn, WalFileName};

/// Larger than any history file a real cluster writes (one line per timeline switch).
pub const MAX_TEXT_FILE: usize = 1 << 20;

/// A `.history` file: lines of `parent_tli <tab> switch_lsn <tab> reason`, `#` comments and
/// blank lines; every parent timeline is older than the file's own.
pub fn check_history(name: &WalFileName, content: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(content).map_err(|_| "is not text".to_owned())?;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let tli = fields.next().and_then(|f| f.parse::<u32>().ok());
        let lsn = fields.next().and_then(|f| f.parse::<Lsn>().ok());
        match (tli, lsn) {
            (Some(t), Some(_)) if t < name.timeline().0 => {}
            _ => {
                return Err(format!(
                    "line {} is no timeline history entry: {line:?}",
                    i + 1
                ))
            }
        }
    }
    Ok(())
}

/// A `.backup` file: the backup label PostgreSQL writes at the end of a base backup.
pub fn check_backup(content: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(content).map_err(|_| "is not text".to_owned())?;
    if text.lines().any(|l| l.starts_with("START WAL LOCATION:")) {
        Ok(())
    } else {
        Err("has no START WAL LOCATION line".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files() {
        let n: WalFileName = "00000003.history".parse().unwrap();
        let ok = b"1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-01-01\n";
        assert!(check_history(&n, ok).is_ok());
        assert!(check_history(&n, b"3\t0/1\tloop\n").is_err());
        assert!(check_history(&n, b"hello\n").is_err());
        assert!(check_history(&n, &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn backup_files() {
        assert!(
            check_backup(b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
                .is_ok()
        );
        assert!(check_backup(b"nothing\n").is_err());
    }
}
