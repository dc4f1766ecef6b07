//! A bounded, class-balanced pool of earlier accepted samples, so a small delivery is scored
//! against enough data: each class keeps at most `capacity / classes` samples, newest replacing
//! oldest.

use std::collections::VecDeque;

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
}
