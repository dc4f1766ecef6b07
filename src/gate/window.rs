//! One O2U-Net window: train on the pending records plus the reference pool, score everything,
//! and flag pending records. Pure computation; runs on its own thread.

use candle_core::Device;

use crate::{
    data::Standardizer,
    o2u::{self, suspects, InputShape, O2uConfig, Samples, TrainingObserver},
};

/// The training set of one window: the first `pending` rows are the records being gated, the
/// rest come from the reference pool.
pub struct WindowData {
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    pub pending: usize,
    pub dim: usize,
    pub classes: usize,
}

#[derive(Debug, Clone)]
pub struct WindowScores {
    /// For the pending rows only.
    pub scores: Vec<f32>,
    pub predicted: Vec<u32>,
    pub flagged: Vec<bool>,
    /// Share of all scored rows with a lower score.
    pub percentile: Vec<f64>,
    pub noise_rate: f64,
    pub final_loss: f64,
    pub training_seconds: f64,
}

pub fn score_window(
    mut data: WindowData,
    config: &O2uConfig,
    noise_rate: suspects::NoiseRate,
    device: &Device,
    observer: &mut dyn TrainingObserver,
) -> candle_core::Result<WindowScores> {
    let shape = InputShape::Vector { dim: data.dim };
    Standardizer::standardize_in_place(&mut data.features, shape);
    let samples = Samples { features: &data.features, labels: &data.labels, shape, classes: data.classes };
    let outcome = o2u::score(samples, None, config, device, observer)?;
    let selection = suspects::select(&outcome.scores, noise_rate);
    let mut flagged = vec![false; data.pending];
    for &i in selection.flagged.iter().filter(|&&i| i < data.pending) {
        flagged[i] = true;
    }
    let order = suspects::rank_descending(&outcome.scores);
    let total = outcome.scores.len();
    let mut percentile = vec![0.0; data.pending];
    for (rank, &i) in order.iter().enumerate() {
        if i < data.pending {
            percentile[i] = (total - rank - 1) as f64 / (total.max(2) - 1) as f64;
        }
    }
    Ok(WindowScores {
        scores: outcome.scores[..data.pending].to_vec(),
        predicted: outcome.predicted[..data.pending].to_vec(),
        flagged,
        percentile,
        noise_rate: selection.noise_rate,
        final_loss: outcome.final_loss,
        training_seconds: outcome.training_seconds,
    })
}
