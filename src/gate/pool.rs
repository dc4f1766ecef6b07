//! A bounded, class-balanced pool of earlier accepted samples, so a small delivery is scored
//! against enough data: each class keeps at most `capacity / classes` samples, newest replacing
//! oldest.

use std::{
    collections::{HashSet, VecDeque},
    hash::{Hash, Hasher},
};

pub struct ReferencePool {
    per_class: Vec<VecDeque<Vec<f32>>>,
    capacity_per_class: usize,
}

impl ReferencePool {
    pub fn new(classes: usize, capacity: usize) -> Self {
        Self { per_class: vec![VecDeque::new(); classes], capacity_per_class: capacity / classes.max(1) }
    }

    pub fn add(&mut self, label: u32, features: &[f32]) {
        if self.capacity_per_class == 0 {
            return;
        }
        let queue = &mut self.per_class[label as usize];
        if queue.len() == self.capacity_per_class {
            queue.pop_front();
        }
        queue.push_back(features.to_vec());
    }

    pub fn capacity_per_class(&self) -> usize {
        self.capacity_per_class
    }

    pub fn len(&self) -> usize {
        self.per_class.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every pooled sample as (label, features).
    pub fn samples(&self) -> impl Iterator<Item = (u32, &[f32])> {
        self.per_class.iter().enumerate().flat_map(|(c, q)| q.iter().map(move |f| (c as u32, f.as_slice())))
    }

    /// The pooled samples that are not one of the window's own items (`window`: the
    /// [`feature_key`]s of its records). A sample_id names one item, and its features do not
    /// depend on who labelled it; where vendors label the same items, a pooled copy would give
    /// one vendor's accepted label of the item a second row beside the item's own labels, so the
    /// network would side with it and call the other vendors' labels wrong. Left out, the item's
    /// labels meet on equal terms (and the pool stays a control of *other* items).
    pub fn samples_except<'a>(&'a self, window: &'a HashSet<u64>) -> impl Iterator<Item = (u32, &'a [f32])> {
        self.samples().filter(move |(_, f)| !window.contains(&feature_key(f)))
    }
}

/// Identifies a feature vector by its exact bits (a collision only leaves one pool row out).
pub fn feature_key(features: &[f32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for x in features {
        x.to_bits().hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_and_bounded() {
        let mut pool = ReferencePool::new(2, 4);
        for i in 0..10 {
            pool.add(0, &[i as f32]);
        }
        pool.add(1, &[100.0]);
        assert_eq!(pool.len(), 3, "class 0 capped at 2, class 1 holds 1");
        let zeros: Vec<f32> = pool.samples().filter(|(c, _)| *c == 0).map(|(_, f)| f[0]).collect();
        assert_eq!(zeros, vec![8.0, 9.0], "newest kept");
    }

    #[test]
    fn a_windows_own_items_are_left_out_of_its_pool_rows() {
        let mut pool = ReferencePool::new(2, 8);
        pool.add(0, &[1.0, 2.0]);
        pool.add(1, &[3.0, 4.0]);
        pool.add(1, &[5.0, 6.0]);
        let window: HashSet<u64> = [feature_key(&[3.0, 4.0]), feature_key(&[9.0, 9.0])].into_iter().collect();
        let kept: Vec<(u32, Vec<f32>)> = pool.samples_except(&window).map(|(c, f)| (c, f.to_vec())).collect();
        assert_eq!(kept, vec![(0, vec![1.0, 2.0]), (1, vec![5.0, 6.0])]);
        assert_eq!(pool.samples_except(&HashSet::new()).count(), 3);
        assert_ne!(feature_key(&[0.0]), feature_key(&[-0.0]), "by bits, as stored");
    }
}
