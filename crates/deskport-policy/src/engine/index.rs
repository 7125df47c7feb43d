//! Lookup of "the last start <= key" in a sorted list of interval starts, in near-constant
//! time: a radix table over the span of the boundaries narrows the search to a few entries.

/// An address or port as an unsigned integer key.
pub(crate) trait Key: Copy + Ord + Default + std::fmt::Debug {
    const BITS: u32;
    /// `(self - base) >> shift`, saturated to `usize`.
    fn slot(self, base: Self, shift: u32) -> usize;
    /// `base + (slot << shift)`.
    fn slot_start(base: Self, slot: usize, shift: u32) -> Self;
    /// Bits needed to hold `self - base`.
    fn span_bits(self, base: Self) -> u32;
    fn from_u128(v: u128) -> Self;
}

impl Key for u32 {
    const BITS: u32 = 32;
    #[inline]
    fn slot(self, base: Self, shift: u32) -> usize {
        (self.wrapping_sub(base) >> shift) as usize
    }
    fn slot_start(base: Self, slot: usize, shift: u32) -> Self {
        base.saturating_add(((slot as u64) << shift).min(u64::from(u32::MAX)) as u32)
    }
    fn span_bits(self, base: Self) -> u32 {
        32 - (self - base).leading_zeros()
    }
    fn from_u128(v: u128) -> Self {
        v as u32
    }
}

impl Key for u128 {
    const BITS: u32 = 128;
    #[inline]
    fn slot(self, base: Self, shift: u32) -> usize {
        let v = self.wrapping_sub(base) >> shift;
        usize::try_from(v).unwrap_or(usize::MAX)
    }
    fn slot_start(base: Self, slot: usize, shift: u32) -> Self {
        let slot = slot as u128;
        if shift >= 128 || slot > u128::MAX >> shift {
            return u128::MAX;
        }
        base.saturating_add(slot << shift)
    }
    fn span_bits(self, base: Self) -> u32 {
        128 - (self - base).leading_zeros()
    }
    fn from_u128(v: u128) -> Self {
        v
    }
}

/// Below this many intervals a linear scan beats any index.
const LINEAR: usize = 8;

/// A partition of the key space into intervals `[starts[i], starts[i+1])`, each with a value.
#[derive(Debug, Clone)]
pub(crate) struct IntervalMap<K> {
    starts: Vec<K>,
    values: Vec<u32>,
    /// Keys below `base` are in interval 0.
    base: K,
    shift: u32,
    /// `radix[s]` = index of the interval holding the first key of slot `s`; one extra entry
    /// at the end. Empty when the map is small enough for a linear scan.
    radix: Vec<u32>,
}

impl<K: Key> IntervalMap<K> {
    /// `starts` must be strictly increasing and begin with `K::default()` (zero); adjacent
    /// intervals with equal values are merged.
    pub(crate) fn new(starts: Vec<K>, values: Vec<u32>) -> Self {
        debug_assert_eq!(starts.len(), values.len());
        debug_assert!(starts.first() == Some(&K::default()));
        let mut s = Vec::with_capacity(starts.len());
        let mut v: Vec<u32> = Vec::with_capacity(values.len());
        for (start, value) in starts.into_iter().zip(values) {
            if v.last() != Some(&value) {
                s.push(start);
                v.push(value);
            }
        }
        let mut map = Self {
            starts: s,
            values: v,
            base: K::default(),
            shift: 0,
            radix: Vec::new(),
        };
        map.build_radix();
        map
    }

    fn build_radix(&mut self) {
        let n = self.starts.len();
        if n <= LINEAR {
            return;
        }
        let base = self.starts[1];
        let top = self.starts[n - 1];
        // About two intervals per slot, at most 2^16 slots.
        let slot_bits = (usize::BITS - n.leading_zeros()).min(16);
        let span = top.span_bits(base);
        let shift = span.saturating_sub(slot_bits);
        let slots = top.slot(base, shift) + 1;
        let mut radix = Vec::with_capacity(slots + 1);
        let mut i = 0;
        for slot in 0..=slots {
            let first = K::slot_start(base, slot, shift);
            while i + 1 < n && self.starts[i + 1] <= first {
                i += 1;
            }
            radix.push(i as u32);
        }
        self.base = base;
        self.shift = shift;
        self.radix = radix;
    }

    #[inline]
    pub(crate) fn get(&self, key: K) -> u32 {
        let (lo, hi) = if self.radix.is_empty() {
            (0, self.starts.len() - 1)
        } else if key < self.base {
            return self.values[0];
        } else {
            let slot = key.slot(self.base, self.shift).min(self.radix.len() - 2);
            (self.radix[slot] as usize, self.radix[slot + 1] as usize)
        };
        let window = &self.starts[lo..=hi];
        let i = if window.len() <= LINEAR {
            window.iter().rposition(|s| *s <= key).unwrap_or(0)
        } else {
            window.partition_point(|s| *s <= key).saturating_sub(1)
        };
        self.values[lo + i]
    }

    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(starts: &[u32], values: &[u32], key: u32) -> u32 {
        values[starts.iter().rposition(|s| *s <= key).unwrap()]
    }

    #[test]
    fn agrees_with_a_scan() {
        let mut seed = 0x1234_5678_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for n in [1usize, 2, 9, 100, 5000] {
            let mut starts: Vec<u32> = (0..n).map(|_| next() as u32).collect();
            starts.push(0);
            starts.sort();
            starts.dedup();
            let values: Vec<u32> = (0..starts.len() as u32).collect();
            let map = IntervalMap::new(starts.clone(), values.clone());
            for _ in 0..10_000 {
                let k = next() as u32;
                assert_eq!(map.get(k), naive(&starts, &values, k));
            }
            for (i, s) in starts.iter().enumerate() {
                assert_eq!(map.get(*s), values[i]);
                assert_eq!(
                    map.get(s.saturating_sub(1)),
                    naive(&starts, &values, s.saturating_sub(1))
                );
            }
            assert_eq!(map.get(u32::MAX), *values.last().unwrap());
        }
    }

    #[test]
    fn wide_keys_work_at_the_extremes() {
        let starts = vec![0u128, 5, 1 << 100, u128::MAX - 1, u128::MAX]
            .into_iter()
            .chain((0..20).map(|i| (1u128 << 64) + i * 1000))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>();
        let values: Vec<u32> = (0..starts.len() as u32).collect();
        let map = IntervalMap::new(starts.clone(), values.clone());
        for (i, s) in starts.iter().enumerate() {
            assert_eq!(map.get(*s), values[i], "at {s}");
        }
        assert_eq!(map.get(4), 0);
        assert_eq!(map.get(u128::MAX - 2), values[values.len() - 3]);
    }
}
