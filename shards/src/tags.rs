//! The dictionary of one tag column being built: every distinct value
//! once, in order of first appearance, each with its key (its index). Both
//! decoders of `tidemark-ingest` build a request's tag columns with it, and
//! the [buffer](crate::buffer) a part's tag columns.
//!
//! Values are found in an open-addressing table with a cheap hash (std's
//! SipHash took a fifth of MessagePack decoding; arrow's dictionary builder,
//! with its hash and a `memcmp` per probe, 15% of line protocol's). So that
//! values which collide, by chance or by design of whoever sent them,
//! cannot make lookups quadratic, a lookup probes at most
//! [`TAG_MAX_PROBE`] slots; a value that finds them all taken goes to a
//! `HashMap` with std's DoS-resistant hasher instead. Slots are only emptied
//! by a rehash, so a probe that meets an empty slot proves the value new.
//! A value is checked as UTF-8 once, when first seen (a later equal value
//! is the same bytes).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use arrow_array::StringArray;
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};

/// How many slots a lookup probes before it turns to the `HashMap`.
pub const TAG_MAX_PROBE: usize = 16;

/// See the [module docs](self).
#[derive(Debug)]
pub struct TagDict {
    /// Slot -> key, `u32::MAX` when empty; a power of two long, at least
    /// twice as long as there are values.
    slots: Vec<u32>,
    /// 64 - log2 of the slots: a hash's top bits are its slot.
    shift: u32,
    /// Per value: its words, and where it ends in `bytes`.
    words: Vec<TagWords>,
    ends: Vec<i32>,
    bytes: Vec<u8>,
    overflow: HashMap<Box<[u8]>, i32>,
}

/// A tag value's length and its first and last (up to) 8 bytes: all of its
/// bytes when it is 16 bytes long at most, so comparing these compares the
/// values without a call to `memcmp` (which dominated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TagWords(usize, u64, u64);

impl TagWords {
    #[inline]
    fn of(s: &[u8]) -> TagWords {
        let (a, b) = match (s.first_chunk::<8>(), s.last_chunk::<8>()) {
            (Some(a), Some(b)) => (u64::from_le_bytes(*a), u64::from_le_bytes(*b)),
            _ => match (s.first_chunk::<4>(), s.last_chunk::<4>()) {
                (Some(a), Some(b)) => {
                    (u32::from_le_bytes(*a) as u64, u32::from_le_bytes(*b) as u64)
                }
                _ => (s.iter().fold(0, |h, &x| (h << 8) | x as u64), 0),
            },
        };
        TagWords(s.len(), a, b)
    }

    /// The hash of `s`, whose words these are: the words, and the middle
    /// bytes of a longer value, mixed by multiplies (the top bits are best
    /// mixed).
    #[inline]
    fn hash(self, s: &[u8]) -> u64 {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut h = (self.1 ^ self.2.rotate_left(32) ^ self.0 as u64).wrapping_mul(K);
        if s.len() > 16 {
            for c in s.chunks_exact(8) {
                let c = u64::from_le_bytes(c.try_into().unwrap_or_default());
                h = (h.rotate_left(26) ^ c).wrapping_mul(K);
            }
        }
        h
    }
}

/// Slots of a new dictionary's table. Small: a request of four tables has
/// some 45 tag columns, most with a handful of distinct values, and with
/// 1,024 slots each (4 KiB) their tables did not stay in the L1 cache, so
/// the probe's two loads (slot, then the value's words) missed: a quarter of
/// the line-protocol row builder's time (TSBS devops). A dictionary that
/// grows past half full doubles its table.
const FIRST_SLOTS: usize = 64;

impl Default for TagDict {
    /// An empty dictionary with a table of [`FIRST_SLOTS`] slots.
    fn default() -> TagDict {
        let mut d = TagDict {
            slots: Vec::new(),
            shift: 0,
            words: Vec::new(),
            ends: Vec::new(),
            bytes: Vec::new(),
            overflow: HashMap::new(),
        };
        d.rehash(FIRST_SLOTS);
        d
    }
}

impl TagDict {
    /// Forgets every value, keeping the memory.
    pub fn clear(&mut self) {
        self.words.clear();
        self.ends.clear();
        self.bytes.clear();
        self.overflow.clear();
        self.slots.fill(u32::MAX);
    }

    /// Distinct values so far.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn value(&self, k: usize) -> &[u8] {
        let start = if k == 0 { 0 } else { self.ends[k - 1] as usize };
        &self.bytes[start..self.ends[k] as usize]
    }

    /// The key of `s`, added if new; `None` if `s` is not UTF-8 (or the
    /// dictionary would outgrow `i32` offsets or keys).
    #[inline]
    pub fn key(&mut self, s: &[u8]) -> Option<i32> {
        let words = TagWords::of(s);
        let mask = self.slots.len() - 1;
        let mut slot = (words.hash(s) >> self.shift) as usize;
        for _ in 0..TAG_MAX_PROBE {
            let k = self.slots[slot];
            match self.words.get(k as usize) {
                Some(&w) if w == words && (s.len() <= 16 || self.value(k as usize) == s) => {
                    return Some(k as i32)
                }
                Some(_) => slot = (slot + 1) & mask,
                None => {
                    let k = self.push(s, words)?;
                    self.slots[slot] = k as u32;
                    if self.words.len() * 2 > self.slots.len() {
                        self.rehash(self.slots.len() * 2);
                    }
                    return Some(k);
                }
            }
        }
        if let Some(&k) = self.overflow.get(s) {
            return Some(k);
        }
        let k = self.push(s, words)?;
        self.overflow.insert(s.into(), k);
        Some(k)
    }

    fn push(&mut self, s: &[u8], words: TagWords) -> Option<i32> {
        std::str::from_utf8(s).ok()?;
        let k = i32::try_from(self.words.len()).ok()?;
        let end = i32::try_from(self.bytes.len() + s.len()).ok()?;
        self.bytes.extend_from_slice(s);
        self.ends.push(end);
        self.words.push(words);
        Some(k)
    }

    /// Resizes the table to `len` slots and puts every value back.
    fn rehash(&mut self, len: usize) {
        self.slots.clear();
        self.slots.resize(len, u32::MAX);
        self.shift = 64 - len.trailing_zeros();
        let mask = len - 1;
        'values: for k in 0..self.words.len() {
            let v = self.value(k);
            let mut slot = (self.words[k].hash(v) >> self.shift) as usize;
            for _ in 0..TAG_MAX_PROBE {
                if self.slots[slot] == u32::MAX {
                    self.slots[slot] = k as u32;
                    continue 'values;
                }
                slot = (slot + 1) & mask;
            }
            if let Entry::Vacant(e) = self.overflow.entry(v.into()) {
                e.insert(k as i32);
            }
        }
    }

    /// The values, in key order, as the dictionary's values array.
    pub fn values(&self) -> StringArray {
        let mut offsets = Vec::with_capacity(self.ends.len() + 1);
        offsets.push(0i32);
        offsets.extend_from_slice(&self.ends);
        let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
        // SAFETY: every value was checked as UTF-8 when it was added, and
        // the offsets are its ends, ascending from 0 to `bytes.len()`.
        unsafe { StringArray::new_unchecked(offsets, Buffer::from(self.bytes.as_slice()), None) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn overflow_keeps_keys_unique() {
        // Every slot taken by a value ("a") that nothing else equals: every
        // other value finds its probe window full and goes to the HashMap,
        // until a rehash spreads them out again.
        let words: Vec<String> = (0..3000).map(|i| format!("w{}", i % 700)).collect();
        let mut d = TagDict::default();
        d.rehash(1024);
        assert_eq!(d.key(b"a"), Some(0));
        d.slots.fill(0);
        let mut want: HashMap<&str, i32> = HashMap::from([("a", 0)]);
        for w in &words {
            let next = want.len() as i32;
            let k = *want.entry(w.as_str()).or_insert(next);
            assert_eq!(d.key(w.as_bytes()), Some(k), "{w}");
        }
        assert!(!d.overflow.is_empty());
        d.rehash(4096);
        for w in &words {
            assert_eq!(d.key(w.as_bytes()), Some(want[w.as_str()]));
        }
        assert_eq!(d.len(), want.len());
        let values = d.values();
        for (w, &k) in &want {
            assert_eq!(values.value(k as usize), *w);
        }
    }

    #[test]
    fn values_in_first_seen_order_and_not_utf8_refused() {
        let mut d = TagDict::default();
        let seq = [
            "b",
            "",
            "a-long-value-over-sixteen-bytes",
            "b",
            "é",
            "",
            "a",
        ];
        let keys: Vec<i32> = seq.iter().map(|v| d.key(v.as_bytes()).unwrap()).collect();
        assert_eq!(keys, [0, 1, 2, 0, 3, 1, 4]);
        let values = d.values();
        let got: Vec<&str> = values.iter().map(Option::unwrap).collect();
        assert_eq!(got, ["b", "", "a-long-value-over-sixteen-bytes", "é", "a"]);
        assert_eq!(d.key(&[0xff, 0xfe]), None);
        assert_eq!(d.len(), 5);
        d.clear();
        assert_eq!(d.len(), 0);
        assert_eq!(d.key(b"z"), Some(0));
    }
}
