//! Durations as people write them in flags, files and rules (`500ms`, `1m30s`), both ways.

use std::fmt;
use std::time::Duration;

/// Parses a Prometheus-style duration: one or more `<number><unit>` with units `ms`, `s`,
/// `m`, `h`, `d`, e.g. `100ms`, `1s`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("is empty; write a duration such as 1s or 500ms".into());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err("is not a duration such as 1s, 500ms or 1m30s".into());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| "has a number that is too large".to_owned())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            "" => return Err("has no unit; write e.g. 1s or 500ms".into()),
            _ => return Err("has an unknown unit; use ms, s, m, h or d".into()),
        };
        rest = &rest[unit_len..];
        let part = u32::try_from(n).ok().and_then(|n| unit.checked_mul(n)).ok_or("is too long")?;
        total = total.checked_add(part).ok_or("is too long")?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it.
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 {
            write!(f, "{ms}ms")
        } else if ms % 60_000 != 0 || ms == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{}m", ms / 60_000)
        }
    }
}
