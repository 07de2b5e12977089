//! Pause points for crash tests across processes, compiled in with the
//! `failpoints` feature (as the compaction failpoints are): a process whose
//! `HAYLOFT_PAUSE_AT` names a point stops there for good, after logging
//! it, so that a test can `kill -9` it exactly there. With
//! `HAYLOFT_PAUSE_ONCE=PATH`, only the first process to create `PATH`
//! pauses; with `HAYLOFT_PAUSE_MS=N`, the pause ends after N ms (a test
//! acts meanwhile, then lets it go on). Without the feature every point is
//! a no-op.

/// Blocks this thread at `point` if the environment names it: for good,
/// or for `HAYLOFT_PAUSE_MS`.
pub fn pause_at(point: &str) {
    if let Some(pause) = pause_for(point) {
        std::thread::sleep(pause);
    }
}

/// [`pause_at`] for an async task: only the task stops.
pub async fn pause_task_at(point: &str) {
    if let Some(pause) = pause_for(point) {
        tokio::time::sleep(pause).await;
    }
}

/// How long to pause at `point`, if at all.
fn pause_for(point: &str) -> Option<std::time::Duration> {
    if !should_pause(point) {
        return None;
    }
    let ms = std::env::var("HAYLOFT_PAUSE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        // For good: a month is longer than any test.
        .unwrap_or(30 * 24 * 3_600_000);
    Some(std::time::Duration::from_millis(ms))
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
