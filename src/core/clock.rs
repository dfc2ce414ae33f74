//! Time as the decision core sees it: milliseconds since the Unix epoch, passed in.
//!
//! The core never reads the clock. The server injects a [`SteadyClock`]; `simulate` drives a
//! virtual clock. This module is the only place allowed to read wall time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// A source of "now" for the async shell.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(
        clippy::disallowed_methods,
        reason = "the one sanctioned wall-clock read"
    )]
    fn now(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0)
    }
}

/// The server's clock: wall time read once at start (never earlier than the latest time the
/// store has stamped), then advanced by the monotonic clock. A wall-clock jump while running —
/// forward or back — cannot satisfy a cooldown, age a stage, or prune dedupe keys early;
/// stamps stay wall time to within the monotonic clock's drift.
#[derive(Debug, Clone, Copy)]
pub struct SteadyClock {
    anchor: Millis,
    started: Instant,
}

impl SteadyClock {
    /// Anchored at the current wall time, or at `high_water` if the wall clock is behind it.
    #[allow(
        clippy::disallowed_methods,
        reason = "the one sanctioned monotonic read"
    )]
    pub fn anchored(high_water: Millis) -> SteadyClock {
        SteadyClock {
            anchor: SystemClock.now().max(high_water),
            started: Instant::now(),
        }
    }
}

impl Clock for SteadyClock {
    fn now(&self) -> Millis {
        self.anchor + self.started.elapsed().as_millis() as Millis
    }
}

/// RFC 3339 text (UTC, millisecond precision) for a timestamp.
pub fn rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Parses RFC 3339 text (`2026-11-22T09:12:00Z`) into milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as Millis)
}

/// Renders a duration the way the config writes them: `250ms`, `30s`, `10m`, `2h`, `1h30m`.
pub fn human_duration(ms: Millis) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut secs = ms / 1000;
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Parses a config duration: a whole number followed by `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("`{text}` has no unit; expected a duration like 250ms, 30s, 10m, 2h")
    })?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration; expected a duration like 250ms, 30s, 10m, 2h")
    })?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}` has unknown unit `{unit}`; expected ms, s, m, h or d"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("10m"), Ok(600_000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten m").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(human_duration(5_400_000), "1h30m");
        assert_eq!(human_duration(250), "250ms");
    }

    #[test]
    fn rfc3339_round_trips() {
        let ms = parse_rfc3339("2026-11-22T09:12:00Z").expect("valid");
        assert_eq!(rfc3339(ms), "2026-11-22T09:12:00.000Z");
    }
}
