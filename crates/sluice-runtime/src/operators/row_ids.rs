//! Key rows to dense ids without a copy of each key: the table holds `(hash, id)` and
//! compares a candidate through the caller, who keeps the keys (in `Rows`, or with the
//! id's state). A new key allocates nothing here, and dropping the table frees one
//! buffer instead of one box per key.

use std::hash::BuildHasher;

use datafusion_common::hash_utils::RandomState;
use hashbrown::HashTable;

/// Ids of key rows (see the module).
#[derive(Default)]
pub(crate) struct RowIds {
    table: HashTable<(u64, u32)>,
    hasher: RandomState,
}

impl RowIds {
    /// The hash of a key row's bytes, for the calls below.
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The id of the key hashed to `hash` for which `is(id)` holds.
    pub(crate) fn get(&self, hash: u64, is: impl Fn(u32) -> bool) -> Option<u32> {
        self.table
            .find(hash, |&(h, id)| h == hash && is(id))
            .map(|&(_, id)| id)
    }

    /// Records a new key's id (not there yet).
    pub(crate) fn insert(&mut self, hash: u64, id: u32) {
        self.table.insert_unique(hash, (hash, id), |&(h, _)| h);
    }

    /// Forgets a key's id.
    pub(crate) fn remove(&mut self, hash: u64, id: u32) {
        if let Ok(e) = self.table.find_entry(hash, |&(h, i)| h == hash && i == id) {
            e.remove();
        }
    }

    /// How many keys it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_their_bytes_and_forgotten() {
        let keys: Vec<&[u8]> = vec![b"a", b"bb", b"ccc"];
        let mut ids = RowIds::default();
        for (i, k) in keys.iter().enumerate() {
            let h = ids.hash(k);
            assert_eq!(ids.get(h, |id| keys[id as usize] == *k), None);
            ids.insert(h, i as u32);
        }
        for (i, k) in keys.iter().enumerate() {
            let h = ids.hash(k);
            assert_eq!(ids.get(h, |id| keys[id as usize] == *k), Some(i as u32));
        }
        ids.remove(ids.hash(b"bb"), 1);
        assert_eq!(
            ids.get(ids.hash(b"bb"), |id| keys[id as usize] == b"bb"),
            None
        );
        assert_eq!(ids.len(), 2);
    }
}
