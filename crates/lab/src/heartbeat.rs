//! Telling a frozen lab from a slow one.
//!
//! QEMU emulates the whole lab machine in software. On a busy host it runs
//! slower, often several times slower, but its clock follows the host's,
//! so a lab that runs at all gets through a one-second `sleep` in about a
//! second. The lab's init therefore rewrites a counter on the uncached
//! control share every second (`heartbeat`); the host reads it and calls
//! the lab frozen only when the counter has stood still for
//! [`LabOptions::freeze_after`](crate::LabOptions::freeze_after): a long
//! or slow command never looks like a freeze, and a real freeze (the
//! emulated CPUs spinning with nothing inside progressing) is noticed
//! within that time instead of at some overall deadline.

use crate::LabError;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long the lab may take from QEMU's start to its first beat: the
/// kernel boots and init mounts the shares in about ten seconds on an idle
/// host; this allows for a host many times busier.
const FIRST_BEAT_WITHIN: Duration = Duration::from_secs(300);
/// The counter is read at most this often.
const READ_EVERY: Duration = Duration::from_secs(1);

/// Watches one lab run's heartbeat file.
pub(crate) struct Pulse {
    path: PathBuf,
    freeze_after: Duration,
    started: Instant,
    next_read: Instant,
    last: Option<u64>,
    last_change: Option<Instant>,
    beats: u64,
    /// The longest time between two beats so far.
    longest_gap: Duration,
}

/// A heartbeat that never started or stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stopped {
    /// Seconds without a beat when the lab was declared frozen.
    pub silent_secs: u64,
    /// Beats seen before that (0: the lab never got to its init).
    pub beats: u64,
}

impl Stopped {
    pub(crate) fn into_error(self, console: String) -> LabError {
        LabError::Frozen {
            silent_secs: self.silent_secs,
            beats: self.beats,
            console,
        }
    }
}

impl Pulse {
    pub(crate) fn new(path: PathBuf, freeze_after: Duration) -> Pulse {
        let now = Instant::now();
        Pulse {
            path,
            freeze_after,
            started: now,
            next_read: now,
            last: None,
            last_change: None,
            beats: 0,
            longest_gap: Duration::ZERO,
        }
    }

    /// Beats seen, and the longest silence between two of them: how close
    /// a run came to being called frozen.
    pub(crate) fn summary(&self) -> (u64, Duration) {
        (self.beats, self.longest_gap)
    }

    /// Reads the counter if it is time to, and says whether the lab is
    /// frozen.
    pub(crate) fn check(&mut self) -> Option<Stopped> {
        let now = Instant::now();
        if now < self.next_read {
            return None;
        }
        self.next_read = now + READ_EVERY;
        // A read between init's truncate and its write sees nothing: not a beat.
        let value = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        self.observe(value, now)
    }

    /// The decision, apart from the file, so it can be tested.
    fn observe(&mut self, value: Option<u64>, now: Instant) -> Option<Stopped> {
        if value.is_some() && value != self.last {
            if let Some(previous) = self.last_change {
                self.longest_gap = self
                    .longest_gap
                    .max(now.saturating_duration_since(previous));
            }
            self.last = value;
            self.last_change = Some(now);
            self.beats += 1;
            return None;
        }
        let (since, allowed) = match self.last_change {
            Some(t) => (t, self.freeze_after),
            None => (self.started, FIRST_BEAT_WITHIN.max(self.freeze_after)),
        };
        let silent = now.saturating_duration_since(since);
        (silent >= allowed).then_some(Stopped {
            silent_secs: silent.as_secs(),
            beats: self.beats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulse() -> (Pulse, Instant) {
        let p = Pulse::new("/nonexistent".into(), Duration::from_secs(60));
        let t0 = p.started;
        (p, t0)
    }

    #[test]
    fn a_beating_lab_is_never_frozen_however_long_it_runs() {
        let (mut p, t0) = pulse();
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_secs(i);
            assert_eq!(p.observe(Some(i), now), None, "beat {i}");
        }
        assert_eq!(p.summary(), (10_000, Duration::from_secs(1)));
    }

    #[test]
    fn a_stopped_counter_is_a_freeze_after_the_limit() {
        let (mut p, t0) = pulse();
        assert_eq!(p.observe(Some(1), t0), None);
        assert_eq!(p.observe(Some(2), t0 + Duration::from_secs(1)), None);
        // The same value, or an unreadable file, is no beat.
        assert_eq!(p.observe(Some(2), t0 + Duration::from_secs(30)), None);
        assert_eq!(p.observe(None, t0 + Duration::from_secs(60)), None);
        assert_eq!(
            p.observe(Some(2), t0 + Duration::from_secs(61)),
            Some(Stopped {
                silent_secs: 60,
                beats: 2
            })
        );
    }

    #[test]
    fn the_first_beat_gets_the_boot_allowance() {
        let (mut p, t0) = pulse();
        assert_eq!(p.observe(None, t0 + Duration::from_secs(120)), None);
        let late = t0 + FIRST_BEAT_WITHIN;
        assert_eq!(
            p.observe(None, late),
            Some(Stopped {
                silent_secs: FIRST_BEAT_WITHIN.as_secs(),
                beats: 0
            })
        );
    }

    #[test]
    fn the_file_is_read_at_most_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heartbeat");
        std::fs::write(&path, "7\n").unwrap();
        let mut p = Pulse::new(path.clone(), Duration::from_secs(60));
        assert_eq!(p.check(), None);
        assert_eq!(p.beats, 1);
        std::fs::write(&path, "8\n").unwrap();
        assert_eq!(p.check(), None);
        assert_eq!(p.beats, 1, "read again within a second");
    }
}
