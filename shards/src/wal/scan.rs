//! Walking the entries of one segment: the single place that decides what is
//! a valid entry, a torn tail, or corruption. Recovery and every reader use it.

use std::ops::ControlFlow;

use super::format::{decode_entry, Decoded, EntryRef, ENTRY_ALIGN, SEGMENT_HEADER_LEN};
use crate::ids::{SegmentId, WalSeq};

/// What to do about a corrupt entry in the middle of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryMode {
    /// Refuse to start, naming the segment, offset and sequence number.
    #[default]
    Strict,
    /// Skip the corrupt bytes up to the next valid entry, report every
    /// skipped region (log line and [`RecoveryReport`](super::RecoveryReport)),
    /// and go on. The sequence numbers in the skipped region are lost.
    Skip,
}

/// A region of a segment that holds no valid entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRegion {
    pub segment: SegmentId,
    pub offset: u64,
    pub len: u64,
    pub reason: &'static str,
    /// The sequence number that should have come at `offset`.
    pub expected_seq: WalSeq,
    /// The sequence number of the next valid entry, if any in this segment.
    pub resumed_at: Option<WalSeq>,
}

/// How a scan of one segment ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SegmentScan {
    /// The last valid entry's sequence number.
    pub last_seq: Option<WalSeq>,
    /// The offset just past the last valid entry.
    pub valid_end: u64,
    /// Bytes after `valid_end` that are a torn tail (only in the last segment).
    pub torn_bytes: u64,
    /// Corrupt regions found and (in [`RecoveryMode::Skip`]) skipped.
    pub corrupt: Vec<CorruptRegion>,
    /// Whether the callback stopped the scan early.
    pub stopped: bool,
}

/// Finds the next offset after `from` that holds a valid entry with a
/// sequence number of at least `min_seq`.
fn find_next_valid(data: &[u8], from: usize, min_seq: WalSeq) -> Option<(usize, WalSeq)> {
    let mut off = from.div_ceil(ENTRY_ALIGN) * ENTRY_ALIGN;
    while off + 16 <= data.len() {
        // Cheap plausibility test before a checksum over a possibly huge range.
        let seq = u64::from_le_bytes(data[off + 8..off + 16].try_into().unwrap_or([0; 8]));
        if seq >= min_seq.0 && seq - min_seq.0 < (1 << 40) {
            if let Decoded::Entry(e) = decode_entry(&data[off..]) {
                return Some((off, e.seq));
            }
        }
        off += ENTRY_ALIGN;
    }
    None
}

/// Walks the entries of a segment's bytes `data` (header included), which
/// should start at `first_seq`, calling `f` for each valid entry in order.
///
/// * The segment's entries end at the first bytes that are not the next
///   entry, when no valid entry numbered from there on follows them: bytes
///   cut off or failing their checksum, zeros, or a whole entry numbered
///   below `first_seq` (a reused segment file still holds the older
///   entries of its last use past the new ones). In the last segment these
///   bytes are the tail (`torn_bytes`, which the caller truncates); in an
///   earlier one they are ignored, and the next segment's first sequence
///   number tells whether entries are missing.
/// * Corruption (bad bytes followed by valid entries, or a sequence break)
///   fails with the region in `Strict` mode, and is skipped and reported in
///   `Skip` mode.
pub fn scan_segment<'a>(
    data: &'a [u8],
    segment: SegmentId,
    first_seq: WalSeq,
    is_last: bool,
    mode: RecoveryMode,
    mut f: impl FnMut(EntryRef<'a>) -> ControlFlow<()>,
) -> Result<SegmentScan, CorruptRegion> {
    let mut scan = SegmentScan {
        valid_end: SEGMENT_HEADER_LEN as u64,
        ..SegmentScan::default()
    };
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = first_seq;
    while off <= data.len() {
        let reason = match decode_entry(&data[off..]) {
            Decoded::Entry(e) if e.seq == expected => {
                off += e.raw.len();
                scan.last_seq = Some(e.seq);
                scan.valid_end = off as u64;
                expected = e.seq.next();
                if f(e).is_break() {
                    scan.stopped = true;
                    return Ok(scan);
                }
                continue;
            }
            Decoded::Entry(e) if e.seq < first_seq => "entry of an earlier use of the file",
            Decoded::Entry(_) => "sequence number out of order",
            Decoded::End => match find_next_valid(data, off + ENTRY_ALIGN, expected) {
                None => return Ok(scan),
                Some(_) => "zeroed bytes before valid entries",
            },
            Decoded::Truncated => "entry cut off",
            Decoded::Corrupt(reason) => reason,
        };
        let next = find_next_valid(data, off + ENTRY_ALIGN, expected);
        if next.is_none() && reason != "sequence number out of order" {
            if is_last {
                scan.torn_bytes = (data.len() - off) as u64;
            }
            return Ok(scan);
        }
        let region = CorruptRegion {
            segment,
            offset: off as u64,
            len: (next.map_or(data.len(), |(o, _)| o) - off) as u64,
            reason,
            expected_seq: expected,
            resumed_at: next.map(|(_, s)| s),
        };
        if mode == RecoveryMode::Strict {
            return Err(region);
        }
        scan.corrupt.push(region);
        match next {
            Some((o, s)) => {
                off = o;
                expected = s;
            }
            None => return Ok(scan),
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;
    use crate::wal::format::{encode_entry, EntryKind, SegmentHeader};

    fn segment(first: u64, n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut data = SegmentHeader {
            shard: ShardId(0),
            segment: SegmentId(1),
            first_seq: WalSeq(first),
        }
        .encode()
        .to_vec();
        let mut offsets = Vec::new();
        for s in first..first + n {
            offsets.push(data.len());
            encode_entry::<()>(
                &mut data,
                WalSeq(s),
                crate::ids::Epoch(0),
                EntryKind::Write,
                |o| {
                    o.extend(std::iter::repeat_n(s as u8, 10 + s as usize));
                    Ok(())
                },
            )
            .unwrap();
        }
        (data, offsets)
    }

    fn seqs(
        data: &[u8],
        is_last: bool,
        mode: RecoveryMode,
    ) -> Result<(Vec<u64>, SegmentScan), CorruptRegion> {
        let mut seen = Vec::new();
        let scan = scan_segment(data, SegmentId(1), WalSeq(5), is_last, mode, |e| {
            seen.push(e.seq.0);
            ControlFlow::Continue(())
        })?;
        Ok((seen, scan))
    }

    #[test]
    fn clean_segment() {
        let (data, _) = segment(5, 4);
        let (s, scan) = seqs(&data, true, RecoveryMode::Strict).unwrap();
        assert_eq!(s, [5, 6, 7, 8]);
        assert_eq!(scan.valid_end, data.len() as u64);
        assert_eq!(scan.torn_bytes, 0);
    }

    #[test]
    fn torn_tail_at_every_offset() {
        let (data, offsets) = segment(5, 4);
        let last = *offsets.last().unwrap();
        for cut in last..data.len() {
            let (s, scan) = seqs(&data[..cut], true, RecoveryMode::Strict).unwrap();
            assert_eq!(s, [5, 6, 7], "cut at {cut}");
            assert_eq!(scan.valid_end, last as u64);
            assert_eq!(scan.torn_bytes, (cut - last) as u64);
        }
        // Not the last segment: the entries end before the cut one (whether
        // entries are missing is for the next segment's header to say).
        let (s, scan) = seqs(&data[..last + 30], false, RecoveryMode::Strict).unwrap();
        assert_eq!(s, [5, 6, 7]);
        assert_eq!((scan.valid_end, scan.torn_bytes), (last as u64, 0));
    }

    /// The file of an earlier segment: entries numbered 1 to 4, over and
    /// over (below the first of the segments `seqs` scans).
    fn old_use() -> Vec<u8> {
        let (one, _) = segment(1, 4);
        let mut data = one.clone();
        for _ in 0..10 {
            data.extend_from_slice(&one[SEGMENT_HEADER_LEN..]);
        }
        data
    }

    /// A segment reusing the file of an earlier one: new entries written over
    /// the old, which are numbered below the new segment's first.
    fn reused(old: &[u8], new: &[u8]) -> Vec<u8> {
        let mut data = old.to_vec();
        data.resize(data.len().max(new.len()), 0);
        data[..new.len()].copy_from_slice(new);
        data
    }

    #[test]
    fn reused_file_ends_where_the_new_entries_end() {
        // New entries 5..=8 written over old ones and cut at every offset of
        // the last new entry.
        let old = old_use();
        let (new, offsets) = segment(5, 4);
        let last = *offsets.last().unwrap();
        for cut in last..=new.len() {
            let data = reused(&old, &new[..cut]);
            // Entry 8 is whole once its 24-byte head and 18-byte payload
            // are (the padding after them is not checked).
            let whole = cut >= last + 24 + 18;
            for is_last in [true, false] {
                let (s, scan) = seqs(&data, is_last, RecoveryMode::Strict).unwrap();
                assert_eq!(
                    s,
                    if whole {
                        vec![5, 6, 7, 8]
                    } else {
                        vec![5, 6, 7]
                    },
                    "cut at {cut}"
                );
                let end = if whole { new.len() } else { last };
                assert_eq!(scan.valid_end, end as u64);
                let torn = if is_last { data.len() - end } else { 0 };
                assert_eq!(scan.torn_bytes, torn as u64, "cut at {cut}");
                assert!(scan.corrupt.is_empty());
            }
        }
    }

    #[test]
    fn reused_file_whose_old_entry_starts_right_after_the_new_ones() {
        let (new, _) = segment(5, 2);
        let (old, _) = segment(1, 4);
        let mut data = new.clone();
        data.extend_from_slice(&old[SEGMENT_HEADER_LEN..]);
        for is_last in [true, false] {
            let (s, scan) = seqs(&data, is_last, RecoveryMode::Strict).unwrap();
            assert_eq!(s, [5, 6]);
            assert_eq!(scan.valid_end, new.len() as u64);
            let torn = if is_last { data.len() - new.len() } else { 0 };
            assert_eq!(scan.torn_bytes, torn as u64);
        }
    }

    #[test]
    fn reused_file_still_finds_corruption() {
        let old = old_use();
        let (mut new, offsets) = segment(5, 4);
        // A bad entry followed by valid new ones is corruption, old bytes
        // after them or not.
        new[offsets[1] + 30] ^= 0xff;
        let data = reused(&old, &new);
        let err = seqs(&data, true, RecoveryMode::Strict).unwrap_err();
        assert_eq!(
            (err.expected_seq, err.resumed_at),
            (WalSeq(6), Some(WalSeq(7)))
        );
        // An entry numbered at or above the first that breaks the sequence
        // is corruption too, not an old one.
        let (a, _) = segment(5, 2);
        let (b, _) = segment(9, 1);
        let mut data = a.clone();
        data.extend_from_slice(&b[SEGMENT_HEADER_LEN..]);
        let err = seqs(&reused(&old, &data), true, RecoveryMode::Strict).unwrap_err();
        assert_eq!(
            (err.expected_seq, err.reason),
            (WalSeq(7), "sequence number out of order")
        );
    }

    #[test]
    fn corrupt_middle_strict_and_skip() {
        let (mut data, offsets) = segment(5, 4);
        data[offsets[1] + 30] ^= 0xff; // payload byte of seq 6
        let err = seqs(&data, true, RecoveryMode::Strict).unwrap_err();
        assert_eq!(err.expected_seq, WalSeq(6));
        assert_eq!(err.offset, offsets[1] as u64);
        assert_eq!(err.resumed_at, Some(WalSeq(7)));
        let (s, scan) = seqs(&data, true, RecoveryMode::Skip).unwrap();
        assert_eq!(s, [5, 7, 8]);
        assert_eq!(scan.corrupt.len(), 1);
        assert_eq!(scan.valid_end, data.len() as u64);
    }
}
