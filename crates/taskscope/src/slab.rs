//! A minimal slab with stable keys, for a node's children and listeners.
//!
//! Keys stay valid until their entry is removed, so a child or a waiter can remember where it
//! sits and leave in O(1) without moving anyone else.

use std::mem;

pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    /// Head of the free list; `entries.len()` when the list is empty.
    next_free: usize,
    len: usize,
}

enum Entry<T> {
    Occupied(T),
    Vacant { next_free: usize },
}

/// Above this capacity an emptied slab gives its memory back instead of keeping it for reuse.
const KEEP_CAPACITY: usize = 16;

impl<T> Slab<T> {
    pub(crate) const fn new() -> Self {
        Slab {
            entries: Vec::new(),
            next_free: 0,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, value: T) -> usize {
        let key = self.next_free;
        match self.entries.get_mut(key) {
            None => {
                self.entries.push(Entry::Occupied(value));
                self.next_free = self.entries.len();
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
        self.next_free = key;
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
