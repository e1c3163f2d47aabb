//! Crash points for crash tests. With the `failpoints` feature,
//! `TIDEMARK_CRASH_AT=<name>` makes the process abort (as abruptly as
//! kill -9: no destructors, no flushing of user-space buffers) the first time
//! it reaches the crash point `<name>`. Without the feature they compile to
//! nothing.

/// Aborts the process here if `TIDEMARK_CRASH_AT` names this point.
#[inline]
pub fn crash_point(_name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("TIDEMARK_CRASH_AT").is_ok_and(|v| v == _name) {
        eprintln!("crash point {_name}: aborting");
        std::process::abort();
    }
}
