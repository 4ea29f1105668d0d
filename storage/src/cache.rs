//! A small in-memory cache of chunk data, so consumers of the tail read what this agent
//! just wrote without a GET.
//!
//! Objects are immutable, so entries never go stale; eviction is first-in first-out, which
//! suits tail reads, where the newest chunks are the ones wanted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// Chunk data keyed by (object id, byte position in the object), bounded in bytes.
#[derive(Debug)]
pub struct ChunkCache {
    capacity_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    objects: HashMap<Arc<str>, HashMap<u64, Bytes>>,
    order: VecDeque<(Arc<str>, u64)>,
    used_bytes: u64,
}

impl ChunkCache {
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Caches a chunk, evicting the oldest entries to make room. Data larger than the whole
    /// cache is not kept; a chunk already cached is left as is (objects are immutable).
    pub fn insert(&self, object_id: &str, position: u64, data: Bytes) {
        let len = data.len() as u64;
        if len > self.capacity_bytes {
            return;
        }
        let mut inner = self.inner.lock();
        if inner
            .objects
            .get(object_id)
            .is_some_and(|chunks| chunks.contains_key(&position))
        {
            return;
        }
        while inner.used_bytes + len > self.capacity_bytes {
            let Some((old_id, old_position)) = inner.order.pop_front() else {
                break;
            };
            inner.evict(&old_id, old_position);
        }
        let id: Arc<str> = match inner.objects.get_key_value(object_id) {
            Some((id, _)) => id.clone(),
            None => Arc::from(object_id),
        };
        inner
            .objects
            .entry(id.clone())
            .or_default()
            .insert(position, data);
        inner.order.push_back((id, position));
        inner.used_bytes += len;
    }

    pub fn get(&self, object_id: &str, position: u64) -> Option<Bytes> {
        self.inner
            .lock()
            .objects
            .get(object_id)?
            .get(&position)
            .cloned()
    }

    /// Bytes of chunk data currently held.
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().used_bytes
    }
}

impl Inner {
    fn evict(&mut self, object_id: &str, position: u64) {
        let Some(chunks) = self.objects.get_mut(object_id) else {
            return;
        };
        if let Some(data) = chunks.remove(&position) {
            self.used_bytes -= data.len() as u64;
        }
        if chunks.is_empty() {
            self.objects.remove(object_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Bytes {
        Bytes::from(vec![7; len])
    }

    #[test]
    fn evicts_oldest_to_stay_within_bound() {
        let cache = ChunkCache::new(100);
        cache.insert("a", 0, data(40));
        cache.insert("a", 40, data(40));
        cache.insert("b", 0, data(20));
        assert_eq!(cache.used_bytes(), 100);

        cache.insert("c", 0, data(30));
        assert_eq!(cache.used_bytes(), 90);
        assert!(cache.get("a", 0).is_none());
        assert_eq!(cache.get("a", 40).unwrap().len(), 40);
        assert_eq!(cache.get("b", 0).unwrap().len(), 20);
        assert_eq!(cache.get("c", 0).unwrap().len(), 30);

        cache.insert("d", 0, data(100));
        assert_eq!(cache.used_bytes(), 100);
        assert!(cache.get("a", 40).is_none());
        assert!(cache.get("c", 0).is_none());
        assert!(cache.get("d", 0).is_some());
    }

    #[test]
    fn skips_oversize_and_duplicates() {
        let cache = ChunkCache::new(50);
        cache.insert("a", 0, data(51));
        assert_eq!(cache.used_bytes(), 0);
        assert!(cache.get("a", 0).is_none());

        cache.insert("a", 0, data(10));
        cache.insert("a", 0, data(10));
        assert_eq!(cache.used_bytes(), 10);
        assert!(cache.get("a", 1).is_none());
        assert!(cache.get("b", 0).is_none());
    }
}
