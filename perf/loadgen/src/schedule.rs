//! When each request is due, and the latency a request is charged.
//!
//! With `--rate`, every connection sends on a fixed schedule: request `k` of
//! connection `c` is due at `offset(c) + k * interval`. A request that could
//! not go out on time (the connection was still waiting for an earlier
//! answer) is sent at once, and its latency is counted from the time it was
//! *due*, not the time it was sent. That is the correction for coordinated
//! omission: a server stall of `S` seconds then shows up as the `S / interval`
//! requests that should have been sent during it, each with the delay it
//! would have caused, instead of as one slow request (Gil Tene's
//! HdrHistogram `recordValueWithExpectedInterval` gives the same numbers when
//! requests are strictly sequential).
//!
//! Without `--rate` (as fast as possible) there is no schedule and latency is
//! counted from the send.
//!
//! Times are `Duration`s since the run started, so the math is plain and
//! testable without a clock.

use std::time::Duration;

/// The send schedule of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Time between two requests of this connection; zero = as fast as possible.
    pub interval: Duration,
    /// When the connection's first request is due.
    pub offset: Duration,
}

impl Schedule {
    /// No schedule: send the next request as soon as the previous one is answered.
    pub const AS_FAST_AS_POSSIBLE: Schedule = Schedule {
        interval: Duration::ZERO,
        offset: Duration::ZERO,
    };

    /// The schedule of connection `index` of `connections` when the run as a
    /// whole must send `rate` rows/s in requests of `batch_size` rows: each
    /// connection sends every `connections * batch_size / rate` seconds, and
    /// the connections' first requests are spread evenly over one interval.
    pub fn fixed_rate(rate: f64, batch_size: usize, connections: usize, index: usize) -> Schedule {
        if rate <= 0.0 || !rate.is_finite() {
            return Schedule::AS_FAST_AS_POSSIBLE;
        }
        let connections = connections.max(1);
        let interval = Duration::from_secs_f64(connections as f64 * batch_size as f64 / rate);
        Schedule {
            interval,
            offset: interval.mul_f64((index % connections) as f64 / connections as f64),
        }
    }

    pub fn is_fixed_rate(&self) -> bool {
        !self.interval.is_zero()
    }

    /// When request `k` (from 0) is due, or `None` without a schedule.
    pub fn due(&self, k: u64) -> Option<Duration> {
        self.is_fixed_rate()
            .then(|| self.offset + self.interval.mul_f64(k as f64))
    }
}

/// The latency charged to a request sent at `sent` and answered at `done`:
/// from its due time when it had one (coordinated-omission corrected), else
/// from the send.
pub fn latency(due: Option<Duration>, sent: Duration, done: Duration) -> Duration {
    done.saturating_sub(due.map_or(sent, |d| d.min(sent)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn fixed_rate_spreads_connections_over_one_interval() {
        // 10,000 rows/s in requests of 1,000 rows over 4 connections: 10
        // requests/s in total, so each connection every 400 ms, first ones at
        // 0, 100, 200, 300 ms.
        let s: Vec<Schedule> = (0..4)
            .map(|c| Schedule::fixed_rate(10_000.0, 1_000, 4, c))
            .collect();
        for (c, s) in s.iter().enumerate() {
            assert_eq!(s.interval, 400 * MS);
            assert_eq!(s.offset, 100 * MS * c as u32);
        }
        assert_eq!(s[1].due(0), Some(100 * MS));
        assert_eq!(s[1].due(3), Some(1_300 * MS));
        // The union of the four schedules is one request every 100 ms.
        let mut all: Vec<Duration> = s
            .iter()
            .flat_map(|s| (0..5).filter_map(|k| s.due(k)))
            .collect();
        all.sort();
        for (i, t) in all.iter().enumerate() {
            assert_eq!(*t, 100 * MS * i as u32);
        }
    }

    #[test]
    fn no_rate_means_no_schedule() {
        assert_eq!(
            Schedule::fixed_rate(0.0, 5_000, 4, 1),
            Schedule::AS_FAST_AS_POSSIBLE
        );
        assert_eq!(Schedule::AS_FAST_AS_POSSIBLE.due(7), None);
        assert_eq!(latency(None, 10 * MS, 13 * MS), 3 * MS);
    }

    #[test]
    fn latency_counts_from_the_due_time_when_late() {
        // Due at 100 ms, sent late at 250 ms (the previous answer came then),
        // answered at 251 ms: it cost the user 151 ms.
        assert_eq!(latency(Some(100 * MS), 250 * MS, 251 * MS), 151 * MS);
        // Sent on time: the due time and the send time agree.
        assert_eq!(latency(Some(100 * MS), 100 * MS, 101 * MS), MS);
    }

    /// Runs one connection against a simulated server whose answer to
    /// request `k` takes `service(k)`, for `n` requests, the way the
    /// connection loop does (wait until due, send, wait for the answer), and
    /// records latency in µs with and without the correction.
    fn simulate(
        schedule: Schedule,
        n: u64,
        service: impl Fn(u64) -> Duration,
    ) -> (Histogram<u64>, Histogram<u64>) {
        let mut corrected = Histogram::<u64>::new(3).unwrap();
        let mut naive = Histogram::<u64>::new(3).unwrap();
        let mut now = Duration::ZERO;
        for k in 0..n {
            let due = schedule.due(k);
            if let Some(d) = due {
                now = now.max(d);
            }
            let sent = now;
            now += service(k);
            corrected
                .record(latency(due, sent, now).as_micros() as u64)
                .unwrap();
            naive.record((now - sent).as_micros() as u64).unwrap();
        }
        (corrected, naive)
    }

    #[test]
    fn a_stall_is_charged_to_every_request_it_delayed() {
        // One request every 10 ms, each answered in 1 ms, except request 100,
        // which stalls for 1 s. 1,000 requests = 10 s.
        let s = Schedule {
            interval: 10 * MS,
            offset: Duration::ZERO,
        };
        let (corrected, naive) = simulate(s, 1_000, |k| if k == 100 { 1_000 * MS } else { MS });
        // Naively the stall is one slow request in a thousand: p99 looks like 1 ms.
        assert_eq!(naive.value_at_quantile(0.99), 1_000);
        assert!(naive.max() >= 999_000);
        assert_eq!(naive.len(), 1_000);
        // Corrected, every request due during the stall, and those queued
        // behind it until the connection caught up, waited for it: request
        // 100 1,000 ms, then request k (due at 10k ms, answered at
        // 2,001 + (k - 101) ms) 1,900 - 9k ms: 991, 982, ... 10 ms at k = 210;
        // request 211 is on time again.
        let slow = corrected.count_between(2_000, 2_000_000);
        assert_eq!(slow, 111, "requests 100..=210 were delayed");
        assert!(
            corrected.value_at_quantile(0.99) >= 900_000,
            "p99 {}",
            corrected.value_at_quantile(0.99)
        );
        assert!(corrected.value_at_quantile(0.90) >= 100_000);
        assert_eq!(corrected.value_at_quantile(0.5), 1_000);
        // Same max either way: the stalled request itself.
        assert!(corrected.max() >= 999_000 && corrected.max() <= 1_001_000);
        // Mean: (1,000 + 110 * (991 + 10) / 2 + 889 * 1) / 1,000 = 56.9 ms;
        // uncorrected it is 2 ms.
        let mean_ms = corrected.mean() / 1_000.0;
        assert!((56.0..58.0).contains(&mean_ms), "mean {mean_ms} ms");
        assert!(naive.mean() / 1_000.0 < 2.1);
    }

    #[test]
    fn without_a_schedule_latency_is_service_time() {
        let (corrected, naive) = simulate(Schedule::AS_FAST_AS_POSSIBLE, 100, |k| {
            if k == 10 {
                100 * MS
            } else {
                2 * MS
            }
        });
        assert_eq!(corrected.max(), naive.max());
        assert_eq!(corrected.value_at_quantile(0.5), 2_000);
        assert_eq!(corrected.count_between(50_000, 200_000), 1);
    }
}
