//! Nothing acknowledged is lost: kill -9 during sustained ingest, restart,
//! and every row that got a 204 is there exactly once; SIGTERM finishes and
//! shuts down cleanly.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn batch(first: i64, n: i64) -> String {
    (first..first + n)
        .map(|i| {
            format!(
                "m,host=h{} id={i}i,v=1 {}\n",
                i % 5,
                1_700_000_000_000_000_000 + i
            )
        })
        .collect()
}

/// Writers post batches with unique ids until stopped, recording acked ids.
fn writers(
    port: u16,
    round: i64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|w| {
            let stop = stop.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let first = round * 1_000_000_000 + w * 100_000_000 + i * 100;
                    let n = 1 + (i % 50);
                    match try_request(port, "POST", "/write?db=a", &[], batch(first, n).as_bytes())
                    {
                        Ok(r) if r.status == 204 => acked.lock().unwrap().extend(first..first + n),
                        _ => {}
                    }
                    i += 1;
                }
            })
        })
        .collect()
}

#[test]
fn kill9_during_sustained_ingest_keeps_every_acknowledged_row_once() {
    let dir = tempfile::tempdir().unwrap();
    // Small flush thresholds, so flushes happen between the kills too.
    let mut node = Node::start(dir.path(), &["--set", "buffer.flush_rows=2000"]);
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = writers(node.port, round, stop.clone(), acked.clone());
        std::thread::sleep(Duration::from_millis(700 + 150 * round as u64));
        node.kill9();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
        node.restart();
    }
    node.flush();
    let mut got: BTreeMap<i64, u32> = BTreeMap::new();
    for id in ids(&node.parquet_rows("a", "m")) {
        *got.entry(id).or_default() += 1;
    }
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 1000, "writers made progress: {}", acked.len());
    for id in acked.iter() {
        assert_eq!(got.get(id), Some(&1), "acked row {id}");
    }
    let doubled: Vec<_> = got.iter().filter(|(_, &c)| c > 1).take(5).collect();
    assert!(doubled.is_empty(), "rows stored twice: {doubled:?}");
}

#[test]
fn sigterm_finishes_in_flight_writes_and_restart_recovers_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let handles = writers(node.port, 0, stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_millis(500));
    let status = node.terminate();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status}\n{}",
        node.log()
    );
    assert!(node.log().contains("tidemark stopped"));
    node.restart();
    node.flush();
    let got = ids(&node.parquet_rows("a", "m"));
    let mut want = acked.lock().unwrap().clone();
    want.sort();
    // Every acked row once; writes cut off by the shutdown were not acked.
    let got_set: std::collections::BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(got_set.len(), got.len(), "no duplicates");
    assert!(want.iter().all(|id| got_set.contains(id)));
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _node = Node::start(dir.path(), &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is in use by another tidemark process"));
}

/// Every core binds with SO_REUSEPORT; a second node must not be able to
/// share the port (the kernel would split the connections between them).
#[test]
fn a_second_node_on_the_same_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--http-addr", &format!("127.0.0.1:{}", node.port)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            second.kill().unwrap();
            panic!("a second node started on port {}", node.port);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("is in use (another tidemark?)"), "{err}");
    assert_eq!(node.req("GET", "/ready", &[], b"").status, 200);
}

#[test]
fn invalid_configuration_is_refused_at_start_with_the_key_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["serve", "--http-addr", "nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("http.addr: \"nowhere\" is not an IP address and port"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["serve"])
        .env("TIDEMARK_WAL_SYNC_MODE", "sometimes")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TIDEMARK_WAL_SYNC_MODE"));
}
