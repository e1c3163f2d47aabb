//! Newtypes for the counters and names a shard deals in, so that a sequence
//! number can never be passed where a segment id or a shard id was meant.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The index of a shard core (0-based). Each shard owns its own WAL directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A per-shard WAL sequence number. Sequence numbers are gap-free: the first
/// entry a shard ever writes is `WalSeq(1)`, every later entry is `next()` of
/// the one before. `WalSeq::ZERO` means "nothing yet" (e.g. nothing flushed).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct WalSeq(pub u64);

impl WalSeq {
    /// "No entry": the watermark before the first entry.
    pub const ZERO: WalSeq = WalSeq(0);

    /// The sequence number that follows this one.
    ///
    /// # Panics
    /// On overflow of `u64`, which at 10^9 entries/s takes 584 years.
    #[must_use]
    pub fn next(self) -> WalSeq {
        WalSeq(self.0.checked_add(1).expect("WalSeq overflow"))
    }

    /// The sequence number before this one, or `None` for `ZERO`.
    #[must_use]
    pub fn prev(self) -> Option<WalSeq> {
        self.0.checked_sub(1).map(WalSeq)
    }
}

impl fmt::Display for WalSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The ordinal of a WAL segment file within one shard's directory. Segment ids
/// grow by one with every rotation; they are not sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SegmentId(pub u64);

impl SegmentId {
    /// The id of the segment created after this one.
    #[must_use]
    pub fn next(self) -> SegmentId {
        SegmentId(self.0.checked_add(1).expect("SegmentId overflow"))
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_next_and_prev() {
        assert_eq!(WalSeq::ZERO.next(), WalSeq(1));
        assert_eq!(WalSeq(5).prev(), Some(WalSeq(4)));
        assert_eq!(WalSeq::ZERO.prev(), None);
        assert_eq!(SegmentId(7).next(), SegmentId(8));
    }
}

/// The writer epoch that wrote a WAL entry (the cluster's writer epoch when
/// the entry's primary acted; 0 for entries written outside a cluster).
/// Stored in every entry's header, so replicated entries keep it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u32);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
