//! Small helpers shared by both runtimes.

use std::cell::RefCell;
use std::time::Duration;

pub const BLOCK: usize = 4096;

/// CPU time consumed by the calling thread (user + system).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// For O_DIRECT appends: remembers the partial last 4 KiB block so each group
/// commit rewrites it (aligned offset, length padded with zeros to 4 KiB)
/// instead of wasting the rest of the block. Payload MB/s counts only `data`.
#[derive(Default)]
pub struct TailBlock {
    tail: RefCell<Vec<u8>>,
}

impl TailBlock {
    /// Returns (aligned file offset, padded length, combined bytes tail++data).
    pub fn prepare(&self, data: &[u8], logical_off: u64) -> (u64, usize, Vec<u8>) {
        let tail = self.tail.borrow();
        debug_assert_eq!(logical_off % BLOCK as u64, tail.len() as u64);
        let mut combined = Vec::with_capacity(tail.len() + data.len());
        combined.extend_from_slice(&tail);
        combined.extend_from_slice(data);
        let aligned_off = logical_off - tail.len() as u64;
        let padded = combined.len().div_ceil(BLOCK) * BLOCK;
        (aligned_off, padded, combined)
    }

    /// After a successful write: keep the new partial block.
    pub fn advance(&self, combined: &[u8]) {
        let keep = combined.len() % BLOCK;
        let mut tail = self.tail.borrow_mut();
        tail.clear();
        tail.extend_from_slice(&combined[combined.len() - keep..]);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// page-cache writes (monoio fs::File / glommio BufferedFile)
    Buffered,
    /// O_DIRECT 4 KiB-aligned writes with tail-block rewrite (monoio File+O_DIRECT / glommio DmaFile)
    Direct,
}

#[derive(Debug, Clone, Copy)]
pub struct WalCase {
    pub tasks: usize,
    pub entry: usize,
    pub sync: bool,
    pub mode: FileMode,
    pub secs: f64,
    pub handoff: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct WalResult {
    pub appends: u64,
    pub commits: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ServerResult {
    pub requests: u64,
    pub bytes: u64,
    pub cpu: Duration,
}

pub const REQ_SIZE: usize = 4096;
pub const RESP_SIZE: usize = 16;
pub const BULK_CHUNK: usize = 256 * 1024;

/// Snapshot for "how much CPU did OTHER processes use during this case"
/// (another build on this 2-core box would otherwise silently skew results).
#[derive(Clone, Copy)]
pub struct LoadSnap {
    busy_ticks: u64,
    self_ticks: u64,
    at: std::time::Instant,
}

impl LoadSnap {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal
        let busy_ticks = if f.len() >= 8 { f[0] + f[1] + f[2] + f[5] + f[6] + f[7] } else { 0 };
        let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after = me.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let g: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        // after ')' : state(0) ppid(1) ... utime is field 14 overall => index 11 here, stime 12
        let self_ticks = if g.len() > 12 { g[11] + g[12] } else { 0 };
        Self { busy_ticks, self_ticks, at: std::time::Instant::now() }
    }

    /// CPU % (of one core; max 200 on this box) used by everything except this process.
    pub fn foreign_since(&self, start: &LoadSnap) -> f64 {
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let secs = self.at.duration_since(start.at).as_secs_f64();
        let other = (self.busy_ticks - start.busy_ticks) as f64 - (self.self_ticks - start.self_ticks) as f64;
        (other.max(0.0) / hz / secs * 100.0).round()
    }
}
