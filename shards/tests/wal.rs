#![allow(clippy::unwrap_used)]
//! WAL behaviour on real files: round trips, rotation, torn tails at every
//! byte offset, corruption handling, and continuity across restarts.

use std::ops::ControlFlow;
use std::path::Path;

use proptest::prelude::*;
use tidemark_shards::runtime::{block_on, DriverChoice};
use tidemark_shards::wal::{
    EntryKind, RecoveryMode, SegmentMeta, SyncMode, Wal, WalConfig, WalError, WalIo,
};
use tidemark_shards::{ShardId, WalSeq};

fn config(dir: &Path, segment_size: u64) -> WalConfig {
    let mut c = WalConfig::new(dir, ShardId(0));
    c.segment_size = segment_size;
    c.sync_mode = SyncMode::Fdatasync;
    c
}

/// Opens the WAL, appends `payloads` one after another, closes it.
fn write_all(config: &WalConfig, payloads: &[Vec<u8>]) -> Vec<WalSeq> {
    block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(config.clone(), WalSeq(1)).await.unwrap();
        let mut seqs = Vec::new();
        for p in payloads {
            seqs.push(wal.append(EntryKind::Write, p).await.unwrap());
        }
        wal.close().await;
        seqs
    })
    .unwrap()
}

/// Opens the WAL (recovering it) and returns every entry from `from` on.
fn read_all(config: &WalConfig, from: WalSeq) -> Result<Vec<(WalSeq, Vec<u8>)>, WalError> {
    block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(config.clone(), WalSeq(1)).await?;
        let mut out = Vec::new();
        wal.read_from(from, |e| {
            out.push((e.seq, e.payload.to_vec()));
            ControlFlow::Continue(())
        })?;
        wal.close().await;
        Ok(out)
    })
    .unwrap()
}

fn payload(i: usize) -> Vec<u8> {
    (0..(i * 37) % 3000 + 1).map(|j| (i + j) as u8).collect()
}

#[test]
fn concurrent_appends_get_gap_free_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 << 10);
    let seqs = block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        let mut handles = Vec::new();
        for t in 0..32 {
            let wal = wal.clone();
            handles.push(monoio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..50 {
                    let p = format!("task {t} entry {i}");
                    let seq = wal.append(EntryKind::Write, p.as_bytes()).await.unwrap();
                    assert!(wal.durable_seq() >= seq);
                    mine.push((seq, p));
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await);
        }
        wal.close().await;
        all
    })
    .unwrap();
    let mut sorted: Vec<_> = seqs.iter().map(|(s, _)| s.0).collect();
    sorted.sort();
    assert_eq!(sorted, (1..=1600).collect::<Vec<_>>());
    let back = read_all(&cfg, WalSeq(1)).unwrap();
    assert_eq!(back.len(), 1600);
    for (seq, p) in &seqs {
        assert_eq!(&back[(seq.0 - 1) as usize].1, p.as_bytes());
    }
}

#[test]
fn rotation_read_from_and_segment_removal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 << 10);
    let payloads: Vec<Vec<u8>> = (0..400).map(payload).collect();
    write_all(&cfg, &payloads);
    let segments: Vec<SegmentMeta> = block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        let s = wal.segments();
        wal.close().await;
        s
    })
    .unwrap();
    assert!(segments.len() > 5, "{} segments", segments.len());
    for w in segments.windows(2) {
        assert_eq!(w[0].last_seq.unwrap().next(), w[1].first_seq);
    }
    for from in [1u64, 2, 57, 200, 399, 400] {
        let got = read_all(&cfg, WalSeq(from)).unwrap();
        assert_eq!(got.len() as u64, 401 - from);
        assert_eq!(got[0].0, WalSeq(from));
        assert_eq!(got[0].1, payloads[(from - 1) as usize]);
    }
    // Remove what is wholly at or below 200, reopen, continue numbering.
    block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        let removed = wal.remove_segments_through(WalSeq(200)).await.unwrap();
        assert!(removed > 0);
        let first = wal.segments()[0].first_seq;
        assert!(first <= WalSeq(201) && first > WalSeq(1));
        wal.close().await;
    })
    .unwrap();
    let got = read_all(&cfg, WalSeq(201)).unwrap();
    assert_eq!(got.len(), 200);
    let seqs = write_all(&cfg, &[b"next".to_vec()]);
    assert_eq!(seqs, [WalSeq(401)]);
}

#[test]
fn numbering_continues_from_the_floor_when_no_segment_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 << 10);
    let seq = block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1001)).await.unwrap();
        let s = wal.append(EntryKind::Write, b"x").await.unwrap();
        wal.close().await;
        s
    })
    .unwrap();
    assert_eq!(seq, WalSeq(1001));
}

#[test]
fn torn_tail_at_every_byte_of_the_last_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    let payloads: Vec<Vec<u8>> = (0..20).map(payload).collect();
    write_all(&cfg, &payloads);
    let seg = dir.path().join(format!("{:020}.wal", 1));
    let full = std::fs::read(&seg).unwrap();
    let last_entry_len = 24 + payloads[19].len();
    let last_start = full.len() - last_entry_len.div_ceil(8) * 8;
    for cut in last_start..full.len() {
        let case = tempfile::tempdir().unwrap();
        let case_seg = case.path().join(format!("{:020}.wal", 1));
        std::fs::write(&case_seg, &full[..cut]).unwrap();
        let ccfg = config(case.path(), 1 << 20);
        let got = read_all(&ccfg, WalSeq(1)).unwrap();
        assert_eq!(got.len(), 19, "cut at {cut}");
        for (i, (seq, p)) in got.iter().enumerate() {
            assert_eq!(seq.0, i as u64 + 1);
            assert_eq!(p, &payloads[i]);
        }
        assert_eq!(
            std::fs::metadata(&case_seg).unwrap().len() as usize,
            last_start,
            "torn bytes truncated"
        );
        // The log goes on from the complete prefix.
        assert_eq!(write_all(&ccfg, &[b"after".to_vec()]), [WalSeq(20)]);
        let got = read_all(&ccfg, WalSeq(20)).unwrap();
        assert_eq!(got, [(WalSeq(20), b"after".to_vec())]);
    }
}

#[test]
fn corrupt_entry_in_the_middle_strict_refuses_skip_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1 << 20);
    let payloads: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; 100]).collect();
    write_all(&cfg, &payloads);
    let seg = dir.path().join(format!("{:020}.wal", 1));
    let mut data = std::fs::read(&seg).unwrap();
    // Entry 5 starts after the 64-byte header and four 128-byte entries.
    let off = 64 + 4 * 128 + 24 + 10;
    data[off] ^= 0x55;
    std::fs::write(&seg, &data).unwrap();
    let err = read_all(&cfg, WalSeq(1)).unwrap_err();
    match &err {
        WalError::Corrupt {
            offset,
            expected_seq,
            ..
        } => {
            assert_eq!(*offset, 64 + 4 * 128);
            assert_eq!(*expected_seq, WalSeq(5));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("recovery_mode"));
    cfg.recovery_mode = RecoveryMode::Skip;
    let report = block_on(DriverChoice::Auto, async {
        let (wal, report) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        wal.close().await;
        report
    })
    .unwrap();
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].expected_seq, WalSeq(5));
    assert_eq!(report.corrupt[0].resumed_at, Some(WalSeq(6)));
    let got = read_all(&cfg, WalSeq(1)).unwrap();
    let seqs: Vec<u64> = got.iter().map(|(s, _)| s.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 6, 7, 8, 9, 10]);
}

#[test]
fn legacy_driver_runs_the_same_wal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 << 10);
    let seqs = block_on(DriverChoice::Legacy, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        let a = wal.append(EntryKind::Write, b"one").await.unwrap();
        let b = wal.append(EntryKind::Write, b"two").await.unwrap();
        wal.close().await;
        vec![a, b]
    })
    .unwrap();
    assert_eq!(seqs, [WalSeq(1), WalSeq(2)]);
    assert_eq!(read_all(&cfg, WalSeq(1)).unwrap().len(), 2);
}

#[test]
fn blocking_io_writes_the_same_segments_as_io_uring() {
    let payloads: Vec<Vec<u8>> = (0..300).map(payload).collect();
    let mut dirs = Vec::new();
    for io in [WalIo::Uring, WalIo::Blocking] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 64 << 10);
        cfg.io = io;
        write_all(&cfg, &payloads);
        // Reopened (still in that mode), numbering continues.
        assert_eq!(write_all(&cfg, &[b"next".to_vec()]), [WalSeq(301)]);
        let back = read_all(&cfg, WalSeq(1)).unwrap();
        assert_eq!(back.len(), 301);
        for (i, (seq, p)) in back.iter().take(300).enumerate() {
            assert_eq!(*seq, WalSeq(i as u64 + 1));
            assert_eq!(p, &payloads[i]);
        }
        dirs.push(dir);
    }
    let files = |d: &Path| -> Vec<(std::ffi::OsString, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let (uring, blocking) = (files(dirs[0].path()), files(dirs[1].path()));
    assert!(uring.len() > 3, "{} segments", uring.len());
    assert!(uring == blocking, "segment files differ between the modes");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Replaying the WAL of any sequence of entries gives back exactly those
    /// entries, across segment rotations and a restart in the middle.
    #[test]
    fn replay_gives_back_what_was_appended(
        first in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 1..60),
        second in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 0..30),
        sync_none in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 64 << 10);
        if sync_none { cfg.sync_mode = SyncMode::None; }
        write_all(&cfg, &first);
        write_all(&cfg, &second);
        let got = read_all(&cfg, WalSeq(1)).unwrap();
        let want: Vec<(WalSeq, Vec<u8>)> = first.iter().chain(&second).cloned().enumerate()
            .map(|(i, p)| (WalSeq(i as u64 + 1), p)).collect();
        prop_assert_eq!(got, want);
    }
}

/// Mounts a small tmpfs for the life of the value (needs root).
struct TinyFs(tempfile::TempDir);

impl TinyFs {
    /// A tmpfs of `size` on a fresh directory; `None` (the test skips)
    /// when not root.
    fn mount(size: &str) -> Option<TinyFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a small tmpfs needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs failed");
        Some(TinyFs(dir))
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_full_disk_holds_writers_refuses_new_ones_and_loses_nothing() {
    let Some(fs) = TinyFs::mount("1m") else {
        return;
    };
    let filler = fs.0.path().join("filler");
    std::fs::write(&filler, vec![1u8; 700 << 10]).unwrap();
    let mut cfg = config(&fs.0.path().join("wal"), 64 << 10);
    cfg.sync_mode = SyncMode::Fdatasync;
    let (results, refused) = block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        let results = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let writer = {
            let wal = wal.clone();
            let results = results.clone();
            monoio::spawn(async move {
                for i in 0..60u32 {
                    let r = wal.append(EntryKind::Write, &vec![i as u8; 8 << 10]).await;
                    results.borrow_mut().push(r.map_err(|e| e.to_string()));
                }
            })
        };
        // Wait until the disk is full: new appends are refused at once.
        let mut refused = None;
        for _ in 0..200 {
            monoio::time::sleep(std::time::Duration::from_millis(20)).await;
            if let Err(e) = wal.append(EntryKind::Write, b"probe").await {
                refused = Some(e);
                break;
            }
        }
        let held = results.borrow().len();
        assert!(held < 60, "the writer is held while the disk is full");
        // Free space: the held group is retried and everything completes.
        std::fs::remove_file(&filler).unwrap();
        writer.await;
        wal.close().await;
        let r = results.borrow().clone();
        (r, refused)
    })
    .unwrap();
    let refused = refused.expect("an append was refused while the disk was full");
    assert!(refused.is_retryable(), "{refused}");
    assert!(refused.to_string().contains("disk is full"), "{refused}");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let got = read_all(&cfg, WalSeq(1)).unwrap();
    // 60 writer entries plus the probes that were accepted before the disk filled.
    let writer_entries: Vec<_> = got.iter().filter(|(_, p)| p.len() == 8 << 10).collect();
    assert_eq!(writer_entries.len(), 60);
    for (i, (seq, _)) in got.iter().enumerate() {
        assert_eq!(seq.0, i as u64 + 1, "gap-free");
    }
}

/// The files of `dir` whose names end in `suffix`, sorted, with their inode
/// numbers.
fn files_ending(dir: &Path, suffix: &str) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter_map(|e| {
            let name = e.file_name().into_string().unwrap();
            name.ends_with(suffix)
                .then(|| (name, e.metadata().unwrap().ino()))
        })
        .collect();
    out.sort();
    out
}

/// Copies the files of `from` into `to`: what a `kill -9` at this moment
/// would leave (every acknowledged write is in the files).
fn copy_files(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn flushed_segments_are_reused_and_their_old_bytes_are_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 64 << 10);
    cfg.spare_segments = 2;
    let payloads: Vec<Vec<u8>> = (0..500).map(payload).collect();
    block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        let mut it = payloads.iter();
        for p in it.by_ref().take(250) {
            wal.append(EntryKind::Write, p).await.unwrap();
        }
        let removed = wal.remove_segments_through(WalSeq(200)).await.unwrap();
        assert!(removed > 2, "{removed} segments removed");
        let spares = files_ending(dir.path(), ".spare");
        assert_eq!(spares.len(), 2, "{spares:?}");
        // Up to the first new segment, which reuses a spare: the state a
        // crash leaves, old entries in the active segment after the new.
        let active = wal.segments().last().unwrap().id;
        for p in it.by_ref() {
            wal.append(EntryKind::Write, p).await.unwrap();
            if wal.segments().last().unwrap().id != active {
                break;
            }
        }
        wal.append(EntryKind::Write, b"one more").await.unwrap();
        let last = wal.segments().last().unwrap().clone();
        assert!(std::fs::metadata(&last.path).unwrap().len() > last.len);
        copy_files(dir.path(), crashed.path());
        let crashed_upto = wal.durable_seq();
        for p in it {
            wal.append(EntryKind::Write, p).await.unwrap();
        }
        wal.close().await;
        // Both spares became segments (the same files).
        assert!(files_ending(dir.path(), ".spare").is_empty());
        let inodes: Vec<u64> = files_ending(dir.path(), ".wal")
            .iter()
            .map(|f| f.1)
            .collect();
        for (name, ino) in &spares {
            assert!(inodes.contains(ino), "spare {name} not reused");
        }
        // A clean close cut the active segment after its entries.
        let last = wal.segments().last().unwrap().clone();
        assert_eq!(std::fs::metadata(&last.path).unwrap().len(), last.len);
        crashed_upto
    })
    .map(|crashed_upto| {
        // After the crash: every durable entry, nothing after them.
        let mut want: Vec<Vec<u8>> = payloads[200..].to_vec();
        want.insert(crashed_upto.0 as usize - 1 - 200, b"one more".to_vec());
        let got = read_all(&config(crashed.path(), 64 << 10), WalSeq(201)).unwrap();
        assert_eq!(got.len() as u64, crashed_upto.0 - 200);
        for (i, (seq, p)) in got.iter().enumerate() {
            assert_eq!((seq.0, p), (201 + i as u64, &want[i]));
        }
        // After the clean close: all of them.
        let got = read_all(&cfg, WalSeq(201)).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (seq, p)) in got.iter().enumerate() {
            assert_eq!((seq.0, p), (201 + i as u64, &want[i]));
        }
    })
    .unwrap();
    // The log goes on after the reused segments, and restarts find no tail.
    let (report, seqs) = block_on(DriverChoice::Auto, async {
        let (wal, report) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        let seq = wal.append(EntryKind::Write, b"after").await.unwrap();
        wal.close().await;
        (report, seq)
    })
    .unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(seqs, WalSeq(502));
}

#[test]
fn a_segment_a_reader_still_holds_is_deleted_not_reused() {
    use tidemark_shards::wal::ReadCursor;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 64 << 10);
    cfg.spare_segments = 8;
    let payloads: Vec<Vec<u8>> = (0..400).map(payload).collect();
    block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        for p in &payloads[..200] {
            wal.append(EntryKind::Write, p).await.unwrap();
        }
        // A chunk of segment 1, read from its memory map and kept (as a
        // replication sender keeps one while sending it).
        let mut cursor = ReadCursor::default();
        let chunk = wal
            .read_chunk(WalSeq(1), 1 << 10, &mut cursor)
            .unwrap()
            .unwrap();
        drop(cursor);
        let before = chunk.bytes.to_vec();
        let removed = wal.remove_segments_through(WalSeq(150)).await.unwrap();
        assert!(removed > 1);
        let spares = files_ending(dir.path(), ".spare");
        assert_eq!(spares.len(), removed - 1, "{spares:?}");
        assert!(!spares
            .iter()
            .any(|(n, _)| n.starts_with(&format!("{:020}", 1))));
        for p in &payloads[200..] {
            wal.append(EntryKind::Write, p).await.unwrap();
        }
        assert_eq!(chunk.bytes.to_vec(), before);
        wal.close().await;
    })
    .unwrap();
}

#[test]
fn a_spare_renamed_into_place_without_its_new_header_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    let payloads: Vec<Vec<u8>> = (0..20).map(payload).collect();
    write_all(&cfg, &payloads);
    let seg = |id: u64| dir.path().join(format!("{id:020}.wal"));
    // A crash between the rename of a spare (here: a copy of segment 1)
    // and the write of its header leaves a last segment naming another.
    std::fs::copy(seg(1), seg(2)).unwrap();
    let report = block_on(DriverChoice::Auto, async {
        let (wal, report) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        wal.close().await;
        report
    })
    .unwrap();
    assert_eq!(report.removed_empty_segments, 1);
    assert_eq!(report.last_seq, Some(WalSeq(20)));
    assert_eq!(read_all(&cfg, WalSeq(1)).unwrap().len(), 20);
    // Anywhere but last, such a header is corruption.
    std::fs::copy(seg(1), seg(2)).unwrap();
    std::fs::copy(seg(1), seg(3)).unwrap();
    let err = read_all(&cfg, WalSeq(1)).unwrap_err();
    assert!(
        matches!(&err, WalError::BadHeader { reason, .. } if reason.contains("names segment 1")),
        "{err}"
    );
}

#[test]
fn a_full_disk_takes_the_spares_space_first() {
    let Some(fs) = TinyFs::mount("1m") else {
        return;
    };
    let mut cfg = config(&fs.0.path().join("wal"), 64 << 10);
    cfg.spare_segments = 4;
    let entry = |i: u32| vec![i as u8; 8 << 10];
    let (results, spares_before) = block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(cfg.clone(), WalSeq(1)).await.unwrap();
        for i in 0..40 {
            wal.append(EntryKind::Write, &entry(i)).await.unwrap();
        }
        wal.remove_segments_through(WalSeq(30)).await.unwrap();
        let spares_before = files_ending(&cfg.dir, ".spare").len();
        // Fill the file system to the last page.
        let mut filler = std::fs::File::create(fs.0.path().join("filler")).unwrap();
        while std::io::Write::write_all(&mut filler, &[7u8; 4096]).is_ok() {}
        drop(filler);
        // The next appends find the disk full; the spares' space takes them.
        let writer = {
            let wal = wal.clone();
            monoio::spawn(async move {
                let mut results = Vec::new();
                for i in 40..56 {
                    results.push(
                        wal.append(EntryKind::Write, &entry(i))
                            .await
                            .map_err(|e| e.to_string()),
                    );
                }
                results
            })
        };
        let results = monoio::time::timeout(std::time::Duration::from_secs(30), writer)
            .await
            .expect("the writes went through without anything else freeing space");
        wal.close().await;
        (results, spares_before)
    })
    .unwrap();
    assert_eq!(spares_before, 4);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(files_ending(&cfg.dir, ".spare").is_empty());
    let got = read_all(&cfg, WalSeq(31)).unwrap();
    assert_eq!(got.len(), 26);
    for (i, (seq, p)) in got.iter().enumerate() {
        assert_eq!((seq.0, p), (31 + i as u64, &entry(30 + i as u32)));
    }
}
