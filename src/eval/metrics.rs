//! Detection-quality metrics against known truth: the O2U-Net paper's label precision, average
//! precision (area under the precision–recall curve), and precision / recall / F1 of a flag set.

use serde::Serialize;

use crate::o2u::suspects::rank_descending;

/// Share of truly mislabelled samples among the `k` highest scores (the paper uses k = the
/// number of flipped labels).
pub fn label_precision_at(scores: &[f32], is_noisy: &[bool], k: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    let order = rank_descending(scores);
    order.iter().take(k).filter(|&&i| is_noisy[i]).count() as f64 / k.min(order.len()) as f64
}

/// Average precision: mean of precision@i over the ranks i where a noisy sample appears.
pub fn average_precision(scores: &[f32], is_noisy: &[bool]) -> f64 {
    let positives = is_noisy.iter().filter(|&&n| n).count();
    if positives == 0 {
        return 0.0;
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (rank, &i) in rank_descending(scores).iter().enumerate() {
        if is_noisy[i] {
            hits += 1;
            sum += hits as f64 / (rank + 1) as f64;
        }
    }
    sum / positives as f64
}

/// Points (recall, precision) of the PR curve, one per rank.
pub fn pr_curve(scores: &[f32], is_noisy: &[bool]) -> Vec<(f64, f64)> {
    let positives = is_noisy.iter().filter(|&&n| n).count().max(1) as f64;
    let mut hits = 0usize;
    rank_descending(scores)
        .iter()
        .enumerate()
        .map(|(rank, &i)| {
            hits += is_noisy[i] as usize;
            (hits as f64 / positives, hits as f64 / (rank + 1) as f64)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

pub fn precision_recall_f1(flagged: &[usize], is_noisy: &[bool]) -> Prf {
    let tp = flagged.iter().filter(|&&i| is_noisy[i]).count() as f64;
    let positives = is_noisy.iter().filter(|&&n| n).count() as f64;
    let precision = if flagged.is_empty() { 0.0 } else { tp / flagged.len() as f64 };
    let recall = if positives == 0.0 { 0.0 } else { tp / positives };
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    Prf { precision, recall, f1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_ranking() {
        let scores = [0.9, 0.1, 0.8, 0.2];
        let noisy = [true, false, true, false];
        assert_eq!(label_precision_at(&scores, &noisy, 2), 1.0);
        assert_eq!(average_precision(&scores, &noisy), 1.0);
    }

    #[test]
    fn interleaved_ranking() {
        // ranks: 0.9 (noisy), 0.8 (clean), 0.7 (noisy): AP = (1/1 + 2/3) / 2
        let scores = [0.9, 0.8, 0.7];
        let noisy = [true, false, true];
        assert!((average_precision(&scores, &noisy) - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(label_precision_at(&scores, &noisy, 2), 0.5);
        let curve = pr_curve(&scores, &noisy);
        assert_eq!(curve.last(), Some(&(1.0, 2.0 / 3.0)));
    }

    #[test]
    fn prf_of_a_flag_set() {
        let noisy = [true, true, false, false];
        let m = precision_recall_f1(&[0, 2], &noisy);
        assert_eq!((m.precision, m.recall, m.f1), (0.5, 0.5, 0.5));
        assert_eq!(precision_recall_f1(&[], &noisy).f1, 0.0);
    }
}

/// Average ranks (ties share the mean of their positions), 1-based.
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            r[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson on average ranks); 0 when either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

#[cfg(test)]
mod spearman_tests {
    use super::spearman;

    #[test]
    fn spearman_of_known_orders() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // With ties: scipy.stats.spearmanr([1,2,2,3],[1,3,2,4]) = 0.9486832980505138
        assert!((spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]) - 0.9486832980505138).abs() < 1e-12);
    }
}
