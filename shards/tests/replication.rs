#![allow(clippy::unwrap_used)]
//! The WAL side of replication on real files: chunks read from the ring and
//! from memory-mapped segments are the stored entries byte for byte; a
//! reader's WAL fed with them is identical to the writer's; segments a
//! reader still needs are kept up to the retention cap.

use std::ops::ControlFlow;
use std::path::Path;

use tidemark_shards::replication::ReceiveState;
use tidemark_shards::runtime::{block_on, DriverChoice};
use tidemark_shards::wal::{EntryKind, ReadCursor, ReadError, SyncMode, Wal, WalConfig, WalError};
use tidemark_shards::{ShardId, WalSeq};

fn config(dir: &Path, ring_bytes: usize) -> WalConfig {
    let mut c = WalConfig::new(dir, ShardId(0));
    c.segment_size = 64 << 10;
    c.sync_mode = SyncMode::None;
    c.ring_bytes = ring_bytes;
    c
}

fn payload(i: usize) -> Vec<u8> {
    (0..(i * 53) % 5000 + 1)
        .map(|j| (i * 7 + j) as u8)
        .collect()
}

/// Every stored entry from `from` on, as raw bytes.
fn stored(wal: &Wal, from: WalSeq) -> Vec<(WalSeq, Vec<u8>)> {
    let mut out = Vec::new();
    wal.read_from(from, |e| {
        out.push((e.seq, e.raw.to_vec()));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

/// Reads chunks from `from` to the durable end; checks each with the
/// reader's protocol state; returns the bytes.
fn read_chunks(wal: &Wal, from: WalSeq, max_bytes: usize) -> Vec<u8> {
    let mut cursor = ReadCursor::default();
    let mut state = ReceiveState::new(from.prev().unwrap());
    let mut next = from;
    let mut out = Vec::new();
    while let Some(c) = wal.read_chunk(next, max_bytes, &mut cursor).unwrap() {
        assert_eq!(c.first, next);
        assert!(c.last >= c.first);
        state.accept(c.first, c.last, &c.bytes).unwrap();
        out.extend_from_slice(&c.bytes);
        next = c.last.next();
    }
    assert_eq!(next, wal.durable_seq().next());
    out
}

#[test]
fn chunks_from_the_ring_and_from_segments_are_the_stored_entries() {
    // Ring off (all from segments), small (mixed), large (all from memory).
    for ring in [0, 8 << 10, 64 << 20] {
        let dir = tempfile::tempdir().unwrap();
        block_on(DriverChoice::Auto, async {
            let (wal, _) = Wal::open(config(dir.path(), ring), WalSeq(1))
                .await
                .unwrap();
            // Concurrent appenders make multi-entry groups.
            let mut tasks = Vec::new();
            for t in 0..4 {
                let wal = wal.clone();
                tasks.push(monoio::spawn(async move {
                    for i in 0..100 {
                        wal.append(EntryKind::Write, &payload(t * 1000 + i))
                            .await
                            .unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            assert!(wal.segments().len() > 3, "rotations happened");
            for from in [1u64, 2, 57, 200, 399, 400] {
                let want: Vec<u8> = stored(&wal, WalSeq(from))
                    .into_iter()
                    .flat_map(|(_, raw)| raw)
                    .collect();
                for max in [1, 4096, 1 << 20] {
                    assert_eq!(
                        read_chunks(&wal, WalSeq(from), max),
                        want,
                        "ring {ring} from {from} max {max}"
                    );
                }
            }
            let mut cursor = ReadCursor::default();
            assert!(wal
                .read_chunk(WalSeq(401), 1024, &mut cursor)
                .unwrap()
                .is_none());
            wal.close().await;
        })
        .unwrap();
    }
}

#[test]
fn a_reader_wal_fed_with_chunks_is_byte_identical_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let wcfg = config(&dir.path().join("w"), 1 << 20);
    let rcfg = config(&dir.path().join("r"), 0);
    block_on(DriverChoice::Auto, async {
        let (w, _) = Wal::open(wcfg.clone(), WalSeq(1)).await.unwrap();
        let (r, _) = Wal::open(rcfg.clone(), WalSeq(1)).await.unwrap();
        for i in 0..300 {
            w.append(EntryKind::Write, &payload(i)).await.unwrap();
        }
        let mut cursor = ReadCursor::default();
        let mut next = WalSeq(1);
        while let Some(c) = w.read_chunk(next, 20_000, &mut cursor).unwrap() {
            let mut assigned = false;
            let last = r
                .append_raw(c.first, c.last, &c.bytes, || assigned = true)
                .await
                .unwrap();
            assert!(assigned);
            assert_eq!(last, c.last);
            assert!(r.durable_seq() >= c.last);
            next = c.last.next();
        }
        // A chunk that does not continue the log is refused, unchanged.
        let c = w
            .read_chunk(WalSeq(5), 100, &mut ReadCursor::default())
            .unwrap()
            .unwrap();
        match r.append_raw(c.first, c.last, &c.bytes, || {}).await {
            Err(WalError::OutOfOrder { expected, got }) => {
                assert_eq!((expected, got), (WalSeq(301), WalSeq(5)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(stored(&r, WalSeq(1)), stored(&w, WalSeq(1)));
        w.close().await;
        r.close().await;
    })
    .unwrap();
    // After a restart the reader's WAL holds the same entries and goes on
    // numbering after them.
    block_on(DriverChoice::Auto, async {
        let (w, _) = Wal::open(wcfg, WalSeq(1)).await.unwrap();
        let (r, _) = Wal::open(rcfg, WalSeq(1)).await.unwrap();
        assert_eq!(r.durable_seq(), WalSeq(300));
        assert_eq!(r.next_seq(), WalSeq(301));
        assert_eq!(stored(&r, WalSeq(1)), stored(&w, WalSeq(1)));
        r.close().await;
        w.close().await;
    })
    .unwrap();
}

#[test]
fn segments_a_reader_needs_are_kept_up_to_the_retention_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 0);
    cfg.max_retained_bytes = 200 << 10;
    block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg, WalSeq(1)).await.unwrap();
        for i in 0..400 {
            wal.append(EntryKind::Write, &payload(i)).await.unwrap();
        }
        let durable = wal.durable_seq();
        let segments = wal.segments().len();
        assert!(segments > 8, "{segments} segments");
        // A reader holds entry 100 on: segments with entries >= 100 stay,
        // within the cap.
        let hold = WalSeq(100);
        wal.set_hold(Some(hold));
        wal.remove_segments_through(WalSeq(150)).await.unwrap();
        assert!(wal.oldest_seq() <= hold);
        assert_eq!(wal.forced_removals(), 0);
        let mut cursor = ReadCursor::default();
        let c = wal.read_chunk(hold, 1, &mut cursor).unwrap().unwrap();
        assert_eq!(c.first, hold);
        // Flushed further, and the reader still at 100: the kept flushed
        // segments pass the 200 KiB cap, so the oldest go anyway.
        wal.remove_segments_through(durable).await.unwrap();
        assert!(wal.forced_removals() > 0);
        assert!(wal.oldest_seq() > hold);
        match wal.read_chunk(hold, 1, &mut ReadCursor::default()) {
            Err(ReadError::Gone { from, oldest }) => {
                assert_eq!(from, hold);
                assert_eq!(oldest, wal.oldest_seq());
            }
            other => panic!("{other:?}"),
        }
        // Kept segments total at most the cap (the active one excepted).
        let segs = wal.segments();
        let kept: u64 = segs[..segs.len() - 1].iter().map(|s| s.len).sum();
        assert!(kept <= 200 << 10, "{kept}");
        // Nobody holding: flushed segments all go.
        wal.set_hold(None);
        wal.remove_segments_through(durable).await.unwrap();
        assert_eq!(wal.segments().len(), 1);
        wal.close().await;
    })
    .unwrap();
}

#[test]
fn restart_at_jumps_the_log_and_recovery_accepts_the_gap_below_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 0);
    block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        for i in 0..50 {
            wal.append(EntryKind::Write, &payload(i)).await.unwrap();
        }
        // Not backwards.
        assert!(wal.restart_at(WalSeq(10)).is_err());
        wal.restart_at(WalSeq(101)).unwrap();
        assert_eq!(wal.durable_seq(), WalSeq(100));
        assert_eq!(
            wal.append(EntryKind::Write, b"x").await.unwrap(),
            WalSeq(101)
        );
        assert_eq!(stored(&wal, WalSeq(101)).len(), 1);
        wal.close().await;
    })
    .unwrap();
    // The old segments are still there (a crash before their removal): with
    // the floor at 101 the gap is below it and the log opens.
    block_on(DriverChoice::Auto, async {
        let (wal, report) = Wal::open(cfg.clone(), WalSeq(101)).await.unwrap();
        assert_eq!(report.last_seq, Some(WalSeq(101)));
        assert_eq!(wal.next_seq(), WalSeq(102));
        wal.close().await;
    })
    .unwrap();
    // Without that floor the same gap is corruption.
    let err = block_on(DriverChoice::Auto, async {
        Wal::open(cfg.clone(), WalSeq(1))
            .await
            .map(|_| ())
            .unwrap_err()
    })
    .unwrap();
    assert!(matches!(err, WalError::Missing { .. }), "{err}");
}

#[test]
fn truncation_cuts_the_forked_tail_and_the_epoch_history_across_restarts() {
    use tidemark_shards::Epoch;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        wal.set_epoch(Epoch(1));
        for i in 0..60 {
            wal.append(EntryKind::Write, &payload(i)).await.unwrap();
        }
        wal.set_epoch(Epoch(3));
        // Many segments (64 KiB each): the cut lands inside one of them.
        for i in 60..120 {
            wal.append(EntryKind::Write, &payload(i)).await.unwrap();
        }
        assert!(wal.segments().len() > 3);
        let h = wal.history();
        assert_eq!(h.pairs(), &[(Epoch(1), WalSeq(1)), (Epoch(3), WalSeq(61))]);
        let kept = stored(&wal, WalSeq(1));
        assert_eq!(wal.truncate_after(WalSeq(45)).await.unwrap(), 75);
        assert_eq!(wal.durable_seq(), WalSeq(45));
        assert_eq!(wal.history().pairs(), &[(Epoch(1), WalSeq(1))]);
        assert_eq!(stored(&wal, WalSeq(1)), kept[..45].to_vec());
        // The log goes on from 46, in the epoch now set.
        wal.set_epoch(Epoch(5));
        assert_eq!(
            wal.append(EntryKind::Write, b"after").await.unwrap(),
            WalSeq(46)
        );
        let mut epochs = Vec::new();
        wal.read_from(WalSeq(44), |e| {
            epochs.push((e.seq, e.epoch));
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(
            epochs,
            vec![
                (WalSeq(44), Epoch(1)),
                (WalSeq(45), Epoch(1)),
                (WalSeq(46), Epoch(5))
            ]
        );
        // Nothing to cut at or past the end.
        assert_eq!(wal.truncate_after(WalSeq(46)).await.unwrap(), 0);
        wal.close().await;
    })
    .unwrap();
    block_on(DriverChoice::Auto, async {
        let (wal, report) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        assert_eq!(report.last_seq, Some(WalSeq(46)));
        assert_eq!(
            wal.history().pairs(),
            &[(Epoch(1), WalSeq(1)), (Epoch(5), WalSeq(46))]
        );
        assert_eq!(wal.epoch(), Epoch(5));
        assert_eq!(stored(&wal, WalSeq(1)).len(), 46);
        wal.close().await;
    })
    .unwrap();
}
