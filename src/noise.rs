//! Synthetic label noise on real data, the O2U-Net paper's protocol: labels are flipped through
//! a noise transition matrix `T[i][j] = P(noisy = j | true = i)` from a fixed seed.

use std::{fmt, str::FromStr};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "rate")]
pub enum NoiseModel {
    /// Each class goes to every other class with rate / (C − 1).
    Symmetric(f64),
    /// Class i goes to class (i + 1) mod C with the given rate.
    PairFlip(f64),
}

impl FromStr for NoiseModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("noise `{s}`: use symmetric:RATE or pairflip:RATE with RATE in [0, 1), e.g. symmetric:0.2");
        let (kind, rate) = s.split_once(':').ok_or_else(usage)?;
        let rate: f64 = rate.parse().map_err(|_| usage())?;
        if !(0.0..1.0).contains(&rate) {
            return Err(usage());
        }
        match kind {
            "symmetric" => Ok(NoiseModel::Symmetric(rate)),
            "pairflip" | "pair" => Ok(NoiseModel::PairFlip(rate)),
            _ => Err(usage()),
        }
    }
}

impl fmt::Display for NoiseModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoiseModel::Symmetric(r) => write!(f, "symmetric:{r}"),
            NoiseModel::PairFlip(r) => write!(f, "pairflip:{r}"),
        }
    }
}

impl NoiseModel {
    /// The C×C transition matrix; each row sums to one.
    pub fn transition_matrix(&self, classes: usize) -> Vec<Vec<f64>> {
        let mut t = vec![vec![0.0; classes]; classes];
        for (i, row) in t.iter_mut().enumerate() {
            match *self {
                NoiseModel::Symmetric(r) => {
                    let off = if classes > 1 { r / (classes - 1) as f64 } else { 0.0 };
                    row.iter_mut().for_each(|v| *v = off);
                    row[i] = if classes > 1 { 1.0 - r } else { 1.0 };
                }
                NoiseModel::PairFlip(r) => {
                    row[i] += 1.0 - r;
                    row[(i + 1) % classes] += r;
                }
            }
        }
        t
    }

    /// Draws a noisy label for every true label; the same seed gives the same labels.
    pub fn apply(&self, labels: &[u32], classes: usize, seed: u64) -> Vec<u32> {
        let t = self.transition_matrix(classes);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        labels
            .iter()
            .map(|&y| {
                let u: f64 = rng.random();
                let row = &t[y as usize];
                let mut acc = 0.0;
                for (j, &p) in row.iter().enumerate() {
                    acc += p;
                    if u < acc {
                        return j as u32;
                    }
                }
                y // rounding left u just above the row's sum
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_matrix_rows() {
        let t = NoiseModel::Symmetric(0.2).transition_matrix(5);
        for (i, row) in t.iter().enumerate() {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!((row[i] - 0.8).abs() < 1e-12);
            assert!((row[(i + 2) % 5] - 0.05).abs() < 1e-12);
        }
    }

    #[test]
    fn pairflip_matrix_moves_to_the_next_class() {
        let t = NoiseModel::PairFlip(0.45).transition_matrix(3);
        assert_eq!(t[0], vec![0.55, 0.45, 0.0]);
        assert_eq!(t[2], vec![0.45, 0.0, 0.55]);
    }

    #[test]
    fn applied_noise_matches_the_rate_and_pattern() {
        let labels: Vec<u32> = (0..50_000).map(|i| (i % 10) as u32).collect();
        let noisy = NoiseModel::Symmetric(0.4).apply(&labels, 10, 0);
        let flipped = labels.iter().zip(&noisy).filter(|(a, b)| a != b).count() as f64 / 50_000.0;
        assert!((flipped - 0.4).abs() < 0.01, "{flipped}");

        let noisy = NoiseModel::PairFlip(0.45).apply(&labels, 10, 0);
        assert!(labels.iter().zip(&noisy).all(|(&a, &b)| b == a || b == (a + 1) % 10));
        let flipped = labels.iter().zip(&noisy).filter(|(a, b)| a != b).count() as f64 / 50_000.0;
        assert!((flipped - 0.45).abs() < 0.01, "{flipped}");
    }

    #[test]
    fn same_seed_same_noise() {
        let labels: Vec<u32> = (0..1000).map(|i| (i % 10) as u32).collect();
        let m = NoiseModel::Symmetric(0.2);
        assert_eq!(m.apply(&labels, 10, 3), m.apply(&labels, 10, 3));
        assert_ne!(m.apply(&labels, 10, 3), m.apply(&labels, 10, 4));
    }

    #[test]
    fn parses_the_cli_forms() {
        assert_eq!("symmetric:0.8".parse(), Ok(NoiseModel::Symmetric(0.8)));
        assert_eq!("pairflip:0.45".parse(), Ok(NoiseModel::PairFlip(0.45)));
        assert!("gaussian:0.2".parse::<NoiseModel>().is_err());
        assert!("symmetric:1.2".parse::<NoiseModel>().is_err());
    }
}
