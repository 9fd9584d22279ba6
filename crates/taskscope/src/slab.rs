//! A minimal slab with stable keys, for a node's children and listeners.
//!
//! Keys stay valid until their entry is removed, so a child or a waiter can remember where it
//! sits and leave in O(1) without moving anyone else.

use std::mem;

pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    /// Head of the free list; `entries.len()` when the list is empty. 32 bits, like `len`, to
    /// keep every scope node small: no table holds 2^32 entries.
    next_free: u32,
    len: u32,
}

enum Entry<T> {
    Occupied(T),
    Vacant { next_free: u32 },
}

/// A key as stored in 32 bits (the free list, a node's slot in its parent).
pub(crate) fn index(key: usize) -> u32 {
    u32::try_from(key).expect("a slab holds fewer than 2^32 entries")
}

/// Above this capacity an emptied slab gives its memory back instead of keeping it for reuse.
const KEEP_CAPACITY: usize = 16;

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab::new()
    }
}

impl<T> Slab<T> {
    pub(crate) const fn new() -> Self {
        Slab {
            entries: Vec::new(),
            next_free: 0,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    pub(crate) fn insert(&mut self, value: T) -> usize {
        let key = self.next_free as usize;
        match self.entries.get_mut(key) {
            None => {
                self.entries.push(Entry::Occupied(value));
                self.next_free = index(self.entries.len());
            }
            Some(entry) => {
                if let Entry::Vacant { next_free } = mem::replace(entry, Entry::Occupied(value)) {
                    self.next_free = next_free;
                }
            }
        }
        self.len += 1;
        key
    }

    pub(crate) fn get(&self, key: usize) -> Option<&T> {
        match self.entries.get(key)? {
            Entry::Occupied(value) => Some(value),
            Entry::Vacant { .. } => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        match self.entries.get_mut(key) {
            Some(Entry::Occupied(value)) => Some(value),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, key: usize) -> Option<T> {
        let entry = self.entries.get_mut(key)?;
        if let Entry::Vacant { .. } = entry {
            return None;
        }
        let vacant = Entry::Vacant {
            next_free: self.next_free,
        };
        let Entry::Occupied(value) = mem::replace(entry, vacant) else {
            return None;
        };
        self.next_free = index(key);
        self.len -= 1;
        if self.len == 0 {
            // Every key is free again: forget the free list, and give large buffers back so a
            // parent that once had many children holds nothing for them.
            self.entries.clear();
            self.next_free = 0;
            if self.entries.capacity() > KEEP_CAPACITY {
                self.entries = Vec::new();
            }
        }
        Some(value)
    }

    /// Whether at most a quarter of a large slab is occupied, so that [`compact`](Slab::compact)
    /// would give memory back.
    pub(crate) fn is_sparse(&self) -> bool {
        self.entries.len() > KEEP_CAPACITY && self.len() * 4 < self.entries.len()
    }

    /// Moves values from the end into the lowest vacant keys, then gives back the memory of the
    /// trailing vacant entries. `relocate(value, new_key)` is asked first, so the owner of the
    /// value can learn its new key; a value it refuses stays where it is.
    pub(crate) fn compact(&mut self, mut relocate: impl FnMut(&T, usize) -> bool) {
        let mut hole = 0;
        let mut tail = self.entries.len();
        while hole < tail {
            if let Some(Entry::Occupied(_)) = self.entries.get(hole) {
                hole += 1;
                continue;
            }
            tail -= 1;
            if tail <= hole {
                break;
            }
            if let Entry::Occupied(value) = &self.entries[tail]
                && relocate(value, hole)
            {
                self.entries.swap(hole, tail);
                hole += 1;
            }
        }
        while let Some(Entry::Vacant { .. }) = self.entries.last() {
            self.entries.pop();
        }
        // Rechain the free list through the vacant entries that remain.
        self.next_free = index(self.entries.len());
        for key in (0..self.entries.len()).rev() {
            if let Entry::Vacant { next_free } = &mut self.entries[key] {
                *next_free = self.next_free;
                self.next_free = index(key);
            }
        }
        self.entries.shrink_to(KEEP_CAPACITY);
    }

    /// Every value, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|entry| match entry {
            Entry::Occupied(value) => Some(value),
            Entry::Vacant { .. } => None,
        })
    }

    /// Every value, mutably, in key order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().filter_map(|entry| match entry {
            Entry::Occupied(value) => Some(value),
            Entry::Vacant { .. } => None,
        })
    }

    /// Takes every value out, leaving the slab empty and without a buffer.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + use<T> {
        self.len = 0;
        self.next_free = 0;
        mem::take(&mut self.entries)
            .into_iter()
            .filter_map(|entry| match entry {
                Entry::Occupied(value) => Some(value),
                Entry::Vacant { .. } => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn keys_are_stable_and_reused() {
        let mut slab = Slab::new();
        let a = slab.insert('a');
        let b = slab.insert('b');
        let c = slab.insert('c');
        assert_eq!(slab.remove(b), Some('b'));
        assert_eq!(slab.remove(b), None);
        assert_eq!(slab.get_mut(a), Some(&mut 'a'));
        assert_eq!(slab.get_mut(c), Some(&mut 'c'));
        assert_eq!(slab.insert('d'), b);
        assert_eq!(slab.len(), 3);
        let mut all: Vec<_> = slab.drain().collect();
        all.sort();
        assert_eq!(all, ['a', 'c', 'd']);
        assert_eq!(slab.len(), 0);
        assert_eq!(slab.remove(a), None);
    }

    #[test]
    fn compaction_moves_values_down_and_releases_memory() {
        let mut slab = Slab::new();
        let keys: Vec<_> = (0..1000).map(|i| slab.insert(i)).collect();
        for &key in &keys[..990] {
            slab.remove(key);
        }
        assert!(slab.is_sparse());
        let mut moved = Vec::new();
        // Refuse to move 995, as a dying child would.
        slab.compact(|&value, to| {
            moved.push((value, to));
            value != 995
        });
        assert!(slab.entries.capacity() < 1000);
        let mut left: Vec<_> = (0..slab.entries.len())
            .filter_map(|k| slab.get_mut(k).copied())
            .collect();
        left.sort();
        assert_eq!(left, (990..1000).collect::<Vec<_>>());
        for (value, to) in moved.into_iter().filter(|&(v, _)| v != 995) {
            assert_eq!(slab.get_mut(to), Some(&mut { value }));
        }
        // Freed keys are reused, and every value can still be removed by its key.
        let new = slab.insert(7);
        assert_eq!(slab.get_mut(new), Some(&mut 7));
        assert_eq!(slab.len(), 11);
    }

    #[test]
    fn emptied_slab_releases_large_buffers() {
        let mut slab = Slab::new();
        let keys: Vec<_> = (0..1000).map(|i| slab.insert(i)).collect();
        for key in keys {
            slab.remove(key);
        }
        assert_eq!(slab.len(), 0);
        assert_eq!(slab.entries.capacity(), 0);
    }
}
