//! One O2U-Net window: train on the pending records plus the reference pool, score everything,
//! and flag pending records. Pure computation; runs on its own thread.

use candle_core::Device;

use crate::{
    accuracy::agreement,
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
    /// Per pending row: its sample id and vendor, so labels of one sample by several vendors
    /// count as agreement.
    pub sample_ids: Vec<String>,
    pub vendors: Vec<String>,
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
    /// `scores` (the score mixture) or `agreement` (joint model over overlapping labels).
    pub noise_rate_from: &'static str,
    pub final_loss: f64,
    pub training_seconds: f64,
}

pub fn score_window(
    mut data: WindowData,
    config: &O2uConfig,
    noise_rate: suspects::NoiseRate,
    min_overlap_share: f64,
    device: &Device,
    observer: &mut dyn TrainingObserver,
) -> candle_core::Result<WindowScores> {
    let shape = InputShape::Vector { dim: data.dim };
    Standardizer::standardize_in_place(&mut data.features, shape);
    let samples = Samples { features: &data.features, labels: &data.labels, shape, classes: data.classes };
    let outcome = o2u::score(samples, None, config, device, observer)?;
    let pending_scores = &outcome.scores[..data.pending];
    let (item, items) = agreement::index_of(data.sample_ids.iter().map(String::as_str));
    let (vendor, vendors) = agreement::index_of(data.vendors.iter().map(String::as_str));
    let joint = (noise_rate == suspects::NoiseRate::Auto && agreement::overlap_share(&item, &vendor, items) >= min_overlap_share.max(f64::MIN_POSITIVE))
        .then(|| {
            let obs = agreement::Observations { item: &item, annotator: &vendor, label: &data.labels[..data.pending], score: pending_scores, items, annotators: vendors, classes: data.classes };
            agreement::fit(&obs)
        })
        .flatten();
    let mut flagged = vec![false; data.pending];
    let (rate, rate_from) = match joint {
        // Agreement settles the share of wrong labels; the scores still pick which ones.
        Some(fit) => {
            for i in suspects::select(pending_scores, suspects::NoiseRate::Fixed(fit.noise_share)).flagged {
                flagged[i] = true;
            }
            (fit.noise_share, "agreement")
        }
        None => {
            let selection = suspects::select(&outcome.scores, noise_rate);
            for &i in selection.flagged.iter().filter(|&&i| i < data.pending) {
                flagged[i] = true;
            }
            (selection.noise_rate, "scores")
        }
    };
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
        noise_rate: rate,
        noise_rate_from: rate_from,
        final_loss: outcome.final_loss,
        training_seconds: outcome.training_seconds,
    })
}
