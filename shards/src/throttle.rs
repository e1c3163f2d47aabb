//! Gradual backpressure: when a write may enter a shard, given how full its
//! buffer is. A pure state machine (time and CPU time are passed in); the
//! shard sleeps.
//!
//! A flush moves the whole buffer into a *flushing* set and the buffer
//! starts empty again; it grows back while the flush runs. If writes come
//! faster than flushes drain them, it keeps growing. While a flush runs,
//! the shard core must leave a share of its time idle that rises linearly
//! with the buffer's fill, from nothing when empty to [`MAX_IDLE_SHARE`] at
//! `slow_bytes` (and stays there up to `max_bytes`): a write is admitted
//! only once the core's CPU time since the flush started is within
//! `1 - share` of the wall time; otherwise it waits until it is. The idle
//! time is what a flush worker sharing the core runs in (at `flush.nice`
//! 19, the default, it runs *only* then). At some fill the share equals the
//! flush's share of the work (`q / (p + q)`: flush CPU per byte over
//! ingest plus flush CPU per byte), so the buffer settles where writes
//! enter as fast as flushes drain them and the wait a client sees rises
//! smoothly with the overload, with no estimate of either cost. A node
//! with CPU to spare never waits: its core is idle more than the share
//! asks. Only at `max_bytes` do writes wait for room (a flush starting),
//! the hard stop the gate is there to avoid.
//!
//! Nothing is refused or dropped: a write only waits.

use std::time::{Duration, Instant};

/// The most of its time the gate makes a shard core leave idle.
pub const MAX_IDLE_SHARE: f64 = 0.9;

/// Where the gate sits; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// While a flush runs, writes are slowed more as the buffer (flushing
    /// set excluded) fills, the most from this many bytes on.
    pub slow_bytes: usize,
    /// Writes wait for room at this many bytes.
    pub max_bytes: usize,
}

/// What a write must do before it enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go on.
    Now,
    /// Wait this long, then go on.
    After(Duration),
    /// The buffer is full: wait until a flush starts, then ask again.
    Full,
}

/// Counts of what the gate did, since the shard opened.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ThrottleStats {
    /// Writes that waited at the gate, and for how long in all.
    pub slowed: u64,
    pub slowed_seconds: f64,
    /// Writes that found the buffer full, and how long they waited for room.
    pub stalled: u64,
    pub stalled_seconds: f64,
}

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Throttle {
    config: ThrottleConfig,
    /// CPU time the core used beyond its allowance (seconds), and when
    /// (wall, CPU) that was last brought up to date (`None` while the gate
    /// is open).
    debt: f64,
    last: Option<(Instant, Duration)>,
    pub stats: ThrottleStats,
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            debt: 0.0,
            last: None,
            stats: ThrottleStats::default(),
        }
    }

    /// The share of its time the core must leave idle while a flush runs
    /// and the buffer holds `buffered` bytes: rising linearly from 0 when
    /// empty to [`MAX_IDLE_SHARE`] at `slow_bytes`.
    pub fn idle_share(&self, buffered: usize) -> f64 {
        let fill = buffered as f64 / self.config.slow_bytes.max(1) as f64;
        (fill * MAX_IDLE_SHARE).min(MAX_IDLE_SHARE)
    }

    /// Decides for a write arriving at `now`, when the core has used `cpu`
    /// of CPU time in all, the buffer holds `buffered` bytes and a flush is
    /// running or not.
    pub fn admit(&mut self, now: Instant, cpu: Duration, buffered: usize, flushing: bool) -> Admit {
        if buffered >= self.config.max_bytes {
            self.last = None;
            self.debt = 0.0;
            return Admit::Full;
        }
        let share = if flushing {
            self.idle_share(buffered)
        } else {
            0.0
        };
        if share == 0.0 {
            self.last = None;
            self.debt = 0.0;
            return Admit::Now;
        }
        let busy = 1.0 - share;
        if let Some((t0, c0)) = self.last {
            let wall = now.saturating_duration_since(t0).as_secs_f64();
            let used = cpu.saturating_sub(c0).as_secs_f64();
            self.debt = (self.debt + used - busy * wall).max(0.0);
        }
        self.last = Some((now, cpu));
        if self.debt > 0.0 {
            let wait = Duration::from_secs_f64(self.debt / busy);
            self.stats.slowed += 1;
            self.stats.slowed_seconds += wait.as_secs_f64();
            Admit::After(wait)
        } else {
            Admit::Now
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1_000_000;

    fn throttle() -> Throttle {
        Throttle::new(ThrottleConfig {
            slow_bytes: 250 * MB,
            max_bytes: 1000 * MB,
        })
    }

    /// With no flush running, idling would not help anything.
    #[test]
    fn without_a_flush_running_writes_go_at_once() {
        let mut t = throttle();
        let now = Instant::now();
        for i in 0..1000u64 {
            let cpu = Duration::from_millis(i);
            assert_eq!(t.admit(now, cpu, 999 * MB, false), Admit::Now);
        }
    }

    #[test]
    fn at_the_max_writes_wait_for_room() {
        let mut t = throttle();
        for flushing in [false, true] {
            assert_eq!(
                t.admit(Instant::now(), Duration::ZERO, 1000 * MB, flushing),
                Admit::Full
            );
        }
    }

    #[test]
    fn the_idle_share_rises_with_the_fill() {
        let t = throttle();
        assert_eq!(t.idle_share(0), 0.0);
        assert!((t.idle_share(125 * MB) - MAX_IDLE_SHARE / 2.0).abs() < 1e-9);
        assert_eq!(t.idle_share(250 * MB), MAX_IDLE_SHARE);
        assert_eq!(t.idle_share(999 * MB), MAX_IDLE_SHARE);
        let mut last = 0.0;
        for b in (0..1000).map(|m| m * MB) {
            assert!(t.idle_share(b) >= last);
            last = t.idle_share(b);
        }
    }

    /// Half way to the slow mark the core must idle 45% of the time: after
    /// 110 ms of CPU in 110 ms, a write waits until the 110 ms of CPU are
    /// 55% of the time.
    #[test]
    fn a_core_busier_than_its_share_waits_until_it_is_not() {
        let mut t = throttle();
        let start = Instant::now();
        let fill = 125 * MB;
        assert_eq!(t.admit(start, Duration::ZERO, fill, true), Admit::Now);
        let now = start + Duration::from_millis(110);
        let Admit::After(wait) = t.admit(now, Duration::from_millis(110), fill, true) else {
            panic!("not slowed");
        };
        let expected = 0.110 / 0.55 - 0.110;
        assert!((wait.as_secs_f64() - expected).abs() < 1e-6, "{wait:?}");
        assert_eq!(t.stats.slowed, 1);
        assert!((t.stats.slowed_seconds - expected).abs() < 1e-6);
        // After the wait, with no CPU used meanwhile, the next write goes.
        assert_eq!(
            t.admit(now + wait, Duration::from_millis(110), fill, true),
            Admit::Now
        );
        // A core idle enough is never slowed.
        let later = now + wait + Duration::from_secs(1);
        assert_eq!(
            t.admit(later, Duration::from_millis(500), fill, true),
            Admit::Now
        );
        // Once the flush is done the gate opens at once.
        assert_eq!(
            t.admit(later, Duration::from_secs(100), fill, false),
            Admit::Now
        );
    }

    /// A model of one shared core: ingest costs `p` CPU-seconds per byte on
    /// the shard, the flush `q` on a worker that runs only while the shard
    /// idles (nice 19). A client that always has a write ready (outruns the
    /// node) is slowed to near what the core sustains, 1 / (p + q); the
    /// buffer never reaches the max, and no write waits long.
    fn outrun(p_rate: f64, q_rate: f64) {
        let p = 1.0 / p_rate;
        let q = 1.0 / q_rate;
        let flush_at = 256 * MB;
        let write = MB;
        let mut t = throttle();
        let start = Instant::now();
        let mut now = start;
        let mut cpu = Duration::ZERO;
        let (mut live, mut flushing, mut flush_cpu) = (0usize, 0usize, 0.0f64);
        let mut admitted = 0usize;
        let mut max_wait = Duration::ZERO;
        let mut max_live = 0;
        while now - start < Duration::from_secs(300) {
            let wait = match t.admit(now, cpu, live, flushing > 0) {
                Admit::Full => panic!("the buffer filled: {live} bytes, p {p_rate} q {q_rate} flushing {flushing} at {:?}", now - start),
                Admit::Now => Duration::ZERO,
                Admit::After(d) => d,
            };
            max_wait = max_wait.max(wait);
            // The flush worker runs while the shard waits.
            let mut idle = wait.as_secs_f64();
            while idle > 0.0 && flushing > 0 {
                let used = (flushing as f64 * q - flush_cpu).min(idle);
                flush_cpu += used;
                idle -= used;
                if flush_cpu >= flushing as f64 * q - 1e-12 {
                    flushing = 0;
                    flush_cpu = 0.0;
                }
            }
            if flushing == 0 && live >= flush_at {
                flushing = std::mem::take(&mut live);
            }
            // Then the shard spends its CPU on the write.
            let busy = Duration::from_secs_f64(write as f64 * p);
            now += wait + busy;
            cpu += busy;
            live += write;
            admitted += write;
            max_live = max_live.max(live);
        }
        let secs = (now - start).as_secs_f64();
        let sustainable = 1.0 / (p + q);
        let rate = admitted as f64 / secs;
        assert!(
            rate > 0.8 * sustainable && rate < 1.2 * sustainable,
            "admitted {rate:.0} B/s, sustainable {sustainable:.0}"
        );
        assert!(max_live < 1000 * MB, "the buffer reached {max_live}");
        eprintln!("p {p_rate} q {q_rate}: {rate:.0} B/s of {sustainable:.0}, max buffer {max_live}, max wait {max_wait:?}");
        assert!(
            max_wait < Duration::from_secs(1),
            "a write waited {max_wait:?}"
        );
    }

    #[test]
    fn an_outrunning_client_settles_near_the_sustainable_rate() {
        // Line protocol (flush half of ingest's cost), MessagePack columnar
        // (about equal), and a flush twice as dear as ingest.
        outrun(400e6, 800e6);
        outrun(400e6, 400e6);
        outrun(400e6, 200e6);
    }
}
