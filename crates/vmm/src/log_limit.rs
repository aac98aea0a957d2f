//! Rate limits for log lines that someone outside the worker can cause at
//! will: a guest poking registers or sending bad packets, a local process
//! connecting to the worker's sockets. Each call site gets a token bucket
//! of its own ([`limited!`]): a burst of [`BURST`] lines, then one line per
//! [`REFILL`]. Lines over the limit are counted, not written; the next
//! line written says how many were left out.
//!
//! Written here: the logging crates in use (tracing, log) have no rate
//! limiting of their own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a site may write at once before the limit applies.
pub const BURST: u32 = 10;
/// Time for one more line once the burst is spent: a site that is hit on
/// every guest access still writes only ten lines a minute.
pub const REFILL: Duration = Duration::from_secs(6);

/// One call site's token bucket.
pub struct LogLimit {
    bucket: Mutex<Option<Bucket>>,
}

struct Bucket {
    tokens: u32,
    /// When the last token was added (or the bucket made).
    refilled: Instant,
    /// Lines left out since the last one written.
    suppressed: u64,
}

impl LogLimit {
    /// A full bucket, made lazily on the first line (so this is `const`, for
    /// the `static` each [`limited!`] site holds).
    pub const fn new() -> LogLimit {
        LogLimit {
            bucket: Mutex::new(None),
        }
    }

    /// Whether a line may be written now; if so, how many were left out
    /// before it.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`Self::admit`] at a given time (for tests).
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut guard = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = guard.get_or_insert(Bucket {
            tokens: BURST,
            refilled: now,
            suppressed: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled);
        let earned = elapsed.as_nanos() / REFILL.as_nanos();
        if earned > 0 {
            bucket.tokens = (bucket.tokens as u128 + earned).min(BURST as u128) as u32;
            bucket.refilled += REFILL * earned.min(u32::MAX as u128) as u32;
        }
        if bucket.tokens == 0 {
            bucket.suppressed += 1;
            return None;
        }
        bucket.tokens -= 1;
        Some(std::mem::take(&mut bucket.suppressed))
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new()
    }
}

/// `limited!(warn, "format", args…)`: a `tracing` event at that level,
/// rate-limited per call site (see the module doc). Only a format string
/// and its arguments, no structured fields.
#[macro_export]
macro_rules! limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        if let Some(suppressed) = LIMIT.admit() {
            if suppressed == 0 {
                tracing::$level!($($arg)+);
            } else {
                tracing::$level!(
                    "{} ({} more like it left out)",
                    format_args!($($arg)+),
                    suppressed
                );
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_line_per_refill_and_the_count_of_those_left_out() {
        let limit = LogLimit::new();
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.admit_at(start), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limit.admit_at(start), None);
        }
        let later = start + REFILL;
        assert_eq!(limit.admit_at(later), Some(1000), "says what it left out");
        assert_eq!(limit.admit_at(later), None);
        // A long quiet time refills the burst, no more.
        let much_later = later + REFILL * 1000;
        assert_eq!(limit.admit_at(much_later), Some(1));
        for _ in 1..BURST {
            assert_eq!(limit.admit_at(much_later), Some(0));
        }
        assert_eq!(limit.admit_at(much_later), None);
    }

    #[test]
    fn buckets_are_independent() {
        // `limited!` makes one per call site: a noisy site does not
        // silence the others.
        let (a, b) = (LogLimit::new(), LogLimit::new());
        let now = Instant::now();
        while a.admit_at(now).is_some() {}
        assert_eq!(b.admit_at(now), Some(0));
    }
}
