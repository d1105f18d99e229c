//! Sizes as people write and read them (the reading side is shared with the server).

pub use walvault_proto::{human_bytes, utc_time};

/// Parses `64M`, `1.5G`, `512K`, `1T` (powers of 1024) or plain bytes; `none` is `None`.
pub fn parse_size(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let bad = || format!("{s:?} is not a size (like 500M, 20G, 1T, a number of bytes, or none)");
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix(['i']).unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v <= 0.0 || v * mult as f64 > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(Some((v * mult as f64) as u64))
}

/// `println!` for everything the client prints: when stdout is closed early (`walvault
/// wal-list | head`), the program ends quietly instead of panicking.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// One line on stdout; see [`outln!`].
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("walvault: write to stdout: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(Some(64 << 20)));
        assert_eq!(parse_size("1.5G"), Ok(Some(3 << 29)));
        assert_eq!(parse_size("10GiB"), Ok(Some(10 << 30)));
        assert_eq!(parse_size("4096"), Ok(Some(4096)));
        assert_eq!(parse_size("none"), Ok(None));
        for bad in ["", "-1G", "0", "lots", "1X", "NaN"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(human_bytes(8 << 20), "8.0 MiB");
    }
}
