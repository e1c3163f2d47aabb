//! Tests of the log store: reopen, torn tails, compaction, concurrency.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;

use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::BasicNode;
use openraft::CommittedLeaderId;
use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::RaftLogReader;
use openraft::Vote;
use tempfile::TempDir;

use super::LogStore;
use super::LogStoreOptions;
use super::LOG_FILE;

openraft::declare_raft_types!(
    pub TestConfig:
        D = String,
        R = String,
        NodeId = u64,
        Node = BasicNode,
);

type Store = LogStore<TestConfig>;

// The conformance suite runs against this store and the real state
// machine in `machine.rs`.

// --- Durability tests ---

fn lid(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn ent(term: u64, index: u64) -> Entry<TestConfig> {
    Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Normal(format!("payload-{term}-{index}")),
    }
}

fn ents(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry<TestConfig>> {
    range.map(|i| ent(term, i)).collect()
}

async fn all_entries(store: &mut Store) -> Vec<(u64, u64, String)> {
    store
        .try_get_log_entries(..)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let data = match e.payload {
                EntryPayload::Normal(d) => d,
                other => format!("{other:?}"),
            };
            (e.log_id.leader_id.term, e.log_id.index, data)
        })
        .collect()
}

fn expected(
    term_of: impl Fn(u64) -> u64,
    range: std::ops::RangeInclusive<u64>,
) -> Vec<(u64, u64, String)> {
    range
        .map(|i| (term_of(i), i, format!("payload-{}-{i}", term_of(i))))
        .collect()
}

#[tokio::test]
async fn reopen_keeps_entries_vote_committed_purged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(dir.path()).unwrap();
        for i in 1..=10 {
            s.blocking_append([ent(1, i)]).await.unwrap();
        }
        s.save_vote(&Vote::new_committed(3, 7)).await.unwrap();
        s.save_committed(Some(lid(1, 8))).await.unwrap();
        s.purge(lid(1, 3)).await.unwrap();
        s.close().await.unwrap();
    }
    let mut s = Store::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut s).await, expected(|_| 1, 4..=10));
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(lid(1, 3)));
    assert_eq!(st.last_log_id, Some(lid(1, 10)));
    assert_eq!(
        s.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 7))
    );
    assert_eq!(s.read_committed().await.unwrap(), Some(lid(1, 8)));
}

#[tokio::test]
async fn drop_without_close_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(dir.path()).unwrap();
        let reader = s.get_log_reader().await;
        s.blocking_append(ents(1, 1..=5)).await.unwrap();
        s.save_committed(Some(lid(1, 5))).await.unwrap();
        drop(reader);
        drop(s); // last handle: joins the I/O thread after it drained the queue
    }
    let mut s = Store::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut s).await, expected(|_| 1, 1..=5));
    assert_eq!(s.read_committed().await.unwrap(), Some(lid(1, 5)));
}

#[tokio::test]
async fn truncate_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(dir.path()).unwrap();
        s.blocking_append(ents(1, 1..=10)).await.unwrap();
        s.truncate(lid(1, 6)).await.unwrap();
        assert_eq!(all_entries(&mut s).await, expected(|_| 1, 1..=5));
        s.blocking_append(ents(2, 6..=8)).await.unwrap();
        s.close().await.unwrap();
    }
    let mut s = Store::open(dir.path()).unwrap();
    let term_of = |i| if i <= 5 { 1 } else { 2 };
    assert_eq!(all_entries(&mut s).await, expected(term_of, 1..=8));
    assert_eq!(
        s.get_log_state().await.unwrap().last_log_id,
        Some(lid(2, 8))
    );
}

#[tokio::test]
async fn purge_past_end_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(dir.path()).unwrap();
        s.blocking_append(ents(1, 1..=10)).await.unwrap();
        s.purge(lid(2, 12)).await.unwrap();
        s.close().await.unwrap();
    }
    let mut s = Store::open(dir.path()).unwrap();
    assert!(all_entries(&mut s).await.is_empty());
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(lid(2, 12)));
    assert_eq!(st.last_log_id, Some(lid(2, 12)));
    s.blocking_append([ent(2, 13)]).await.unwrap();
    s.close().await.unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut s).await, expected(|_| 2, 13..=13));
}

#[tokio::test]
async fn writes_after_close_fail() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let mut other = s.clone();
    s.close().await.unwrap();
    assert!(other.blocking_append([ent(1, 1)]).await.is_err());
    assert!(other.save_vote(&Vote::new(1, 1)).await.is_err());
    assert_eq!(other.read_vote().await.unwrap(), None);
}

/// Writes entries 1..=5, one record each, and returns the log file path.
async fn five_records(dir: &TempDir) -> std::path::PathBuf {
    let mut s = Store::open(dir.path()).unwrap();
    for i in 1..=5 {
        s.blocking_append([ent(1, i)]).await.unwrap();
    }
    s.close().await.unwrap();
    dir.path().join(LOG_FILE)
}

async fn assert_recovers(dir: &TempDir, survivors: u64, expected_len: u64) {
    let mut s = Store::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut s).await, expected(|_| 1, 1..=survivors));
    assert_eq!(
        std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(),
        expected_len
    );
    // New appends go right after the good prefix and survive another reopen.
    s.blocking_append(ents(1, survivors + 1..=6)).await.unwrap();
    s.close().await.unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut s).await, expected(|_| 1, 1..=6));
}

fn record_len(i: u64) -> u64 {
    super::encode_frame(&super::RecordRef::<TestConfig>::Append(&[ent(1, i)]))
        .unwrap()
        .len() as u64
}

#[tokio::test]
async fn torn_tail_cut_mid_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(&dir).await;
    let full = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full - 3)
        .unwrap();
    assert_recovers(&dir, 4, full - record_len(5)).await;
}

#[tokio::test]
async fn torn_tail_cut_mid_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(&dir).await;
    let full = std::fs::metadata(&path).unwrap().len();
    let prefix = full - record_len(5);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(prefix + 5)
        .unwrap();
    assert_recovers(&dir, 4, prefix).await;
}

#[tokio::test]
async fn garbage_tail_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(&dir).await;
    let full = std::fs::metadata(&path).unwrap().len();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\x10\x00\x00\x00garbage garbage garbage");
    std::fs::write(&path, &bytes).unwrap();
    assert_recovers(&dir, 5, full).await;
}

#[tokio::test]
async fn zeroed_tail_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(&dir).await;
    let full = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full + 4096)
        .unwrap();
    assert_recovers(&dir, 5, full).await;
}

#[tokio::test]
async fn corrupt_last_record_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(&dir).await;
    let mut bytes = std::fs::read(&path).unwrap();
    let full = bytes.len() as u64;
    let last = bytes.len() - 2;
    bytes[last] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    assert_recovers(&dir, 4, full - record_len(5)).await;
}

#[tokio::test]
async fn corrupt_vote_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(dir.path()).unwrap();
        s.save_vote(&Vote::new(5, 1)).await.unwrap();
        s.close().await.unwrap();
    }
    let vote = dir.path().join(super::VOTE_FILE);
    let mut bytes = std::fs::read(&vote).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&vote, &bytes).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn compaction_rewrites_mostly_purged_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let options = LogStoreOptions {
        compact_threshold: 256 << 10,
        ..LogStoreOptions::default()
    };
    let big = |term: u64, i: u64| Entry::<TestConfig> {
        log_id: lid(term, i),
        payload: EntryPayload::Normal(format!("{i:0>200}")),
    };
    {
        let mut s = Store::open_with_options(dir.path(), options.clone()).unwrap();
        for chunk in (1..=3000u64).collect::<Vec<_>>().chunks(10) {
            s.blocking_append(chunk.iter().map(|&i| big(1, i)))
                .await
                .unwrap();
            s.save_committed(Some(lid(1, chunk[0]))).await.unwrap();
        }
        let before = std::fs::metadata(&path).unwrap().len();
        assert!(before > 700 << 10, "log is {before} bytes");

        s.purge(lid(1, 2990)).await.unwrap();
        // Goes through the I/O thread after the compaction triggered by the purge.
        s.save_committed(Some(lid(1, 2995))).await.unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(
            after < 8 << 10,
            "log was {before} bytes, is {after} after compaction"
        );

        s.blocking_append((3001..=3010).map(|i| big(1, i)))
            .await
            .unwrap();
        s.close().await.unwrap();
    }
    let mut s = Store::open_with_options(dir.path(), options).unwrap();
    let got = s.try_get_log_entries(..).await.unwrap();
    let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (2991..=3010).collect::<Vec<_>>());
    assert!(matches!(&got[0].payload, EntryPayload::Normal(d) if d == &format!("{:0>200}", 2991)));
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(lid(1, 2990)));
    assert_eq!(st.last_log_id, Some(lid(1, 3010)));
    assert_eq!(s.read_committed().await.unwrap(), Some(lid(1, 2995)));
    assert!(!dir.path().join(super::LOG_TMP_FILE).exists());
}

#[tokio::test]
async fn concurrent_appends_all_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for k in 0..8u64 {
        let mut h = s.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..25u64 {
                h.blocking_append([ent(1, 1 + j * 8 + k)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    s.close().await.unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut s).await, expected(|_| 1, 1..=200));
}

#[test]
fn range_normalization() {
    use std::ops::Bound;

    use super::normalize_range;
    assert_eq!(normalize_range(&(3..3)), None);
    assert_eq!(
        normalize_range(&(Bound::Included(5), Bound::Excluded(3))),
        None
    );
    assert_eq!(normalize_range(&(3..=3)), Some((3, Some(4))));
    assert_eq!(normalize_range(&(..)), Some((0, None)));
    assert_eq!(
        normalize_range(&(u64::MAX..=u64::MAX)),
        Some((u64::MAX, None))
    );
}
