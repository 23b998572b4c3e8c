//! Entries gathered in any order and read back in key-byte order: how a key group's entries reach
//! a state file (sorted, so the same state always writes the same bytes) and how a restore's rows
//! reach a store's bulk loader (which takes keys only in ascending order).

/// Keys and values back to back in one buffer, so gathering allocates nothing per entry.
#[derive(Default)]
pub(crate) struct SortedEntries {
    bytes: Vec<u8>,
    /// `(first 8 key bytes as a big-endian number, key start, value start, value end)`: the
    /// prefix orders most entries without comparing byte slices.
    spans: Vec<(u64, usize, usize, usize)>,
}

impl SortedEntries {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    /// Appends one entry, its key and value written by the two functions.
    pub(crate) fn push<E>(
        &mut self,
        key: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
        value: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let key_start = self.bytes.len();
        key(&mut self.bytes)?;
        let value_start = self.bytes.len();
        value(&mut self.bytes)?;
        let mut prefix = [0u8; 8];
        let key_bytes = &self.bytes[key_start..value_start];
        let n = key_bytes.len().min(8);
        prefix[..n].copy_from_slice(&key_bytes[..n]);
        self.spans.push((u64::from_be_bytes(prefix), key_start, value_start, self.bytes.len()));
        Ok(())
    }

    /// Appends an entry whose key is `key_parts` one after the other.
    pub(crate) fn push_bytes(&mut self, key_parts: &[&[u8]], value: &[u8]) {
        let copy = |b: &mut Vec<u8>, parts: &[&[u8]]| -> Result<(), std::convert::Infallible> {
            parts.iter().for_each(|p| b.extend_from_slice(p));
            Ok(())
        };
        let Ok(()) = self.push(|b| copy(b, key_parts), |b| copy(b, &[value]));
    }

    /// The entries in key-byte order (sorted here unless they came in order).
    pub(crate) fn sorted(&mut self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        let bytes = &self.bytes;
        // Same order as comparing the key bytes: a zero-padded prefix sorts like the bytes it holds.
        let order = |a: &(u64, usize, usize, usize), b: &(u64, usize, usize, usize)| {
            a.0.cmp(&b.0).then_with(|| bytes[a.1..a.2].cmp(&bytes[b.1..b.2]))
        };
        if !self.spans.is_sorted_by(|a, b| order(a, b).is_le()) {
            self.spans.sort_unstable_by(order);
        }
        self.spans.iter().map(|&(_, k, v, e)| (&bytes[k..v], &bytes[v..e]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_in_key_byte_order_with_their_values() {
        let mut entries = SortedEntries::default();
        // Keys sharing an 8-byte prefix, a key that is a prefix of another, and an empty key.
        for (key, value) in [("abcdefgh-2", "x"), ("b", "y"), ("abcdefgh-1", "z"), ("abcdefgh", "w"), ("", "e")] {
            entries.push_bytes(&[key.as_bytes()], value.as_bytes());
        }
        let got: Vec<(&[u8], &[u8])> = entries.sorted().collect();
        let want: Vec<(&[u8], &[u8])> =
            [("", "e"), ("abcdefgh", "w"), ("abcdefgh-1", "z"), ("abcdefgh-2", "x"), ("b", "y")]
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .collect();
        assert_eq!(got, want);
        entries.clear();
        entries.push_bytes(&[b"k", b"2"], b"v");
        assert_eq!(entries.sorted().collect::<Vec<_>>(), vec![(&b"k2"[..], &b"v"[..])], "key parts joined");
    }
}
