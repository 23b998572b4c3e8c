//! Entries gathered in any order and read back in key-byte order: how a key group's entries reach
//! a state file (sorted, so the same state always writes the same bytes) and how a restore's rows
//! reach a store's bulk loader (which takes keys only in ascending order).
//!
//! Entries are kept framed as a block payload frames them (`u32 key length | key | u32 value
//! length | value`, big-endian), so writing a sorted key group is one copy per entry, and each is
//! found by a 16-byte span: sorting moves half the bytes a span of three offsets would. Entries
//! gathered after [`SortedEntries::clear_tagged`] carry a tag of the caller's (`u32`, after the
//! entry), given back in sorted order: a heap snapshot tags entries with their buckets to record
//! the key order for the next snapshot.

/// Keys and values back to back in one buffer, so gathering allocates nothing per entry.
#[derive(Default)]
pub(crate) struct SortedEntries {
    bytes: Vec<u8>,
    spans: Vec<Span>,
    /// Whether each entry is followed by its tag (untagged entries gather and copy as fast as
    /// before tags existed: 4 bytes more per entry cost about 4 % of encoding).
    tagged: bool,
    /// Entries a snapshot wrote from a recorded key order (`written`, when they are to be merged
    /// with others; else straight into the payload) and where each starts (for [`keys_ascend`]):
    /// kept with the buffers an encoder reuses between key groups.
    written: Vec<u8>,
    written_starts: Vec<u32>,
}

/// Where one framed entry is, and the first 8 bytes of its key as a big-endian number (zero
/// padded), which orders most entries without comparing byte slices. The prefix is read when the
/// entries are sorted, not when each is pushed: read back right after the entry's bytes were
/// written, 8 bytes spanning several of those stores, it waited for them (a stall the processor
/// cannot forward around, half of pushing an entry, measured with `perf`).
#[derive(Clone, Copy)]
struct Span {
    prefix: u64,
    start: u32,
    len: u32,
}

impl Span {
    /// The framed entry's bytes within the buffer (`start + len` fits: see `push`).
    fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// The entries of one state in one key group reached 4 GiB, more than a block of a state file
/// can frame (its lengths are 32-bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "its entries in one key group exceed 4 GiB, the most a state file's block can hold; {}",
            crate::format::BLOCK_LIMIT_WAY_OUT
        )
    }
}

impl From<TooLarge> for String {
    fn from(e: TooLarge) -> String {
        e.to_string()
    }
}

impl SortedEntries {
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Room for entries written from a recorded order, and for their starts (for [`keys_ascend`]).
    pub(crate) fn written(&mut self) -> (&mut Vec<u8>, &mut Vec<u32>) {
        (&mut self.written, &mut self.written_starts)
    }

    /// Empties the entries; those pushed next carry no tag.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.tagged = false;
    }

    /// Empties the entries; those pushed next carry the tags given to [`SortedEntries::push`].
    pub(crate) fn clear_tagged(&mut self) {
        self.clear();
        self.tagged = true;
    }

    /// Appends one entry, its key and value written by the two functions; `tag` is kept if the
    /// entries are tagged. Inlined into each of a snapshot's loops (a call per entry, where the
    /// compiler chose one for two call sites, cost about a tenth of a savepoint).
    #[inline(always)]
    pub(crate) fn push<E: From<TooLarge>>(
        &mut self,
        tag: u32,
        key: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
        value: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.bytes.len();
        framed(&mut self.bytes, key)?;
        framed(&mut self.bytes, value)?;
        let end = u32::try_from(self.bytes.len()).map_err(|_| TooLarge)?;
        if self.tagged {
            // After the entry, where reading it back finds it in the cache lines the entry's
            // copy loaded (before the entry, it waited on a line of its own for some entries).
            self.bytes.extend_from_slice(&tag.to_ne_bytes());
        }
        // `start` < `end`, which fits.
        self.spans.push(Span { prefix: 0, start: start as u32, len: end - start as u32 });
        Ok(())
    }

    /// Appends an entry whose key is `key_parts` one after the other.
    pub(crate) fn push_bytes(&mut self, key_parts: &[&[u8]], value: &[u8]) -> Result<(), TooLarge> {
        let copy = |b: &mut Vec<u8>, parts: &[&[u8]]| -> Result<(), TooLarge> {
            parts.iter().for_each(|p| b.extend_from_slice(p));
            Ok(())
        };
        self.push(0, |b| copy(b, key_parts), |b| copy(b, &[value]))
    }

    /// Sorts the entries by key bytes (unless they came in order): by prefix with a radix sort,
    /// then each run of equal prefixes by the rest of its keys.
    fn sort(&mut self) {
        self.read_prefixes();
        let bytes = &self.bytes;
        let spans = &mut self.spans;
        // Same order as comparing the key bytes: a zero-padded prefix sorts like the bytes it holds.
        let order = |a: &Span, b: &Span| a.prefix.cmp(&b.prefix).then_with(|| key_of(bytes, a).cmp(key_of(bytes, b)));
        if spans.is_sorted_by(|a, b| order(a, b).is_le()) {
            return;
        }
        radsort::sort_by_key(spans, |s| s.prefix);
        let mut rest = &mut spans[..];
        while let Some(first) = rest.first() {
            let run = rest.iter().position(|s| s.prefix != first.prefix).unwrap_or(rest.len());
            let (same, after) = rest.split_at_mut(run);
            if same.len() > 1 {
                same.sort_unstable_by(|a, b| key_of(bytes, a).cmp(key_of(bytes, b)));
            }
            rest = after;
        }
    }

    /// Sets each span's prefix from its key, 8 bytes read at once and the bytes past the key
    /// masked off (the buffer is padded for the read, so every key has 8 bytes to read).
    fn read_prefixes(&mut self) {
        let end = self.bytes.len();
        self.bytes.resize(end + 8, 0);
        for span in &mut self.spans {
            let key_start = span.start as usize + 4;
            let len = u32::from_be_bytes(self.bytes[span.start as usize..key_start].try_into().expect("4 bytes"));
            span.prefix = key_prefix(&self.bytes[key_start..key_start + 8], len as usize);
        }
        self.bytes.truncate(end);
    }

    /// Appends the entries to `out` in key-byte order, each framed as a block payload frames it,
    /// and gives `tag` each entry's tag in the same order (if they are tagged).
    pub(crate) fn append_sorted(&mut self, out: &mut Vec<u8>, mut tag: impl FnMut(u32)) {
        self.sort();
        out.reserve(self.bytes.len());
        // Most entries are short. Copying a fixed-size window and cutting `out` back to the entry
        // lets the compiler inline the copy, where a copy of any length calls `memcpy` per entry
        // (a fifth of the encoding time). The padding keeps every window within `bytes`.
        let end = self.bytes.len();
        self.bytes.resize(end + COPY_WINDOW, 0);
        for span in &self.spans {
            let entry = span.range();
            if entry.len() <= COPY_WINDOW {
                let at = out.len();
                let window: &[u8; COPY_WINDOW] = self.bytes[entry.start..entry.start + COPY_WINDOW]
                    .try_into()
                    .expect("a window within the padded buffer");
                out.extend_from_slice(window);
                out.truncate(at + entry.len());
            } else {
                out.extend_from_slice(&self.bytes[entry.clone()]);
            }
            if self.tagged {
                tag(u32::from_ne_bytes(
                    self.bytes[entry.end..entry.end + 4].try_into().expect("a tag after each entry"),
                ));
            }
        }
        self.bytes.truncate(end);
    }

    /// The entries in key-byte order, as (key, value).
    pub(crate) fn sorted(&mut self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        self.sort();
        let bytes = &self.bytes;
        self.spans.iter().map(|s| {
            let (key, rest) = unframe(&bytes[s.range()]);
            (key, unframe(rest).0)
        })
    }
}

/// The first 8 bytes of a key of `len` bytes as a big-endian number, zero padded, from the 8
/// bytes at its start (`word`, which may run past the key): ordered as the keys' bytes are,
/// except between keys that share their first 8 bytes.
fn key_prefix(word: &[u8], len: usize) -> u64 {
    let word = u64::from_be_bytes(word.try_into().expect("8 bytes"));
    // Keep the key's first `len` bytes, at most 8 (none of an empty key).
    if len >= 8 {
        word
    } else {
        word & !(u64::MAX >> (8 * len))
    }
}

/// Whether the keys of `framed` (entries as a block payload frames them, the `i`-th starting at
/// `starts[i]`) each have bytes above the key's before them: the check that a key group written
/// in a recorded order is sorted. Run over the written entries rather than key by key as they are
/// written, so that reading a key does not wait for the stores that wrote it; and from the
/// entries' starts, which the writer knows without reading anything, rather than by following
/// each entry's length to the next, a chain of loads that took as long as writing the entries.
pub(crate) fn keys_ascend(framed: &[u8], starts: &[u32]) -> bool {
    let key_at = |start: u32| -> Option<(u64, &[u8])> {
        let start = start as usize;
        let (key, _) = unframe(framed.get(start..)?);
        let key_start = start + 4;
        let prefix = match framed.get(key_start..key_start + 8) {
            Some(word) => key_prefix(word, key.len()),
            None => {
                let mut word = [0; 8];
                let n = key.len().min(8);
                word[..n].copy_from_slice(&key[..n]);
                key_prefix(&word, n)
            }
        };
        Some((prefix, key))
    };
    let mut previous: Option<(u64, &[u8])> = None;
    for &start in starts {
        let Some(key) = key_at(start) else { return false };
        if previous.is_some_and(|p| p >= key) {
            return false;
        }
        previous = Some(key);
    }
    true
}

/// Where each entry of `framed` (entries as a block payload frames them, fewer than 4 GiB of
/// them) starts, found by following the entries' lengths.
pub(crate) fn entry_starts(framed: &[u8]) -> Vec<u32> {
    walk_framed(framed).map(|(start, _, _)| start as u32).collect()
}

/// The `(key, value)` entries of `framed` (entries as a block payload frames them).
pub(crate) fn framed_entries(framed: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    walk_framed(framed).map(|(_, key, value)| (key, value))
}

/// Each entry of `framed` as (where it starts, key, value).
fn walk_framed(framed: &[u8]) -> impl Iterator<Item = (usize, &[u8], &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at;
        let (key, rest) = unframe(framed.get(start..).filter(|rest| !rest.is_empty())?);
        let (value, _) = unframe(rest);
        at = start + 8 + key.len() + value.len();
        Some((start, key, value))
    })
}

/// Which of the two runs [`merge_framed`] took an entry from, and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merged {
    Many(usize),
    Few(usize),
}

/// Appends to `out` the entries of two runs of framed entries (`many`, `few`, each with its
/// entries' starts, each in key order), in key order; `starts` gets where each appended entry
/// starts (from the end of `out` as it was), and `from` where each came from. Made for a few
/// entries merged into many: each of `few` finds its place by a binary search, and the entries
/// of `many` between two of them are copied at once.
pub(crate) fn merge_framed(
    many: (&[u8], &[u32]),
    few: (&[u8], &[u32]),
    out: &mut Vec<u8>,
    starts: &mut Vec<u32>,
    mut from: impl FnMut(Merged),
) -> Result<(), TooLarge> {
    let ((many, many_starts), (few, few_starts)) = (many, few);
    let end_of = |run: &[u8], run_starts: &[u32], i: usize| run_starts.get(i).map_or(run.len(), |&s| s as usize);
    let base = out.len();
    let mut copy = |run: &[u8], run_starts: &[u32], range: std::ops::Range<usize>, out: &mut Vec<u8>| {
        let (first, end) = (end_of(run, run_starts, range.start), end_of(run, run_starts, range.end));
        let shift = (out.len() - base) as i64 - first as i64;
        for &s in &run_starts[range] {
            starts.push(u32::try_from(s as i64 + shift).map_err(|_| TooLarge)?);
        }
        out.extend_from_slice(&run[first..end]);
        Ok::<(), TooLarge>(())
    };
    let mut next = 0;
    for (j, &start) in few_starts.iter().enumerate() {
        let k = key_at(few, start);
        let place = next + many_starts[next..].partition_point(|&s| key_at(many, s) < k);
        copy(many, many_starts, next..place, out)?;
        (next..place).for_each(|i| from(Merged::Many(i)));
        copy(few, few_starts, j..j + 1, out)?;
        from(Merged::Few(j));
        next = place;
    }
    copy(many, many_starts, next..many_starts.len(), out)?;
    (next..many_starts.len()).for_each(|i| from(Merged::Many(i)));
    Ok(())
}

/// Bytes copied per entry at once by [`SortedEntries::append_sorted`].
const COPY_WINDOW: usize = 32;

/// Appends `u32 length | what write appends`; returns where it ends.
#[inline(always)]
pub(crate) fn framed<E: From<TooLarge>>(
    bytes: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<usize, E> {
    let at = bytes.len();
    bytes.extend_from_slice(&[0; 4]);
    write(bytes)?;
    let len = u32::try_from(bytes.len() - at - 4).map_err(|_| TooLarge)?;
    bytes[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(bytes.len())
}

/// The first framed field of `framed` and what follows it (a span always holds whole fields).
fn unframe(framed: &[u8]) -> (&[u8], &[u8]) {
    let (len, rest) = framed.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    rest.split_at(len)
}

fn key_of<'b>(bytes: &'b [u8], span: &Span) -> &'b [u8] {
    key_at(bytes, span.start)
}

/// The key of the framed entry at `start`.
fn key_at(bytes: &[u8], start: u32) -> &[u8] {
    unframe(&bytes[start as usize..]).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::Just;

    #[test]
    fn entries_come_back_in_key_byte_order_with_their_values() {
        let mut entries = SortedEntries::default();
        // Keys sharing an 8-byte prefix, a key that is a prefix of another, and an empty key.
        for (key, value) in [("abcdefgh-2", "x"), ("b", "y"), ("abcdefgh-1", "z"), ("abcdefgh", "w"), ("", "e")] {
            entries.push_bytes(&[key.as_bytes()], value.as_bytes()).unwrap();
        }
        let got: Vec<(&[u8], &[u8])> = entries.sorted().collect();
        let want: Vec<(&[u8], &[u8])> =
            [("", "e"), ("abcdefgh", "w"), ("abcdefgh-1", "z"), ("abcdefgh-2", "x"), ("b", "y")]
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .collect();
        assert_eq!(got, want);
        let mut framed = vec![7];
        entries.append_sorted(&mut framed, |_| ());
        let want_framed = [vec![7], framed_as_a_block(want.iter().copied())].concat();
        assert_eq!(framed, want_framed, "framed as a block payload frames entries");
        // Entries longer than the copy window.
        let long = [b'x'; 100];
        entries.clear();
        entries.push_bytes(&[&long], &long).unwrap();
        entries.push_bytes(&[b"a"], &long).unwrap();
        let mut framed = Vec::new();
        entries.append_sorted(&mut framed, |_| ());
        let want_long = framed_as_a_block([(&b"a"[..], &long[..]), (&long[..], &long[..])]);
        assert_eq!(framed, want_long, "entries longer than the copy window");
        entries.clear();
        entries.push_bytes(&[b"k", b"2"], b"v").unwrap();
        assert_eq!(entries.sorted().collect::<Vec<_>>(), vec![(&b"k2"[..], &b"v"[..])], "key parts joined");
    }

    /// Entries framed as a block payload frames them.
    fn framed_as_a_block<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
        let mut framed = Vec::new();
        for (k, v) in entries {
            for field in [k, v] {
                framed.extend_from_slice(&(field.len() as u32).to_be_bytes());
                framed.extend_from_slice(field);
            }
        }
        framed
    }

    proptest::proptest! {
        /// Two runs in key order merge into the one run sorting all their entries gives, each
        /// entry's start and origin reported.
        #[test]
        fn runs_merge_as_sorting_them_together_would(
            entries in proptest::collection::btree_map(proptest::collection::vec(0u8..4, 0..6), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..60),
            few_of in proptest::collection::vec(proptest::prelude::any::<bool>(), 60),
            prefix in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3),
        ) {
            let all: Vec<(&[u8], &[u8])> = entries.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            let (few, many): (Vec<usize>, Vec<usize>) = (0..all.len()).partition(|&i| few_of[i]);
            let run = |part: &[usize]| framed_as_a_block(part.iter().map(|&i| all[i]));
            let (many_run, few_run) = (run(&many), run(&few));
            let mut out = prefix.clone();
            let (mut starts, mut origins) = (Vec::new(), Vec::new());
            merge_framed(
                (&many_run, &entry_starts(&many_run)),
                (&few_run, &entry_starts(&few_run)),
                &mut out,
                &mut starts,
                |m| origins.push(match m { Merged::Many(i) => many[i], Merged::Few(j) => few[j] }),
            ).unwrap();
            proptest::prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
            proptest::prop_assert_eq!(&out[prefix.len()..], &framed_as_a_block(all.iter().copied())[..]);
            proptest::prop_assert_eq!(starts, entry_starts(&out[prefix.len()..]));
            proptest::prop_assert_eq!(origins, (0..all.len()).collect::<Vec<_>>());
        }
    }

    proptest::proptest! {
        /// Whatever the keys (short, long, sharing 8-byte prefixes, prefixes of each other, zero
        /// bytes), the entries come back in the order of their key bytes, framed or not, and each
        /// with its own value.
        #[test]
        fn entries_come_back_as_a_byte_order_sort_would_give_them(
            keys in proptest::collection::vec(
                (proptest::collection::vec(proptest::prop_oneof![Just(0u8), Just(b'a'), Just(0xff), proptest::num::u8::ANY], 0..12), 0..3usize),
                0..200
            )
        ) {
            let mut entries = SortedEntries::default();
            entries.clear_tagged();
            let mut want: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for (i, (tail, shared)) in keys.into_iter().enumerate() {
                // Some keys start with a common 8-byte head, so their prefixes tie.
                let key: Vec<u8> = if shared > 0 { [&b"abcdefgh"[..], &tail].concat() } else { tail };
                let value = (i as u32).to_be_bytes().repeat(1 + i % 10);
                let copy = |from: &[u8]| {
                    let from = from.to_vec();
                    move |b: &mut Vec<u8>| {
                        b.extend_from_slice(&from);
                        Ok::<(), TooLarge>(())
                    }
                };
                entries.push(i as u32, copy(&key), copy(&value)).unwrap();
                want.push((key, value));
            }
            let pushed = want.clone();
            want.sort();
            let got: Vec<(Vec<u8>, Vec<u8>)> = entries.sorted().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            // Equal keys (which a state never has) may come in either order; compare keys, then values per key.
            proptest::prop_assert_eq!(got.iter().map(|e| &e.0).collect::<Vec<_>>(), want.iter().map(|e| &e.0).collect::<Vec<_>>());
            let mut got_sorted = got.clone();
            got_sorted.sort();
            proptest::prop_assert_eq!(&got_sorted, &want);
            let mut framed = Vec::new();
            let mut tags = Vec::new();
            entries.append_sorted(&mut framed, |t| tags.push(t as usize));
            let framed_got = framed_as_a_block(got.iter().map(|(k, v)| (&k[..], &v[..])));
            proptest::prop_assert_eq!(&framed, &framed_got);
            // Each tag comes back with its own entry.
            let tagged: Vec<&(Vec<u8>, Vec<u8>)> = tags.iter().map(|&t| &pushed[t]).collect();
            proptest::prop_assert_eq!(tagged, got.iter().collect::<Vec<_>>());
            let distinct = want.windows(2).all(|w| w[0].0 != w[1].0);
            proptest::prop_assert_eq!(keys_ascend(&framed, &entry_starts(&framed)), distinct, "sorted keys ascend unless two are equal");
            if got.len() > 1 {
                let mut swapped = got.clone();
                swapped.swap(0, 1);
                let swapped = framed_as_a_block(swapped.iter().map(|(k, v)| (&k[..], &v[..])));
                proptest::prop_assert!(!keys_ascend(&swapped, &entry_starts(&swapped)), "the first two keys swapped");
            }
        }
    }
}
