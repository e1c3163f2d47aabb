//! Crash points for crash tests. With the `failpoints` feature,
//! `TIDEMARK_CRASH_AT=<name>` makes the process abort (as abruptly as
//! kill -9: no destructors, no flushing of user-space buffers) the first time
//! it reaches the crash point `<name>`. Without the feature they compile to
//! nothing.

/// Sleeps here for `TIDEMARK_PAUSE_MS` milliseconds (default 5,000) if
/// `TIDEMARK_PAUSE_AT` names this point: a window for a test to inject a
/// fault (SIGSTOP, a cut link) in the middle of a job.
#[inline]
pub fn pause_point(_name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("TIDEMARK_PAUSE_AT").is_ok_and(|v| v == _name) {
        let ms = std::env::var("TIDEMARK_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5_000);
        eprintln!("pause point {_name}: sleeping {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Aborts the process here if `TIDEMARK_CRASH_AT` names this point.
#[inline]
pub fn crash_point(_name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("TIDEMARK_CRASH_AT").is_ok_and(|v| v == _name) {
        eprintln!("crash point {_name}: aborting");
        std::process::abort();
    }
}
