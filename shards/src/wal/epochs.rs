//! The epoch history of a shard's WAL: which writer epoch wrote which
//! entries, as `(epoch, first seq)` pairs (Kafka's leader-epoch
//! checkpoint), and the rule that finds where two logs fork.
//!
//! Every entry carries its epoch in its header (see [`super::format`]), so
//! a follower's log records the epochs of the primaries it copied. The
//! history file `<wal dir>/epochs` keeps the pairs after the segments that
//! held them are gone; it is rewritten (atomically) before the first entry
//! of a new epoch is queued, and at recovery pairs past the end of the log
//! are dropped, so it never names an epoch for an entry that is not there.
//!
//! Invariant: pairs are strictly increasing in both epoch and first seq.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::ids::{Epoch, WalSeq};

/// The history file's name in a WAL directory.
pub const FILE: &str = "epochs";
const HEADER: &str = "tidemark-epochs v1";

/// See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    pairs: Vec<(Epoch, WalSeq)>,
}

/// Why an entry's epoch cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    #[error("entry {seq} has epoch {epoch}, older than epoch {last} already in this log")]
    Older {
        seq: WalSeq,
        epoch: Epoch,
        last: Epoch,
    },
    #[error("epoch {epoch} would start at entry {seq}, before entry {last_first} where epoch {last} starts")]
    Backwards {
        epoch: Epoch,
        seq: WalSeq,
        last: Epoch,
        last_first: WalSeq,
    },
}

impl EpochHistory {
    /// A history from pairs; they must keep the invariant.
    pub fn from_pairs(pairs: Vec<(Epoch, WalSeq)>) -> Result<EpochHistory, EpochError> {
        let mut h = EpochHistory::default();
        for (e, s) in pairs {
            h.observe(e, s)?;
        }
        Ok(h)
    }

    pub fn pairs(&self) -> &[(Epoch, WalSeq)] {
        &self.pairs
    }

    /// The epoch of the newest entries (0 when none was recorded).
    pub fn last_epoch(&self) -> Epoch {
        self.pairs.last().map_or(Epoch(0), |p| p.0)
    }

    /// The epoch that wrote entry `seq` (0 before the first pair).
    pub fn epoch_of(&self, seq: WalSeq) -> Epoch {
        match self.pairs.partition_point(|p| p.1 <= seq) {
            0 => Epoch(0),
            i => self.pairs[i - 1].0,
        }
    }

    /// Records that entry `seq` is of `epoch`. Returns true when that starts
    /// a new pair (the file must be saved before the entry is queued).
    pub fn observe(&mut self, epoch: Epoch, seq: WalSeq) -> Result<bool, EpochError> {
        let last = self.last_epoch();
        if epoch == last {
            return Ok(false);
        }
        if epoch < last {
            return Err(EpochError::Older { seq, epoch, last });
        }
        if let Some(&(last, last_first)) = self.pairs.last() {
            if seq <= last_first {
                return Err(EpochError::Backwards {
                    epoch,
                    seq,
                    last,
                    last_first,
                });
            }
        }
        if epoch == Epoch(0) {
            return Ok(false);
        }
        self.pairs.push((epoch, seq));
        Ok(true)
    }

    /// Forgets the pairs of entries after `last` (the log was cut there).
    /// Returns true if anything changed.
    pub fn truncate_after(&mut self, last: WalSeq) -> bool {
        let keep = self.pairs.partition_point(|p| p.1 <= last);
        let changed = keep < self.pairs.len();
        self.pairs.truncate(keep);
        changed
    }

    /// Keeps only what `other` says of entries up to `upto`: after a
    /// bootstrap, this log's entries up to `upto` are the writer's.
    pub fn adopt_through(&mut self, other: &EpochHistory, upto: WalSeq) {
        self.pairs = other
            .pairs
            .iter()
            .copied()
            .filter(|p| p.1 <= upto)
            .collect();
    }

    /// Text form: a header line, then `<epoch> <first seq>` per line.
    pub fn encode(&self) -> String {
        let mut s = String::from(HEADER);
        s.push('\n');
        for (e, q) in &self.pairs {
            s.push_str(&format!("{} {}\n", e.0, q.0));
        }
        s
    }

    pub fn decode(text: &str) -> Result<EpochHistory, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("the first line is not {HEADER:?}"));
        }
        let mut pairs = Vec::new();
        for (i, line) in lines.enumerate() {
            let bad = || {
                format!(
                    "line {}: expected \"<epoch> <first seq>\", got {line:?}",
                    i + 2
                )
            };
            let (e, q) = line.split_once(' ').ok_or_else(bad)?;
            pairs.push((
                Epoch(e.parse().map_err(|_| bad())?),
                WalSeq(q.parse().map_err(|_| bad())?),
            ));
        }
        EpochHistory::from_pairs(pairs).map_err(|e| e.to_string())
    }

    /// Loads `<dir>/epochs` (empty history when there is none).
    pub fn load(dir: &Path) -> io::Result<EpochHistory> {
        let path = dir.join(FILE);
        match fs::read_to_string(&path) {
            Ok(text) => EpochHistory::decode(&text).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(EpochHistory::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces `<dir>/epochs` atomically and durably.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(self.encode().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(FILE))?;
        fs::File::open(dir)?.sync_all()
    }
}

/// Where a follower's log must end to continue the writer's: the last entry
/// on which both agree. Two logs agree on an entry when both hold it and
/// the same epoch wrote it (one primary per epoch, so the same bytes).
/// `*_end` are the last entries each log holds.
pub fn fork_point(
    follower: &EpochHistory,
    follower_end: WalSeq,
    writer: &EpochHistory,
    writer_end: WalSeq,
) -> WalSeq {
    let end = follower_end.min(writer_end);
    // Epochs change only where a pair starts: check those points in order.
    let mut starts: Vec<WalSeq> = follower
        .pairs
        .iter()
        .chain(&writer.pairs)
        .map(|p| p.1)
        .filter(|s| *s <= end)
        .collect();
    starts.sort_unstable();
    for s in starts {
        if follower.epoch_of(s) != writer.epoch_of(s) {
            return s.prev().unwrap_or(WalSeq::ZERO);
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(u32, u64)]) -> EpochHistory {
        EpochHistory::from_pairs(pairs.iter().map(|&(e, s)| (Epoch(e), WalSeq(s))).collect())
            .unwrap()
    }

    #[test]
    fn epochs_grow_with_the_log() {
        let mut x = EpochHistory::default();
        assert!(!x.observe(Epoch(0), WalSeq(1)).unwrap());
        assert!(x.observe(Epoch(2), WalSeq(5)).unwrap());
        assert!(!x.observe(Epoch(2), WalSeq(9)).unwrap());
        assert!(x.observe(Epoch(4), WalSeq(10)).unwrap());
        assert_eq!(x.epoch_of(WalSeq(4)), Epoch(0));
        assert_eq!(x.epoch_of(WalSeq(5)), Epoch(2));
        assert_eq!(x.epoch_of(WalSeq(9)), Epoch(2));
        assert_eq!(x.epoch_of(WalSeq(100)), Epoch(4));
        assert!(matches!(
            x.observe(Epoch(3), WalSeq(11)),
            Err(EpochError::Older { .. })
        ));
        assert!(matches!(
            x.observe(Epoch(5), WalSeq(10)),
            Err(EpochError::Backwards { .. })
        ));
        assert!(x.truncate_after(WalSeq(9)));
        assert_eq!(x, h(&[(2, 5)]));
        assert!(!x.truncate_after(WalSeq(9)));
    }

    #[test]
    fn text_form_roundtrips_and_rejects_damage() {
        let x = h(&[(1, 1), (3, 40), (7, 41)]);
        assert_eq!(EpochHistory::decode(&x.encode()).unwrap(), x);
        assert!(EpochHistory::decode("tidemark-epochs v1\n3 40\n1 50\n").is_err());
        assert!(EpochHistory::decode("tidemark-epochs v1\n3\n").is_err());
        assert!(EpochHistory::decode("nonsense\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            EpochHistory::load(dir.path()).unwrap(),
            EpochHistory::default()
        );
        x.save(dir.path()).unwrap();
        assert_eq!(EpochHistory::load(dir.path()).unwrap(), x);
    }

    #[test]
    fn a_follower_that_is_a_prefix_keeps_everything() {
        let w = h(&[(1, 1), (3, 50)]);
        assert_eq!(
            fork_point(&h(&[(1, 1)]), WalSeq(40), &w, WalSeq(80)),
            WalSeq(40)
        );
        assert_eq!(
            fork_point(&h(&[(1, 1), (3, 50)]), WalSeq(60), &w, WalSeq(80)),
            WalSeq(60)
        );
        assert_eq!(fork_point(&h(&[]), WalSeq(0), &w, WalSeq(80)), WalSeq(0));
    }

    #[test]
    fn an_old_primary_cuts_what_the_new_one_never_had() {
        // Epoch 1 primary wrote up to 70; the new primary (epoch 3) had
        // received up to 49 and wrote from 50.
        let old = h(&[(1, 1)]);
        let new = h(&[(1, 1), (3, 50)]);
        assert_eq!(fork_point(&old, WalSeq(70), &new, WalSeq(90)), WalSeq(49));
        // Behind the fork: nothing to cut.
        assert_eq!(fork_point(&old, WalSeq(45), &new, WalSeq(90)), WalSeq(45));
        // Past the new primary's end in the same epoch: the extra goes.
        assert_eq!(fork_point(&new, WalSeq(95), &new, WalSeq(90)), WalSeq(90));
    }

    #[test]
    fn the_first_disagreement_wins_over_later_ones() {
        // The follower was primary at epoch 2 from 40; the writer never saw
        // epoch 2 and had epoch 4 from 60.
        let f = h(&[(1, 1), (2, 40)]);
        let w = h(&[(1, 1), (4, 60)]);
        assert_eq!(fork_point(&f, WalSeq(70), &w, WalSeq(90)), WalSeq(39));
    }
}
