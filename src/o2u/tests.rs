//! The engine end to end on small data: the loss by hand, a CNN that finds flipped images.

use super::*;

#[test]
fn nll_matches_hand_computation() -> Result<()> {
    let logits = Tensor::new(&[[0.0f32, 0.0], [2.0, 0.0]], &Device::Cpu)?;
    let labels = Tensor::new(&[1u32, 0], &Device::Cpu)?;
    let nll = per_sample_nll(&logits, &labels)?.to_vec1::<f32>()?;
    assert!((nll[0] - std::f32::consts::LN_2).abs() < 1e-6);
    assert!((nll[1] - (1.0 + (-2.0f32).exp()).ln()).abs() < 1e-6);
    Ok(())
}

/// 12×12 images, class 0 bright on the left, class 1 on the right, 10% labels flipped:
/// the CNN must learn through conv, batch-norm and dropout, and score the flips highest.
/// (Small: 9 wide conv layers are slow on a CPU.)
#[test]
fn cnn9_learns_and_scores_flipped_images() -> Result<()> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let (n, side) = (100, 12);
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut flipped = Vec::new();
    for i in 0..n {
        let class = (i % 2) as u32;
        for _ in 0..side {
            for x in 0..side {
                let lit = (x < side / 2) == (class == 0);
                features.push(if lit { 1.0 } else { 0.0 } + rng.random_range(-0.3f32..0.3));
            }
        }
        let flip = i % 10 == 3;
        labels.push(if flip { 1 - class } else { class });
        flipped.push(flip);
    }
    let shape = InputShape::Image { channels: 1, height: side, width: side };
    let samples = Samples { features: &features, labels: &labels, shape, classes: 2 };
    let config =
        O2uConfig { model: ModelConfig::Cnn9 { dropout: 0.25 }, batch_size: 32, stage1_epochs: 2, schedule: CyclicalSchedule { cycle_len: 3, ..O2uConfig::default().schedule }, ..Default::default() };
    let out = score(samples, None, &config, &Device::Cpu, &mut Silent)?;
    let top: Vec<usize> = suspects::rank_descending(&out.scores).into_iter().take(10).collect();
    let hits = top.iter().filter(|&&i| flipped[i]).count();
    assert!(hits >= 7, "{hits} of the 10 flipped images in the top 10");
    Ok(())
}

#[test]
fn default_config_is_valid_and_bad_values_name_their_key() {
    assert!(O2uConfig::default().validate().is_empty());
    let bad = O2uConfig { batch_size: 1, momentum: 1.5, ..Default::default() };
    let errors = bad.validate();
    assert!(errors.iter().any(|e| e.starts_with("batch_size")));
    assert!(errors.iter().any(|e| e.starts_with("momentum")));
}
