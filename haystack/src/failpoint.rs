//! Pause points for crash tests across processes, compiled in with the
//! `failpoints` feature (as the compaction failpoints are): a process whose
//! `HAYLOFT_PAUSE_AT` names a point stops there for good, after logging
//! it, so that a test can `kill -9` it exactly there. With
//! `HAYLOFT_PAUSE_ONCE=PATH`, only the first process to create `PATH`
//! pauses. Without the feature every point is a no-op.

/// Blocks this thread for good at `point` if the environment names it.
pub fn pause_at(point: &str) {
    if should_pause(point) {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// [`pause_at`] for an async task: only the task stops.
pub async fn pause_task_at(point: &str) {
    if should_pause(point) {
        std::future::pending::<()>().await;
    }
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
