//! A bounded LRU of analyses by statement text (and of shapes by literal-normalized text).
//!
//! Applications repeat a small set of statement texts, so after warm-up nearly every statement
//! that needs the parser is a hit. Entries remember the rules generation they were computed
//! under; a reload makes them stale without a global flush racing with lookups.
//!
//! Recency is a counter stamped on each hit; when the cache is full the oldest eighth is evicted
//! in one pass, which keeps both lookups and inserts amortized O(1) with no linked list.

use std::collections::HashMap;
use std::sync::Arc;

use super::Analysis;

struct Entry<V> {
    analysis: V,
    generation: u64,
    stamp: u64,
}

/// The cache itself; the analyzer wraps it in a mutex.
pub struct Lru<V = Arc<Analysis>> {
    map: HashMap<Box<str>, Entry<V>>,
    capacity: usize,
    clock: u64,
}

impl<V: Clone> Lru<V> {
    pub fn new(capacity: usize) -> Lru<V> {
        Lru {
            map: HashMap::with_capacity(capacity.min(4096)),
            capacity: capacity.max(8),
            clock: 0,
        }
    }

    /// The analysis of `sql` computed under rules `generation`, if cached.
    pub fn get(&mut self, sql: &str, generation: u64) -> Option<V> {
        self.clock += 1;
        let entry = self.map.get_mut(sql)?;
        if entry.generation != generation {
            return None;
        }
        entry.stamp = self.clock;
        Some(entry.analysis.clone())
    }

    pub fn insert(&mut self, sql: &str, generation: u64, analysis: V) {
        if self.map.len() >= self.capacity && !self.map.contains_key(sql) {
            self.evict();
        }
        self.clock += 1;
        let entry = Entry {
            analysis,
            generation,
            stamp: self.clock,
        };
        self.map.insert(sql.into(), entry);
    }

    fn evict(&mut self) {
        let mut stamps: Vec<u64> = self.map.values().map(|e| e.stamp).collect();
        let cut = stamps.len() / 8;
        let (_, threshold, _) = stamps.select_nth_unstable(cut);
        let threshold = *threshold;
        self.map.retain(|_, e| e.stamp > threshold);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first() {
        let mut lru: Lru = Lru::new(8);
        let a = Arc::new(Analysis::default());
        for i in 0..8 {
            lru.insert(&format!("q{i}"), 1, a.clone());
        }
        assert!(lru.get("q0", 1).is_some());
        lru.insert("q8", 1, a.clone());
        assert!(lru.len() <= 8);
        assert!(lru.get("q0", 1).is_some(), "recently used survives");
        assert!(lru.get("q1", 1).is_none(), "oldest evicted");
        assert!(lru.get("q8", 1).is_some());
        assert!(lru.get("q8", 2).is_none(), "other rules generation");
    }
}
