#![allow(clippy::unwrap_used)]
//! Crash tests with real child processes. The test binary re-runs itself as
//! the child (`TIDEMARK_CRASH_CHILD` names the scenario); the child writes,
//! logs every acknowledged write to a file, and is killed with SIGKILL at
//! random moments or aborts at a crash point. The parent then recovers and
//! checks that every acknowledged write is there, in order, once.
//!
//! Needs the `failpoints` feature (crash points inside a flush).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use tidemark_shards::runtime::{block_on, DriverChoice};
use tidemark_shards::wal::{EntryKind, SyncMode, Wal, WalConfig};
use tidemark_shards::{ShardId, WalSeq};

const CHILD_ENV: &str = "TIDEMARK_CRASH_CHILD";
const DIR_ENV: &str = "TIDEMARK_CRASH_DIR";
const ROUND_ENV: &str = "TIDEMARK_CRASH_ROUND";

/// A small seeded generator, so a failing run can be repeated (the seed is printed).
struct Rng(u64);
impl Rng {
    fn from_time() -> Rng {
        let seed = std::env::var("TIDEMARK_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("crash test seed {seed} (set TIDEMARK_CRASH_SEED to repeat)");
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn_child(scenario: &str, dir: &Path, round: u64, crash_at: Option<&str>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_entry_point",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, scenario)
    .env(DIR_ENV, dir)
    .env(ROUND_ENV, round.to_string())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(point) = crash_at {
        cmd.env("TIDEMARK_CRASH_AT", point);
    }
    cmd.spawn().unwrap()
}

/// Lines of the acknowledgement log; a torn last line is ignored.
fn acked_lines(dir: &Path) -> Vec<String> {
    let data = std::fs::read_to_string(dir.join("acked.log")).unwrap_or_default();
    let complete = data.rfind('\n').map_or("", |i| &data[..i]);
    complete.lines().map(str::to_string).collect()
}

fn ack_log(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("acked.log"))
        .unwrap()
}

fn wal_config(dir: &Path) -> WalConfig {
    let mut c = WalConfig::new(dir.join("wal"), ShardId(0));
    c.segment_size = 128 << 10;
    c.sync_mode = SyncMode::Fdatasync;
    c
}

/// The child: runs the scenario named in the environment until killed.
#[test]
fn child_entry_point() {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return; // Not a child: nothing to do.
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let round: i64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    match scenario.as_str() {
        "wal" => child_wal(&dir, round),
        "shard" => child_shard(&dir, round, true),
        "flush" => child_shard(&dir, round, false),
        other => panic!("unknown scenario {other}"),
    }
}

/// Appends from 16 tasks forever, logging `seq payload` after each ack.
fn child_wal(dir: &Path, round: i64) {
    let cfg = wal_config(dir);
    block_on(DriverChoice::Auto, async move {
        let (wal, _) = Wal::open(cfg, WalSeq(1)).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..16 {
            let wal = wal.clone();
            let mut log = ack_log(dir);
            tasks.push(monoio::spawn(async move {
                for i in 0.. {
                    let payload = format!("r{round}-t{t}-i{i}-{}", "x".repeat(i % 300));
                    let seq = wal
                        .append(EntryKind::Write, payload.as_bytes())
                        .await
                        .unwrap();
                    log.write_all(format!("{} {payload}\n", seq.0).as_bytes())
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    })
    .unwrap();
}

/// Writes batches with unique ids from 8 tasks, logging `first_id n` after
/// each ack. With `forever`, flushes run in the background and it writes
/// until killed; otherwise it writes 40 batches, then flushes once (which a
/// crash point may abort) and exits.
fn child_shard(dir: &Path, round: i64, forever: bool) {
    let dirs = Dirs::new(dir);
    let p = parts(&dirs);
    let base = 1_700_000_000_000_000_000i64;
    block_on(DriverChoice::Auto, async move {
        let mut config = shard_config(&dirs, 0);
        config.buffer.flush_rows = 3000;
        let (shard, _) = tidemark_shards::shard::Shard::open(
            config,
            p.catalog.clone(),
            p.pool.clone(),
            p.manifest.clone(),
        )
        .await
        .unwrap();
        let shard = Rc::new(shard);
        if forever {
            let s = shard.clone();
            monoio::spawn(async move { s.run_flush_loop(Duration::from_millis(5)).await });
        }
        let batches: i64 = if forever { i64::MAX } else { 5 };
        let mut tasks = Vec::new();
        for t in 0..8i64 {
            let shard = shard.clone();
            let mut log = ack_log(dir);
            tasks.push(monoio::spawn(async move {
                for i in 0..batches {
                    let n = 1 + ((i * 31 + t * 7) % 97) as usize;
                    let first = round * 1_000_000_000 + t * 10_000_000 + i * 1000;
                    shard
                        .write(cpu_batch(&cpu_rows(first, n, base)))
                        .await
                        .unwrap();
                    log.write_all(format!("{first} {n}\n").as_bytes()).unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        if !forever {
            shard.flush().await.unwrap();
        }
        shard.close().await;
    })
    .unwrap();
}

fn kill_after(mut child: Child, wait: Duration) {
    let start = Instant::now();
    while start.elapsed() < wait {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn wal_kill9_at_random_moments_keeps_every_acknowledged_entry_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::from_time();
    let mut total_acked = 0;
    for round in 0..25 {
        let child = spawn_child("wal", dir.path(), round, None);
        kill_after(child, Duration::from_millis(100 + rng.below(300)));

        let acked: BTreeMap<u64, String> = acked_lines(dir.path())
            .iter()
            .map(|l| {
                let (seq, payload) = l.split_once(' ').unwrap();
                (seq.parse().unwrap(), payload.to_string())
            })
            .collect();
        let mut found: Vec<(u64, String)> = Vec::new();
        block_on(DriverChoice::Auto, async {
            let (wal, _) = Wal::open(wal_config(dir.path()), WalSeq(1)).await.unwrap();
            wal.read_from(WalSeq(1), |e| {
                found.push((e.seq.0, String::from_utf8(e.payload.to_vec()).unwrap()));
                ControlFlow::Continue(())
            })
            .unwrap();
            wal.close().await;
        })
        .unwrap();
        // Gap-free, in order, from 1.
        for (i, (seq, _)) in found.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "round {round}: sequence broken");
        }
        // Every acknowledged entry, with its payload, at its sequence number.
        for (seq, payload) in &acked {
            let got = found.get((*seq - 1) as usize);
            assert_eq!(
                got.map(|g| &g.1),
                Some(payload),
                "round {round}: acked seq {seq}"
            );
        }
        total_acked = acked.len();
    }
    assert!(
        total_acked > 1000,
        "the children made progress: {total_acked} acked"
    );
}

/// Every id of the acked writes, each exactly once, and nothing else twice.
fn check_rows_once(dir: &Path, context: &str) -> usize {
    let mut acked_ids = Vec::new();
    for line in acked_lines(dir) {
        let (first, n) = line.split_once(' ').unwrap();
        let first: i64 = first.parse().unwrap();
        let n: i64 = n.parse().unwrap();
        acked_ids.extend(first..first + n);
    }
    let dirs = Dirs::new(dir);
    let p = parts(&dirs);
    let mut seen: BTreeMap<i64, u32> = BTreeMap::new();
    block_on(DriverChoice::Auto, async {
        let (shard, _) = open_shard(&dirs, &p, 0).await;
        for r in all_rows(&p, &shard) {
            *seen.entry(r.id).or_default() += 1;
        }
        shard.close().await;
    })
    .unwrap();
    for id in &acked_ids {
        assert_eq!(seen.get(id), Some(&1), "{context}: acked row {id}");
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, &c)| c > 1).collect();
    assert!(
        doubled.is_empty(),
        "{context}: rows seen twice: {doubled:?}"
    );
    // Files and manifest agree: every file is there with its checksum, and
    // nothing else is in the store.
    use sha2::Digest;
    for f in p.manifest.files() {
        let bytes = p.store.get(&f.path).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f.sha256,
            "{context}"
        );
    }
    assert!(p.store.remove_orphans(&p.manifest).unwrap().is_empty());
    acked_ids.len()
}

#[test]
fn shard_kill9_during_writes_and_flushes_keeps_every_acknowledged_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::from_time();
    let mut acked = 0;
    for round in 0..20 {
        let child = spawn_child("shard", dir.path(), round, None);
        kill_after(child, Duration::from_millis(150 + rng.below(400)));
        acked = check_rows_once(dir.path(), &format!("round {round}"));
    }
    let dirs = Dirs::new(dir.path());
    assert!(
        !Manifest_files_empty(&dirs),
        "flushes happened between kills"
    );
    assert!(
        acked > 10_000,
        "the children made progress: {acked} rows acked"
    );
}

#[allow(non_snake_case)]
fn Manifest_files_empty(dirs: &Dirs) -> bool {
    tidemark_shards::manifest::Manifest::open(&dirs.manifest())
        .unwrap()
        .files()
        .is_empty()
}

#[test]
fn a_crash_at_any_step_of_a_flush_loses_and_doubles_nothing() {
    for point in [
        "flush.before_put",
        "flush.before_manifest",
        "flush.after_manifest",
        "shard.after_flush_commit",
    ] {
        let dir = tempfile::tempdir().unwrap();
        // Round 0 crashes at the point; round 1 writes more and flushes cleanly.
        let mut child = spawn_child("flush", dir.path(), 0, Some(point));
        let status = child.wait().unwrap();
        assert!(!status.success(), "{point}: the child should have crashed");
        let acked = check_rows_once(dir.path(), point);
        assert!(acked > 0);
        let status = spawn_child("flush", dir.path(), 1, None).wait().unwrap();
        assert!(status.success(), "{point}: clean run after the crash");
        let all = check_rows_once(dir.path(), point);
        assert!(all > acked);
        let dirs = Dirs::new(dir.path());
        assert!(!Manifest_files_empty(&dirs), "{point}");
    }
}
