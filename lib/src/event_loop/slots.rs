//! A typed generational slot map: the loop's table of connections (keyed
//! by [`ConnId`]) and of sessions (keyed by [`SessionKey`]).
//!
//! Each slot counts how often it was emptied; a key carries the count its
//! entry was inserted under, so a key kept after its entry was removed
//! (a session's old [`ConnId`], a completion or readiness report that
//! arrives late) finds nothing, even when a new entry took the slot. No
//! caller compares generations itself.
//!
//! Slots stay below 2^24 and generations below 2^32: a key packs into the
//! readiness token and the io_uring user data next to other bits.

use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

use crate::protocol::{ConnId, UdpId};

/// Slots per table: keys pack into 24 bits of slot.
pub(crate) const MAX_SLOTS: usize = 1 << 24;

/// A key of a [`Slots`] table.
pub(crate) trait Key: Copy + Eq {
    fn from_parts(slot: u32, generation: u32) -> Self;
    fn slot(self) -> u32;
    fn generation(self) -> u32;
}

impl Key for ConnId {
    fn from_parts(slot: u32, generation: u32) -> Self {
        ConnId { slot, generation }
    }
    fn slot(self) -> u32 {
        self.slot
    }
    fn generation(self) -> u32 {
        self.generation
    }
}

impl Key for UdpId {
    fn from_parts(slot: u32, generation: u32) -> Self {
        UdpId { slot, generation }
    }
    fn slot(self) -> u32 {
        self.slot
    }
    fn generation(self) -> u32 {
        self.generation
    }
}

struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

/// Entries of `T` under keys `K`.
pub(crate) struct Slots<K, T> {
    entries: Vec<Entry<T>>,
    /// Empty slots, reused last in, first out.
    free: Vec<u32>,
    len: usize,
    key: PhantomData<fn() -> K>,
}

impl<K: Key, T> Default for Slots<K, T> {
    fn default() -> Self {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
            key: PhantomData,
        }
    }
}

impl<K: Key, T> Slots<K, T> {
    /// The key the next [`Slots::insert`] returns (None: the table is
    /// full), so it can be registered elsewhere first.
    pub fn next_key(&self) -> Option<K> {
        match self.free.last() {
            Some(&slot) => Some(K::from_parts(slot, self.entries[slot as usize].generation)),
            None if self.entries.len() < MAX_SLOTS => {
                Some(K::from_parts(self.entries.len() as u32, 0))
            }
            None => None,
        }
    }

    /// Store `value`; None when the table is full ([`MAX_SLOTS`]).
    pub fn insert(&mut self, value: T) -> Option<K> {
        let key = self.next_key()?;
        match self.free.pop() {
            Some(slot) => self.entries[slot as usize].value = Some(value),
            None => self.entries.push(Entry {
                generation: 0,
                value: Some(value),
            }),
        }
        self.len += 1;
        Some(key)
    }

    #[inline]
    fn entry(&self, key: K) -> Option<&Entry<T>> {
        self.entries
            .get(key.slot() as usize)
            .filter(|e| e.generation == key.generation())
    }

    #[inline]
    pub fn get(&self, key: K) -> Option<&T> {
        self.entry(key).and_then(|e| e.value.as_ref())
    }

    #[inline]
    pub fn get_mut(&mut self, key: K) -> Option<&mut T> {
        self.entries
            .get_mut(key.slot() as usize)
            .filter(|e| e.generation == key.generation())
            .and_then(|e| e.value.as_mut())
    }

    #[inline]
    pub fn contains(&self, key: K) -> bool {
        self.get(key).is_some()
    }

    /// Take the entry out; its key (and every copy of it) is stale from
    /// now on.
    pub fn remove(&mut self, key: K) -> Option<T> {
        let slot = key.slot();
        let entry = self
            .entries
            .get_mut(slot as usize)
            .filter(|e| e.generation == key.generation())?;
        let value = entry.value.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }

    /// The keys of every live entry.
    pub fn keys(&self) -> Vec<K> {
        self.iter().map(|(k, _)| k).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (K, &T)> {
        self.entries.iter().enumerate().filter_map(|(slot, e)| {
            e.value
                .as_ref()
                .map(|v| (K::from_parts(slot as u32, e.generation), v))
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `slots[key]` for a key the caller knows is live: the entry it is
/// working on, which nothing it called since could remove (callbacks only
/// ask for closes; the loop carries them out when they return). A stale
/// key panics here rather than reach another entry.
impl<K: Key, T> Index<K> for Slots<K, T> {
    type Output = T;
    #[inline]
    fn index(&self, key: K) -> &T {
        match self.get(key) {
            Some(v) => v,
            None => stale(key.slot()),
        }
    }
}

impl<K: Key, T> IndexMut<K> for Slots<K, T> {
    #[inline]
    fn index_mut(&mut self, key: K) -> &mut T {
        match self.get_mut(key) {
            Some(v) => v,
            None => stale(key.slot()),
        }
    }
}

#[cold]
#[inline(never)]
fn stale(slot: u32) -> ! {
    panic!("stale key in slot {slot}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_entrys_key_never_reaches_the_entry_that_takes_its_slot() {
        let mut s: Slots<ConnId, &str> = Slots::default();
        let a = s.insert("a").unwrap();
        s.remove(a);
        let b = s.insert("b").unwrap();
        assert_eq!(a.slot, b.slot, "the slot is reused");
        assert_ne!(a, b);
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&"b"));
    }

    #[test]
    fn next_key_is_what_insert_returns() {
        let mut s: Slots<ConnId, u8> = Slots::default();
        for i in 0..5 {
            let next = s.next_key().unwrap();
            assert_eq!(s.insert(i), Some(next));
        }
        let k = s.keys()[2];
        s.remove(k);
        let next = s.next_key().unwrap();
        assert_eq!(next.slot, k.slot);
        assert_eq!(s.insert(9), Some(next));
        assert_eq!(s.len(), 5);
    }

    #[test]
    #[should_panic(expected = "stale key")]
    fn indexing_with_a_stale_key_panics_instead_of_aliasing() {
        let mut s: Slots<ConnId, u8> = Slots::default();
        let a = s.insert(1).unwrap();
        s.remove(a);
        s.insert(2).unwrap();
        let _ = s[a];
    }
}
