//! The write-back cache's table of rows: compact, because every byte a row costs here is a row
//! fewer that fits the budget, and a keyed state that fits avoids a store read and write per
//! record.
//!
//! A row (its cache key followed by its value) lives in a slot of a slab, inline when it is small
//! (most keyed-state rows: a key group, a key and a count fit in 24 bytes), in an allocation of
//! its own otherwise; the slots form an intrusive least-recently-used list by index, and a hash
//! table of slot indices finds them. A small row costs about 58 bytes, against about 150 in a
//! general LRU map of owned keys and values (three allocations and a boxed node per row), and
//! evicting and loading rows allocates nothing, so a cache that churns does not fragment the heap.
//! The budget counts what the table really holds: spilled rows' allocations rounded up to the
//! allocator's granule, the slots in use, and the hash table's allocation.

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use smallvec::SmallVec;
use std::hash::Hasher;

/// No slot (end of the LRU list).
const NIL: u32 = u32::MAX;

/// Allocations are rounded up to this many bytes (the granule of common allocators, mimalloc's
/// and glibc's included), plus nothing for a header: an estimate of the cost, on the safe side
/// for small rows.
const GRANULE: usize = 16;

/// Key and value bytes kept in the slot itself.
type RowBytes = SmallVec<[u8; 24]>;

/// What a row's bytes cost beyond its slot.
fn heap_bytes(data: &RowBytes) -> usize {
    if data.spilled() {
        data.capacity().div_ceil(GRANULE) * GRANULE
    } else {
        0
    }
}

/// A slot, and its place in the free list once freed.
const SLOT_BYTES: usize = std::mem::size_of::<Slot>() + std::mem::size_of::<u32>();

/// A hash-table bucket: a slot index and its control byte.
const BUCKET_BYTES: usize = std::mem::size_of::<u32>() + 1;

/// The least a row costs: its slot and its bucket in a table at most seven eighths full.
const MIN_ROW_BYTES: usize = SLOT_BYTES + BUCKET_BYTES * 8 / 7;

/// A row: its key and value bytes, and what the cache knows of it.
pub(super) struct Row {
    /// Key ++ value; empty when its slot is free.
    data: RowBytes,
    /// 0 when its slot is free (keys are never empty).
    key_len: u32,
    /// The row is known not to exist (read as missing, or deleted).
    absent: bool,
    /// Changed since it was last written to the store.
    pub(super) dirty: bool,
}

impl Row {
    pub(super) fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    pub(super) fn value(&self) -> Option<&[u8]> {
        (!self.absent).then(|| &self.data[self.key_len as usize..])
    }
}

/// A cached row and its place in the LRU list.
struct Slot {
    row: Row,
    /// Towards the most recently used row.
    newer: u32,
    /// Towards the least recently used row.
    older: u32,
}

/// Slots in chunks of fixed capacity: growing never copies the slots (a doubling vector of a
/// million slots would hold 75 MB while it moves 50) and touches memory only as slots are used.
#[derive(Default)]
struct Slab {
    chunks: Vec<Vec<Slot>>,
    len: u32,
}

/// Slots per chunk (192 KB).
const CHUNK_BITS: u32 = 12;

impl Slab {
    fn push(&mut self, slot: Slot) -> u32 {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < 1 << CHUNK_BITS => chunk.push(slot),
            _ => {
                let mut chunk = Vec::with_capacity(1 << CHUNK_BITS);
                chunk.push(slot);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
        self.len - 1
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.chunks.iter().flatten().enumerate().map(|(at, slot)| (at as u32, slot))
    }
}

impl std::ops::Index<u32> for Slab {
    type Output = Slot;
    fn index(&self, at: u32) -> &Slot {
        &self.chunks[(at >> CHUNK_BITS) as usize][(at & ((1 << CHUNK_BITS) - 1)) as usize]
    }
}

impl std::ops::IndexMut<u32> for Slab {
    fn index_mut(&mut self, at: u32) -> &mut Slot {
        &mut self.chunks[(at >> CHUNK_BITS) as usize][(at & ((1 << CHUNK_BITS) - 1)) as usize]
    }
}

/// Rows by key, in least-recently-used order.
pub(super) struct RowTable {
    index: HashTable<u32>,
    slots: Slab,
    /// Free slots, reused before the slab grows.
    free: Vec<u32>,
    newest: u32,
    oldest: u32,
    /// Bytes of the allocations of rows too large for their slot.
    row_bytes: usize,
    /// The slot the last lookup found: a read-modify-write of one key looks it up once.
    last: u32,
}

fn hash(key: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(key);
    h.finish()
}

impl RowTable {
    /// A table for a cache of `budget` bytes. Its hash table is allocated once, for as many rows
    /// as the budget could hold: growing it by doubling would hold the old and the new table at
    /// once, and leave freed tables behind in the allocator (measured: 92 -> 113 MB peak for a
    /// 64 MB cache of 10^6 rows).
    pub(super) fn new(budget: usize) -> Self {
        // The most rows the budget can hold, and the one inserted before an eviction.
        let most_rows = budget / MIN_ROW_BYTES + 1;
        RowTable {
            index: HashTable::with_capacity(most_rows),
            slots: Slab::default(),
            free: Vec::new(),
            newest: NIL,
            oldest: NIL,
            row_bytes: 0,
            last: NIL,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// What the table holds in memory: its rows, their slots and the hash table. Freed slots are
    /// reused before the slab grows, so the slab stays within what the most rows at once needed.
    pub(super) fn bytes(&self) -> usize {
        self.row_bytes + self.len() * SLOT_BYTES + self.index.allocation_size()
    }

    /// Whether `key` is cached; unlike [`RowTable::find`], not a use of the row.
    pub(super) fn contains(&self, key: &[u8]) -> bool {
        self.index.find(hash(key), |&i| self.slots[i].row.key() == key).is_some()
    }

    /// The slot of `key`, made the most recently used; `None` when not cached.
    pub(super) fn find(&mut self, key: &[u8]) -> Option<u32> {
        let at = if self.last != NIL && self.slots[self.last].row.key() == key {
            self.last
        } else {
            let slots = &self.slots;
            *self.index.find(hash(key), |&i| slots[i].row.key() == key)?
        };
        self.last = at;
        self.touch(at);
        Some(at)
    }

    pub(super) fn value(&self, at: u32) -> Option<&[u8]> {
        self.slots[at].row.value()
    }

    /// Replaces the value of the row in slot `at`, dirty.
    pub(super) fn set(&mut self, at: u32, value: Option<&[u8]>) {
        let row = &mut self.slots[at].row;
        row.dirty = true;
        row.absent = value.is_none();
        let key_len = row.key_len as usize;
        let value = value.unwrap_or_default();
        if row.data.len() == key_len + value.len() {
            row.data[key_len..].copy_from_slice(value);
            return;
        }
        let before = heap_bytes(&row.data);
        row.data.truncate(key_len);
        row.data.extend_from_slice(value);
        row.data.shrink_to_fit();
        self.row_bytes = self.row_bytes - before + heap_bytes(&row.data);
    }

    /// Adds a row that is not in the table, as the most recently used. Keys are never empty.
    pub(super) fn insert(&mut self, key: &[u8], value: Option<&[u8]>, dirty: bool) {
        debug_assert!(!key.is_empty(), "an empty key marks a free slot");
        self.make_room_in_index();
        let value_bytes = value.unwrap_or_default();
        let mut data = RowBytes::with_capacity(key.len() + value_bytes.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value_bytes);
        self.row_bytes += heap_bytes(&data);
        let row = Row { data, key_len: key.len() as u32, absent: value.is_none(), dirty };
        let slot = Slot { row, newer: NIL, older: NIL };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at] = slot;
                at
            }
            None => self.slots.push(slot),
        };
        let slots = &self.slots;
        self.index.insert_unique(hash(key), at, |&i| hash(slots[i].row.key()));
        self.link_newest(at);
        self.last = at;
    }

    /// Makes room for one more row in the hash table. Erased rows can leave tombstones, which use
    /// up its room like rows do; with none left, hashbrown would double the table even when most of
    /// it is tombstones (measured: a churning 64 MB cache then held over 100 MB), so a full table
    /// is first rebuilt in its own allocation without them, and grows only when rows fill it. The
    /// rebuild is one pass over the rows, once per as many erasures as the table has spare room.
    fn make_room_in_index(&mut self) {
        if self.index.len() < self.index.capacity() {
            return;
        }
        let slots = &self.slots;
        let rehash = |&i: &u32| hash(slots[i].row.key());
        self.index.clear();
        for (at, slot) in slots.iter() {
            if slot.row.key_len > 0 {
                self.index.insert_unique(hash(slot.row.key()), at, rehash);
            }
        }
        if self.index.len() == self.index.capacity() {
            // Rows fill it: only when rows are smaller than the budget expected.
            self.index.reserve(self.index.len().max(16), rehash);
        }
    }

    /// Takes out the least recently used row.
    pub(super) fn pop_oldest(&mut self) -> Option<Row> {
        (self.oldest != NIL).then(|| self.take(self.oldest))
    }

    /// Takes out every row whose key starts with `prefix`.
    pub(super) fn remove_prefix(&mut self, prefix: &[u8]) {
        let doomed: Vec<u32> =
            self.index.iter().copied().filter(|&i| self.slots[i].row.key().starts_with(prefix)).collect();
        for at in doomed {
            self.take(at);
        }
    }

    /// Fills `batch` with up to `most` slots of dirty rows whose key starts with `prefix`, taken
    /// in slot order from slot `from` on, then sorted by key; returns the slot to go on from.
    /// A snapshot of a cache full of changes walks the slab once, in memory order, and holds no
    /// list of every dirty row (four bytes a row: 8 MB, grown by doubling, for a million rows).
    pub(super) fn dirty_batch(&self, prefix: &[u8], from: u32, most: usize, batch: &mut Vec<u32>) -> u32 {
        batch.clear();
        let mut at = from;
        while at < self.slots.len && batch.len() < most {
            let row = &self.slots[at].row;
            if row.dirty && row.key().starts_with(prefix) {
                batch.push(at);
            }
            at += 1;
        }
        batch.sort_unstable_by(|&a, &b| self.slots[a].row.key().cmp(self.slots[b].row.key()));
        at
    }

    /// The key and value of the row in slot `at`.
    pub(super) fn row(&self, at: u32) -> (&[u8], Option<&[u8]>) {
        let row = &self.slots[at].row;
        (row.key(), row.value())
    }

    pub(super) fn mark_clean(&mut self, at: u32) {
        self.slots[at].row.dirty = false;
    }

    /// Puts a taken row back, as the most recently used (a failed write-back keeps its rows).
    pub(super) fn restore(&mut self, row: Row) {
        let value = row.value().map(<[u8]>::to_vec);
        self.insert(row.key(), value.as_deref(), row.dirty);
    }

    fn take(&mut self, at: u32) -> Row {
        self.unlink(at);
        let free = Row { data: RowBytes::new(), key_len: 0, absent: true, dirty: false };
        let row = std::mem::replace(&mut self.slots[at].row, free);
        if let Ok(entry) = self.index.find_entry(hash(row.key()), |&i| i == at) {
            entry.remove();
        }
        self.row_bytes -= heap_bytes(&row.data);
        self.free.push(at);
        if self.last == at {
            self.last = NIL;
        }
        row
    }

    fn touch(&mut self, at: u32) {
        if self.newest != at {
            self.unlink(at);
            self.link_newest(at);
        }
    }

    fn link_newest(&mut self, at: u32) {
        let old_newest = self.newest;
        {
            let slot = &mut self.slots[at];
            slot.newer = NIL;
            slot.older = old_newest;
        }
        match old_newest {
            NIL => self.oldest = at,
            n => self.slots[n].newer = at,
        }
        self.newest = at;
    }

    fn unlink(&mut self, at: u32) {
        let (newer, older) = {
            let slot = &self.slots[at];
            (slot.newer, slot.older)
        };
        match newer {
            NIL => self.newest = older,
            n => self.slots[n].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.slots[o].newer = newer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_oldest_first(t: &mut RowTable) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(row) = t.pop_oldest() {
            out.push(row.key().to_vec());
        }
        out
    }

    #[test]
    fn finds_updates_and_evicts_in_least_recently_used_order() {
        let mut t = RowTable::new(1 << 20);
        t.insert(b"a", Some(b"1"), false);
        t.insert(b"b", None, true);
        t.insert(b"c", Some(b"3"), false);
        let a = t.find(b"a").unwrap();
        assert_eq!(t.value(a), Some(&b"1"[..]));
        t.set(a, Some(b"longer value"));
        let b = t.find(b"b").unwrap();
        assert_eq!(t.value(b), None);
        assert!(t.find(b"x").is_none());
        assert_eq!(t.len(), 3);
        let mut batch = Vec::new();
        assert_eq!(t.dirty_batch(b"", 0, 10, &mut batch), 3);
        let dirty: Vec<&[u8]> = batch.iter().map(|&at| t.row(at).0).collect();
        assert_eq!(dirty, vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(keys_oldest_first(&mut t), vec![b"c".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(t.len(), 0);
        assert_eq!(t.row_bytes, 0);
        assert_eq!(t.bytes(), t.index.allocation_size(), "no rows, an empty table");
    }

    #[test]
    fn small_rows_live_in_their_slot_and_large_ones_are_counted() {
        let mut t = RowTable::new(1 << 20);
        t.insert(b"key", Some(&[7; 21]), true);
        assert_eq!(t.row_bytes, 0, "24 bytes fit the slot");
        let at = t.find(b"key").unwrap();
        t.set(at, Some(&[8; 40]));
        assert_eq!(t.row_bytes, 48, "43 bytes spill into an allocation of 48");
        assert_eq!(t.value(at), Some(&[8u8; 40][..]));
        t.set(at, Some(&[9]));
        assert_eq!(t.row_bytes, 0, "back in the slot");
        assert_eq!(t.value(at), Some(&[9u8][..]));
        t.insert(b"big", Some(&[1; 100]), false);
        let big = t.pop_oldest().unwrap();
        assert_eq!((big.key(), big.value()), (&b"key"[..], Some(&[9u8][..])));
        drop(t.pop_oldest());
        assert_eq!(t.row_bytes, 0);
    }

    #[test]
    fn churn_never_grows_the_hash_table() {
        let mut t = RowTable::new(64 << 10);
        let most = t.index.capacity() * 3 / 4;
        for k in 0..most as u32 {
            t.insert(&k.to_be_bytes(), Some(b"v"), false);
        }
        let allocated = t.index.allocation_size();
        for k in most as u32..200_000u32 {
            t.insert(&k.to_be_bytes(), Some(b"v"), false);
            if t.len() > most {
                t.pop_oldest();
            }
        }
        assert_eq!(t.index.allocation_size(), allocated, "erasures' tombstones were cleared in place");
        assert!(t.find(&199_999u32.to_be_bytes()).is_some());
        assert_eq!(t.len(), most);
    }

    #[test]
    fn freed_slots_are_reused_and_prefix_removal_forgets_rows() {
        let mut t = RowTable::new(1 << 20);
        for k in 0..100u8 {
            t.insert(&[k / 10, k], Some(&[k]), true);
        }
        let used = t.slots.len;
        t.remove_prefix(&[3]);
        assert_eq!(t.len(), 90);
        assert!(t.find(&[3, 35]).is_none());
        for k in 0..10u8 {
            t.insert(&[200, k], None, false);
        }
        assert_eq!(t.slots.len, used, "the ten freed slots were reused");
        let at = t.find(&[4, 45]).unwrap();
        assert_eq!(t.value(at), Some(&[45u8][..]));
        assert_eq!(t.len(), 100);
    }
}
