//! Cross-fitting: class probabilities for every sample from networks that never saw its label,
//! so they say how learnable the features are without the labels' own noise.

use candle_core::{Device, Result, Tensor};
use rand::seq::SliceRandom;

use super::{check, DeviceSamples, O2uConfig, Samples, Silent, Trainer, WeightRng};

/// Out-of-fold class probabilities (row-major, `classes` per sample): the samples are split
/// into `folds` seeded folds, and each fold is predicted by a fresh network trained on the
/// others for `stage1_epochs` at `stage1_lr`, or longer when that is fewer than `min_steps`
/// mini-batches (a small window would otherwise be scored by a barely trained network). No
/// sample is predicted by a network that saw its label, so these probabilities measure how
/// learnable the features are and how far the labels disagree with them.
///
/// `groups` (one per sample, dense from 0) keeps the samples of a group in one fold: the labels
/// several annotators gave one item are then all predicted by a network that saw none of them.
/// `None` makes every sample its own group.
pub fn heldout_probabilities(train: Samples, config: &O2uConfig, folds: usize, min_steps: usize, groups: Option<&[usize]>, device: &Device) -> Result<Vec<f32>> {
    check(&train)?;
    let n = train.len();
    if n < 4 {
        candle_core::bail!("cross-fitting needs at least 4 samples (2 per fold), got {n}");
    }
    if groups.is_some_and(|g| g.len() != n) {
        candle_core::bail!("cross-fitting: {} group ids for {n} samples", groups.map_or(0, <[usize]>::len));
    }
    let group_count = groups.map_or(n, |g| g.iter().max().map_or(0, |m| m + 1));
    if group_count < 2 {
        candle_core::bail!("cross-fitting needs at least 2 groups, got {group_count}");
    }
    let folds = folds.clamp(2, (n / 2).min(group_count));
    let mut rng = WeightRng::new(config.seed.wrapping_add(0x5eed));
    let mut order: Vec<usize> = (0..group_count).collect();
    order.shuffle(rng.rng());
    let mut fold_of_group = vec![0usize; group_count];
    for (rank, &g) in order.iter().enumerate() {
        fold_of_group[g] = rank % folds;
    }
    let fold_of: Vec<usize> = (0..n).map(|i| fold_of_group[groups.map_or(i, |g| g[i])]).collect();
    let d = train.shape.len();
    let k = train.classes;
    let mut probabilities = vec![0f32; n * k];
    for fold in 0..folds {
        let (mut features, mut labels, mut held) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &f) in fold_of.iter().enumerate() {
            if f == fold {
                held.push(i);
            } else {
                features.extend_from_slice(&train.features[i * d..(i + 1) * d]);
                labels.push(train.labels[i]);
            }
        }
        let fit = Samples { features: &features, labels: &labels, ..train };
        check(&fit)?;
        let data = DeviceSamples::upload(&fit, device)?;
        let mut trainer = Trainer::new(config, train.shape, k, config.seed.wrapping_add(17 + fold as u64), device)?;
        let steps_per_epoch = fit.len().div_ceil(config.batch_size).max(1);
        let epochs = config.stage1_epochs.max(min_steps.div_ceil(steps_per_epoch)).max(1);
        for _ in 0..epochs {
            trainer.epoch(&data, config.stage1_lr, false, &mut Silent)?;
        }
        let held_features: Vec<f32> = held.iter().flat_map(|&i| train.features[i * d..(i + 1) * d].iter().copied()).collect();
        let x = Tensor::from_slice(&held_features, (held.len(), d), device)?;
        let p = trainer.predict_probabilities(&x)?;
        for (row, &i) in held.iter().enumerate() {
            probabilities[i * k..(i + 1) * k].copy_from_slice(&p[row * k..(row + 1) * k]);
        }
    }
    Ok(probabilities)
}
