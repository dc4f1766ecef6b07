//! Embeddings by content hash, bounded: an item that ten vendors label is embedded once, and the
//! least recently used vectors go first when the cache is full.

use std::num::NonZeroUsize;

use lru::LruCache;
use sha2::{Digest, Sha256};

/// SHA-256 of the text: equal texts share a vector whatever their sample ids.
pub type ContentHash = [u8; 32];

pub fn content_hash(text: &str) -> ContentHash {
    Sha256::digest(text.as_bytes()).into()
}

/// Lookups answered from the cache and those that needed the encoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
}

pub struct EmbeddingCache {
    /// `None` when the cache holds nothing (`cache_entries = 0`).
    entries: Option<LruCache<ContentHash, Box<[f32]>>>,
}

impl EmbeddingCache {
    pub fn new(capacity: usize) -> Self {
        Self { entries: NonZeroUsize::new(capacity).map(LruCache::new) }
    }

    pub fn get(&mut self, key: &ContentHash) -> Option<&[f32]> {
        self.entries.as_mut()?.get(key).map(|v| &**v)
    }

    pub fn put(&mut self, key: ContentHash, vector: &[f32]) {
        if let Some(entries) = self.entries.as_mut() {
            entries.put(key, vector.into());
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recently_used_within_its_bound() {
        let mut cache = EmbeddingCache::new(2);
        let (a, b, c) = (content_hash("a"), content_hash("b"), content_hash("c"));
        cache.put(a, &[1.0]);
        cache.put(b, &[2.0]);
        assert_eq!(cache.get(&a), Some(&[1.0][..]), "a is now the most recent");
        cache.put(c, &[3.0]);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&b).is_none(), "b was the least recently used");
        assert_eq!(cache.get(&c), Some(&[3.0][..]));
    }

    #[test]
    fn a_cache_of_no_entries_keeps_nothing() {
        let mut cache = EmbeddingCache::new(0);
        cache.put(content_hash("a"), &[1.0]);
        assert!(cache.get(&content_hash("a")).is_none());
        assert!(cache.is_empty());
    }
}
