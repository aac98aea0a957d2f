//! What the suite has finished, kept where a lab failure cannot lose it.
//!
//! Inside the lab every test appends `start`, then `ok` or `failed`, with
//! its name, to a log in a directory the lab shares uncached with the host
//! (`LabOptions::shares`), so the host still has the log after the lab
//! froze or crashed. When a lab attempt fails as a whole, the next one
//! skips every test that finished (passed or failed: wrong results are
//! never retried) and runs only the rest, the one that was in flight
//! last: the lab failures seen so far (2026-12-07) came during the longest
//! test, and the tests after it should not wait on it. A test in flight at
//! a lab failure in every attempt is counted as failed.

use libtest_mimic::{Failed, Trial};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Names the progress log, inside the lab.
pub const LOG_ENV: &str = "SUPERMACHINE_E2E_PROGRESS";
/// Names the file of tests to leave out, inside the lab.
pub const SKIP_ENV: &str = "SUPERMACHINE_E2E_SKIP";

/// A test whose start and end are logged when [`LOG_ENV`] is set.
pub fn trial<F>(name: &'static str, run: F) -> Trial
where
    F: FnOnce() -> Result<(), Failed> + Send + 'static,
{
    Trial::test(name, move || {
        record("start", name);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
        let ok = matches!(result, Ok(Ok(())));
        record(if ok { "ok" } else { "failed" }, name);
        match result {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn record(event: &str, name: &str) {
    let Some(log) = std::env::var_os(LOG_ENV) else {
        return;
    };
    let line = format!("{event} {} {name}\n", now_ms());
    // One write of one line with O_APPEND: the uncached share passes it to
    // the host before the call returns.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "e2e: cannot log progress to {}: {e}",
            Path::new(&log).display()
        );
    }
}

/// Drops the tests named in the [`SKIP_ENV`] file (one name a line) and
/// moves those it names with a leading `+` to the end.
pub fn without_skipped(trials: Vec<Trial>) -> Vec<Trial> {
    let Some(path) = std::env::var_os(SKIP_ENV) else {
        return trials;
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last: BTreeSet<&str> = text.lines().filter_map(|l| l.strip_prefix('+')).collect();
    let skip: BTreeSet<&str> = text.lines().filter(|l| !l.starts_with('+')).collect();
    let (mut now, later): (Vec<Trial>, Vec<Trial>) = trials
        .into_iter()
        .filter(|t| !skip.contains(t.name()))
        .partition(|t| !last.contains(t.name()));
    now.extend(later);
    now
}

/// How a test ended, as far as the host knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    /// In flight when the lab failed, in every attempt.
    LostEveryTime,
}

/// The host's view of the progress log across lab attempts.
#[derive(Debug, Default)]
pub struct Ledger {
    pub finished: BTreeMap<String, Outcome>,
    /// The test that started and never ended in the last attempt, with
    /// when it started (ms since the epoch).
    pub in_flight: Option<(String, u128)>,
    /// How often each test was in flight when a lab attempt failed.
    lost: BTreeMap<String, u32>,
}

impl Ledger {
    /// Reads the whole log again (it only grows).
    pub fn read(&mut self, log: &Path) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        self.in_flight = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(event), Some(ms), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let ms: u128 = ms.parse().unwrap_or(0);
            match event {
                "start" => self.in_flight = Some((name.to_string(), ms)),
                "ok" | "failed" => {
                    let outcome = if event == "ok" {
                        Outcome::Passed
                    } else {
                        Outcome::Failed
                    };
                    self.finished.insert(name.to_string(), outcome);
                    if self.in_flight.as_ref().is_some_and(|(n, _)| n == name) {
                        self.in_flight = None;
                    }
                }
                _ => {}
            }
        }
    }

    /// Counts a lab failure against the test in flight, if any; returns
    /// it and how long it had been running. After `limit` such failures
    /// the test counts as failed.
    pub fn lab_failed(&mut self, limit: u32) -> Option<(String, Duration)> {
        let (name, started) = self.in_flight.take()?;
        let ran = Duration::from_millis(now_ms().saturating_sub(started) as u64);
        let count = self.lost.entry(name.clone()).or_default();
        *count += 1;
        if *count >= limit {
            self.finished.insert(name.clone(), Outcome::LostEveryTime);
        }
        Some((name, ran))
    }

    /// Writes what the next attempt skips (a name a line) and what it runs
    /// last (`+` and a name: the tests a lab failure caught).
    pub fn write_skip(&self, path: &Path) -> std::io::Result<()> {
        let mut text = String::new();
        for name in self.finished.keys() {
            text.push_str(name);
            text.push('\n');
        }
        for name in self.lost.keys() {
            if !self.finished.contains_key(name) {
                text.push('+');
                text.push_str(name);
                text.push('\n');
            }
        }
        std::fs::write(path, text)
    }

    pub fn failures(&self) -> Vec<(&str, &Outcome)> {
        self.finished
            .iter()
            .filter(|(_, o)| **o != Outcome::Passed)
            .map(|(n, o)| (n.as_str(), o))
            .collect()
    }

    pub fn passed(&self) -> usize {
        self.finished
            .values()
            .filter(|o| **o == Outcome::Passed)
            .count()
    }
}

/// A host directory shared uncached with the lab, removed when dropped.
pub struct Share {
    pub dir: PathBuf,
}

impl Share {
    pub fn create() -> std::io::Result<Share> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("sm-e2e-progress-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Share { dir })
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("progress.log")
    }

    pub fn skip(&self) -> PathBuf {
        self.dir.join("skip")
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
