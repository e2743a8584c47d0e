//! The table of a labelled family's children, found by label values without a lock.
//!
//! `with_label_values` on an existing child is the hot path of labelled metrics, so a lookup
//! takes no lock and makes no atomic read-modify-write: it loads the current level, probes its
//! open-addressing slots (each a [`OnceLock`], set once and never cleared) and compares the
//! stored label values with the ones asked for. Insertions are rare and serialised by a mutex;
//! when a level is half full the entries move to a level twice its size, which then becomes the
//! current one. Old levels stay allocated until the table drops (at most as much again as the
//! current level), so a lookup that still holds one reads valid, if possibly stale, entries; a
//! miss on a stale level only sends the caller to the locked path, which looks again.
//!
//! Removing a child marks its entry instead of clearing it: the entry's file-backed series
//! stays in the file anyway (as in Python), and the same values looked up again revive the entry,
//! which continues from the value in the file, as a new child would.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Level `k` has `FIRST_LEVEL << k` slots: the last one more than memory can hold.
const LEVELS: usize = 40;
const FIRST_LEVEL: usize = 8;

/// A child with the label values it was made for.
struct Entry<M> {
    hash: u64,
    /// The label values, each as its length (4 bytes, native order) then its bytes: one
    /// allocation, compared in one pass.
    values: Box<[u8]>,
    child: M,
    /// Removed by `remove_label_values`: a lookup takes the locked path to revive it.
    removed: AtomicBool,
}

impl<M: Clone> Entry<M> {
    fn new(hash: u64, values: &[&str], child: M) -> Entry<M> {
        let mut joined = Vec::with_capacity(values.iter().map(|v| v.len() + 4).sum());
        for v in values {
            joined.extend_from_slice(&(v.len() as u32).to_ne_bytes());
            joined.extend_from_slice(v.as_bytes());
        }
        Entry {
            hash,
            values: joined.into_boxed_slice(),
            child,
            removed: AtomicBool::new(false),
        }
    }

    /// A copy for a bigger level, made under the table's lock.
    fn copy(&self) -> Entry<M> {
        Entry {
            hash: self.hash,
            values: self.values.clone(),
            child: self.child.clone(),
            removed: AtomicBool::new(self.removed.load(Ordering::Relaxed)),
        }
    }
}

impl<M> Entry<M> {
    #[inline]
    fn has_values(&self, values: &[&str]) -> bool {
        let mut rest: &[u8] = &self.values;
        for v in values {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return false;
            };
            let len = u32::from_ne_bytes(*len) as usize;
            if len != v.len() || tail.len() < len {
                return false;
            }
            let (stored, tail) = tail.split_at(len);
            if !same_bytes(stored, v.as_bytes()) {
                return false;
            }
            rest = tail;
        }
        rest.is_empty()
    }
}

struct Level<M> {
    slots: Box<[OnceLock<Entry<M>>]>,
}

impl<M> Level<M> {
    fn new(len: usize) -> Level<M> {
        Level {
            slots: (0..len).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The entry for these values, or the index of the empty slot where it would go.
    #[inline]
    fn probe(&self, hash: u64, values: &[&str]) -> Result<&Entry<M>, usize> {
        let mask = self.slots.len() - 1;
        // The high bits of the hash mix every byte; the low bits of some hashers do not.
        let mut i = (hash >> 40) as usize & mask;
        loop {
            match self.slots[i].get() {
                None => return Err(i),
                Some(e) if e.hash == hash && e.has_values(values) => return Ok(e),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// Puts an entry known to be absent into the first empty slot of its probe sequence.
    fn insert_new(&self, entry: Entry<M>) {
        let mask = self.slots.len() - 1;
        let mut i = (entry.hash >> 40) as usize & mask;
        while self.slots[i].get().is_some() {
            i = (i + 1) & mask;
        }
        let _ = self.slots[i].set(entry);
    }
}

/// `a == b`, with label values of up to 16 bytes (most of them) compared inline in one or two
/// word loads each instead of a call to `memcmp`.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    #[inline(always)]
    fn word(s: &[u8], at: usize) -> u64 {
        u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]))
    }
    #[inline(always)]
    fn half(s: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(s[at..at + 4].try_into().unwrap_or([0; 4]))
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// Children by label values (see the module documentation).
pub(crate) struct Children<M> {
    levels: [OnceLock<Level<M>>; LEVELS],
    current: AtomicUsize,
    /// Serialises insertions and removals; holds the number of entries.
    write: Mutex<usize>,
}

impl<M: Clone> Default for Children<M> {
    fn default() -> Self {
        Children {
            levels: std::array::from_fn(|_| OnceLock::new()),
            current: AtomicUsize::new(0),
            write: Mutex::new(0),
        }
    }
}

impl<M: Clone> Children<M> {
    /// The child for these values, if it exists and is not removed: no lock.
    #[inline]
    pub(crate) fn get(&self, hash: u64, values: &[&str]) -> Option<M> {
        let level = self.levels[self.current.load(Ordering::Acquire)].get()?;
        match level.probe(hash, values) {
            Ok(e) if !e.removed.load(Ordering::Relaxed) => Some(e.child.clone()),
            _ => None,
        }
    }

    /// The child for these values, made by `make` (under the table's lock) if there is none;
    /// a removed child is revived.
    pub(crate) fn get_or_insert_with<E>(
        &self,
        hash: u64,
        values: &[&str],
        make: impl FnOnce() -> Result<M, E>,
    ) -> Result<M, E> {
        let mut len = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load(Ordering::Acquire);
        let level = self.levels[current].get_or_init(|| Level::new(FIRST_LEVEL));
        if let Ok(e) = level.probe(hash, values) {
            e.removed.store(false, Ordering::Relaxed);
            return Ok(e.child.clone());
        }
        let child = make()?;
        let mut level = level;
        if (*len + 1) * 2 > level.slots.len() && current + 1 < LEVELS {
            let bigger = Level::new(level.slots.len() * 2);
            for e in level.slots.iter().filter_map(OnceLock::get) {
                bigger.insert_new(e.copy());
            }
            level = self.levels[current + 1].get_or_init(|| bigger);
            self.current.store(current + 1, Ordering::Release);
        }
        level.insert_new(Entry::new(hash, values, child.clone()));
        *len += 1;
        Ok(child)
    }

    /// Marks the child for these values removed; false if there is none.
    pub(crate) fn remove(&self, hash: u64, values: &[&str]) -> bool {
        let _len = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let Some(level) = self.levels[self.current.load(Ordering::Acquire)].get() else {
            return false;
        };
        match level.probe(hash, values) {
            Ok(e) => !e.removed.swap(true, Ordering::Relaxed),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;

    fn insert(t: &Children<Arc<String>>, hash: u64, values: &[&str]) -> Arc<String> {
        t.get_or_insert_with(hash, values, || {
            Ok::<_, Infallible>(Arc::new(values.join(",")))
        })
        .unwrap_or_else(|never| match never {})
    }

    #[test]
    fn finds_every_child_after_the_table_grows() {
        let t = Children::default();
        // Every three values share a hash, as colliding values would.
        let hash = |i: u64| (i / 3).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let names: Vec<String> = (0..10_000).map(|i| format!("v{i}")).collect();
        let made: Vec<_> = (0..10_000)
            .map(|i| insert(&t, hash(i), &[&names[i as usize], "x"]))
            .collect();
        for (i, m) in made.iter().enumerate() {
            let (h, n) = (hash(i as u64), &names[i]);
            let found = t.get(h, &[n, "x"]).expect(n);
            assert!(Arc::ptr_eq(&found, m), "{n} found another child");
            assert!(Arc::ptr_eq(&insert(&t, h, &[n, "x"]), m));
        }
        assert!(t.get(hash(1), &["v1", "y"]).is_none());
        assert!(t.get(hash(1), &["v1"]).is_none());
    }

    #[test]
    fn values_with_the_same_hash_get_their_own_children() {
        let t = Children::default();
        let a = insert(&t, 42, &["a", "b"]);
        let b = insert(&t, 42, &["ab", ""]);
        let c = insert(&t, 42, &["b", "a"]);
        assert_eq!(*t.get(42, &["a", "b"]).unwrap(), "a,b");
        assert_eq!(*t.get(42, &["ab", ""]).unwrap(), "ab,");
        assert_eq!(*t.get(42, &["b", "a"]).unwrap(), "b,a");
        assert!(!Arc::ptr_eq(&a, &b) && !Arc::ptr_eq(&b, &c));
    }

    #[test]
    fn same_bytes_is_equality() {
        let samples: Vec<Vec<u8>> = (0..=20)
            .flat_map(|n| {
                let base: Vec<u8> = (0..n as u8).map(|i| b'a' + i).collect();
                let mut variants = vec![base.clone()];
                for at in 0..n {
                    let mut v = base.clone();
                    v[at] = b'#';
                    variants.push(v);
                }
                variants
            })
            .collect();
        for a in &samples {
            for b in &samples {
                assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn a_removed_child_is_revived_by_the_next_insert() {
        let t = Children::default();
        let a = insert(&t, 1, &["a"]);
        assert!(t.remove(1, &["a"]));
        assert!(!t.remove(1, &["a"]), "removed twice");
        assert!(!t.remove(2, &["b"]), "never inserted");
        assert!(t.get(1, &["a"]).is_none(), "a removed child is not found");
        assert!(Arc::ptr_eq(&insert(&t, 1, &["a"]), &a));
        assert!(t.get(1, &["a"]).is_some());
    }

    #[test]
    fn threads_racing_to_insert_share_one_child_per_values() {
        let t = Children::default();
        let per_thread: Vec<Vec<Arc<String>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..5_000)
                            .map(|i| {
                                let v = format!("{}", i % 2_000);
                                let h = (i % 2_000) as u64 % 97;
                                match t.get(h, &[&v]) {
                                    Some(m) => m,
                                    None => insert(&t, h, &[&v]),
                                }
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for got in &per_thread {
            for (i, m) in got.iter().enumerate() {
                assert_eq!(**m, format!("{}", i % 2_000));
                assert!(Arc::ptr_eq(m, &per_thread[0][i]), "two children for {m}");
            }
        }
    }
}
