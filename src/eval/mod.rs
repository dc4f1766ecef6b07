//! The evaluation harness: the O2U-Net paper's protocol (real data, labels flipped through a
//! noise transition matrix from a fixed seed) or real crowd labels, scored against the truth.

pub mod metrics;
pub mod plot;
pub mod stream;
pub mod vendors;

use anyhow::{bail, Result};
use candle_core::Device;
use serde::Serialize;

use crate::accuracy::{evidence::WindowEvidence, offline};
use crate::data::LabelledSet;
use crate::noise::NoiseModel;
use crate::o2u::{self, suspects, O2uConfig, TrainingObserver};

/// Everything `labelgate eval` reports; the JSON keys are a stable interface for benchmarks.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub dataset: String,
    pub noise: Option<String>,
    pub samples: usize,
    /// Samples whose given label differs from the truth.
    pub noisy_samples: usize,
    pub true_noise_rate: f64,
    /// Precision among the top-k scores, k = `noisy_samples` (the paper's label precision).
    pub label_precision: f64,
    pub average_precision: f64,
    pub precision_auto: f64,
    pub recall_auto: f64,
    pub f1_auto: f64,
    pub flagged_auto: usize,
    /// The estimated wrong-label share and its interval, from the gate's evidence.
    pub noise_rate_estimate: f64,
    pub noise_rate_ci_low: f64,
    pub noise_rate_ci_high: f64,
    /// What the estimate rests on (the gate's evidence: status, readings, the network's fit).
    pub evidence: WindowEvidence,
    pub samples_per_second: f64,
    pub training_seconds: f64,
    /// Training plus scoring and thresholding, without data loading (comparable with the peers).
    pub wall_seconds: f64,
    pub epochs: usize,
    pub device: String,
    pub threads: usize,
    pub test_accuracy_before: Option<f64>,
    pub test_accuracy_after: Option<f64>,
    pub config: O2uConfig,
    /// With `--vendors`: MAE and Spearman of estimated vs true per-annotator accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_accuracy_mae: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_accuracy_spearman: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_report: Option<vendors::VendorReport>,
    #[serde(skip)]
    pub predicted: Vec<u32>,
    #[serde(skip)]
    pub pr_curve: Vec<(f64, f64)>,
    #[serde(skip)]
    pub scores: Vec<f32>,
    #[serde(skip)]
    pub loss_variance: Vec<f32>,
}

/// Flips the labels of `train` (whose labels are the truth) through `noise`.
pub fn inject_noise(train: &mut LabelledSet, noise: NoiseModel, seed: u64) -> Result<()> {
    let Some(truth) = &train.truth else { bail!("cannot inject noise: the data set has no true labels") };
    if truth != &train.labels {
        bail!("this data set already carries real noisy labels; run it without --noise");
    }
    train.labels = noise.apply(truth, train.classes.len(), seed);
    Ok(())
}

/// Runs stages 1–2 (and 3 with `retrain`) on `train` and measures detection against its truth.
#[allow(clippy::too_many_arguments)] // each is a separate knob of one evaluation run
pub fn evaluate(
    train: &LabelledSet,
    test: &LabelledSet,
    noise: Option<NoiseModel>,
    config: &O2uConfig,
    judge: &offline::JudgeSettings,
    retrain: bool,
    device: &Device,
    threads: usize,
    observer: &mut dyn TrainingObserver,
) -> Result<EvalReport> {
    let Some(is_noisy) = train.is_noisy() else { bail!("evaluation needs the true labels") };
    let test_samples = test.true_samples();
    let started = std::time::Instant::now();
    let outcome = o2u::score(train.samples(), test_samples, config, device, observer)?;
    let noisy_samples = is_noisy.iter().filter(|&&n| n).count();
    let auto = offline::judge(train.samples(), &outcome, suspects::NoiseRate::Auto, config, judge, device);
    let prf = metrics::precision_recall_f1(&auto.flagged, &is_noisy);
    let wall_seconds = started.elapsed().as_secs_f64();
    let test_accuracy_after = if retrain {
        let mut keep = vec![true; train.len()];
        for &i in &auto.flagged {
            keep[i] = false;
        }
        Some(o2u::retrain(train.samples(), &keep, test_samples.expect("test set has truth"), config, device, observer)?)
    } else {
        None
    };
    Ok(EvalReport {
        dataset: String::new(),
        noise: noise.map(|n| n.to_string()),
        samples: train.len(),
        noisy_samples,
        true_noise_rate: noisy_samples as f64 / train.len().max(1) as f64,
        label_precision: metrics::label_precision_at(&outcome.scores, &is_noisy, noisy_samples),
        average_precision: metrics::average_precision(&outcome.scores, &is_noisy),
        precision_auto: prf.precision,
        recall_auto: prf.recall,
        f1_auto: prf.f1,
        flagged_auto: auto.flagged.len(),
        noise_rate_estimate: auto.evidence.wrong_share,
        noise_rate_ci_low: auto.evidence.wrong_share_ci_low,
        noise_rate_ci_high: auto.evidence.wrong_share_ci_high,
        evidence: auto.evidence,
        samples_per_second: outcome.samples_per_second,
        training_seconds: outcome.training_seconds,
        wall_seconds,
        epochs: outcome.epochs,
        device: crate::device::describe(device).into(),
        threads,
        test_accuracy_before: outcome.test_accuracy,
        test_accuracy_after,
        config: config.clone(),
        vendor_accuracy_mae: None,
        vendor_accuracy_spearman: None,
        vendor_report: None,
        predicted: outcome.predicted,
        pr_curve: metrics::pr_curve(&outcome.scores, &is_noisy),
        scores: outcome.scores,
        loss_variance: outcome.loss_variance,
    })
}
