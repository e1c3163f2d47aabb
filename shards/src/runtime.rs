//! The seam between shard cores and their I/O driver.
//!
//! Shard cores run monoio (chosen by measurement, see `ARCHITECTURE.md`)
//! with its io_uring driver, so their file and socket I/O goes through
//! io_uring. Where io_uring is refused (old kernel, seccomp,
//! `io_uring_disabled`), the same code runs on monoio's legacy epoll driver;
//! a log line says which driver each core runs.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

/// Which I/O driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, the legacy driver otherwise.
    #[default]
    Auto,
    /// io_uring; fail to start if it is refused.
    IoUring,
    /// The legacy epoll driver.
    Legacy,
}

impl std::str::FromStr for DriverChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DriverChoice::Auto),
            "io_uring" => Ok(DriverChoice::IoUring),
            "legacy" => Ok(DriverChoice::Legacy),
            other => Err(format!(
                "unknown driver {other:?} (expected auto, io_uring or legacy)"
            )),
        }
    }
}

/// The driver a runtime actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Legacy,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::IoUring => "io_uring",
            Driver::Legacy => "legacy (epoll)",
        })
    }
}

/// A shard core's runtime.
pub type CoreRuntime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Whether this kernel lets the process use io_uring.
pub fn io_uring_available() -> bool {
    monoio::utils::detect_uring()
}

/// Builds a runtime with timers on the current thread. `entries` is the
/// io_uring queue depth.
pub fn build(choice: DriverChoice, entries: u32) -> io::Result<(CoreRuntime, Driver)> {
    let use_uring = match choice {
        DriverChoice::Legacy => false,
        DriverChoice::Auto => io_uring_available(),
        DriverChoice::IoUring => {
            if !io_uring_available() {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "io_uring was requested but the kernel refuses it",
                ));
            }
            true
        }
    };
    if use_uring {
        let rt = RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()?;
        Ok((rt.into(), Driver::IoUring))
    } else {
        let rt = RuntimeBuilder::<LegacyDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()?;
        Ok((rt.into(), Driver::Legacy))
    }
}

/// Runs `fut` to completion on a new runtime on the current thread.
pub fn block_on<F: Future>(choice: DriverChoice, fut: F) -> io::Result<F::Output> {
    let (mut rt, _) = build(choice, 1024)?;
    Ok(rt.block_on(fut))
}

/// Starts a thread named `name`, pinned to `cpu` if given, running `make()`'s
/// future on its own runtime, and logs which driver it runs.
pub fn spawn_core<T, F, Fut>(
    name: String,
    cpu: Option<usize>,
    choice: DriverChoice,
    make: F,
) -> io::Result<JoinHandle<io::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce(Driver) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    std::thread::Builder::new().name(name.clone()).spawn(move || {
        if let Some(cpu) = cpu {
            if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
                tracing::warn!(thread = %name, cpu, error = ?e, "could not pin thread to its core");
            }
        }
        let (mut rt, driver) = build(choice, 4096)?;
        tracing::info!(thread = %name, ?cpu, %driver, "core runtime started");
        Ok(rt.block_on(make(driver)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_drivers_do_file_io() {
        for choice in [DriverChoice::Auto, DriverChoice::Legacy] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let n = block_on(choice, async {
                let f = monoio::fs::File::create(&path).await.unwrap();
                let (r, _) = f.write_all_at(b"hello".to_vec(), 0).await;
                r.unwrap();
                f.sync_data().await.unwrap();
                f.close().await.unwrap();
                std::fs::read(&path).unwrap().len()
            })
            .unwrap();
            assert_eq!(n, 5, "{choice:?}");
        }
    }
}
