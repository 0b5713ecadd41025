//! Short, fixed-width renderings of counts, rates and durations for narrow columns.

use std::time::Duration;

/// A count in at most 8 columns: exact below ten million, then with a k/M/G/T suffix.
pub(crate) fn count(n: u64) -> String {
    if n < 10_000_000 {
        n.to_string()
    } else {
        scaled(n as f64)
    }
}

/// A rate per second in at most 6 columns: `0`, `7`, `950`, `1.23k`, `12.3k`, `123k`, `4.56M`.
pub(crate) fn rate(r: f64) -> String {
    if r < 0.05 {
        "0".to_string()
    } else if r < 10.0 {
        let s = format!("{r:.1}");
        s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
    } else if r < 1000.0 {
        format!("{r:.0}")
    } else {
        scaled(r)
    }
}

fn scaled(v: f64) -> String {
    const UNITS: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = v;
    let mut unit = 0;
    while v >= 999.5 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if v < 9.995 {
        format!("{v:.2}{}", UNITS[unit])
    } else if v < 99.95 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

/// Time since attach of an event: `+0.512s`, `+12.3s`, `+4m05s`, `+1h02m`.
pub(crate) fn offset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 10_000 {
        format!("+{}.{:03}s", ms / 1000, ms % 1000)
    } else if ms < 60_000 {
        format!("+{}.{}s", ms / 1000, (ms % 1000) / 100)
    } else {
        let s = d.as_secs();
        if s < 3600 {
            format!("+{}m{:02}s", s / 60, s % 60)
        } else {
            format!("+{}h{:02}m", s / 3600, (s % 3600) / 60)
        }
    }
}

/// Wall time as `h:mm:ss`.
pub(crate) fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

/// Cuts `s` to `width` characters, marking the cut with `…` at the end.
pub(crate) fn fit_end(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// Cuts `s` to `width` characters, keeping its end (the useful part of a path).
pub(crate) fn fit_start(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::from("…");
    out.extend(s.chars().skip(n - (width - 1)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stay_narrow() {
        assert_eq!(count(0), "0");
        assert_eq!(count(9_999_999), "9999999");
        assert_eq!(count(12_345_678), "12.3M");
        assert_eq!(count(u64::MAX), "18446744T");
        assert_eq!(count(123_456_789), "123M");
    }

    #[test]
    fn rates_round_sensibly() {
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(0.01), "0");
        assert_eq!(rate(3.0), "3");
        assert_eq!(rate(2.5), "2.5");
        assert_eq!(rate(950.2), "950");
        assert_eq!(rate(1234.0), "1.23k");
        assert_eq!(rate(12_345.0), "12.3k");
        assert_eq!(rate(999_999.0), "1.00M");
    }

    #[test]
    fn durations() {
        assert_eq!(offset(Duration::from_millis(512)), "+0.512s");
        assert_eq!(offset(Duration::from_millis(12_345)), "+12.3s");
        assert_eq!(offset(Duration::from_secs(245)), "+4m05s");
        assert_eq!(offset(Duration::from_secs(3720)), "+1h02m");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }

    #[test]
    fn fitting() {
        assert_eq!(fit_end("abcdef", 4), "abc…");
        assert_eq!(fit_end("abc", 4), "abc");
        assert_eq!(fit_start("/usr/bin/target", 8), "…/target");
    }
}
