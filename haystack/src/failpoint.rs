//! Pause points for crash tests across processes, compiled in with the
//! `failpoints` feature (as the compaction failpoints are): a process whose
//! `HAYLOFT_PAUSE_AT` names a point stops there for good, after logging
//! it, so that a test can `kill -9` it exactly there. With
//! `HAYLOFT_PAUSE_ONCE=PATH`, only the first process to create `PATH`
//! pauses; with `HAYLOFT_PAUSE_MS=N`, the pause ends after N ms; with
//! `HAYLOFT_PAUSE_RELEASE=PATH`, it ends once `PATH` exists (a test acts
//! meanwhile, then creates it to let the process go on). Without the
//! feature every point is a no-op.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often a pause looks for its release file.
const RELEASE_POLL: Duration = Duration::from_millis(10);

/// Blocks this thread at `point` if the environment names it: for good,
/// for `HAYLOFT_PAUSE_MS`, or until `HAYLOFT_PAUSE_RELEASE` exists.
pub fn pause_at(point: &str) {
    if let Some(pause) = pause_for(point) {
        while let Some(step) = pause.next_step() {
            std::thread::sleep(step);
        }
    }
}

/// [`pause_at`] for an async task: only the task stops.
pub async fn pause_task_at(point: &str) {
    if let Some(pause) = pause_for(point) {
        while let Some(step) = pause.next_step() {
            tokio::time::sleep(step).await;
        }
    }
}

/// A pause under way.
struct Pause {
    until: Instant,
    release: Option<PathBuf>,
}

impl Pause {
    /// How long to sleep next; `None` once the pause is over.
    fn next_step(&self) -> Option<Duration> {
        let left = self.until.checked_duration_since(Instant::now())?;
        match &self.release {
            Some(path) if path.exists() => None,
            Some(_) => Some(left.min(RELEASE_POLL)),
            None => Some(left),
        }
    }
}

/// The pause at `point`, if any.
fn pause_for(point: &str) -> Option<Pause> {
    if !should_pause(point) {
        return None;
    }
    let ms = std::env::var("HAYLOFT_PAUSE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        // For good: a month is longer than any test.
        .unwrap_or(30 * 24 * 3_600_000);
    Some(Pause {
        until: Instant::now() + Duration::from_millis(ms),
        release: std::env::var_os("HAYLOFT_PAUSE_RELEASE").map(PathBuf::from),
    })
}

#[cfg(feature = "failpoints")]
fn should_pause(point: &str) -> bool {
    if std::env::var("HAYLOFT_PAUSE_AT").ok().as_deref() != Some(point) {
        return false;
    }
    if let Ok(marker) = std::env::var("HAYLOFT_PAUSE_ONCE")
        && std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_err()
    {
        return false;
    }
    // Point and pid in the message: tests find them in the log.
    tracing::warn!("paused at failpoint {point} (pid {})", std::process::id());
    true
}

#[cfg(not(feature = "failpoints"))]
fn should_pause(_point: &str) -> bool {
    false
}
