//! The O2U-Net engine: pure computation, no I/O. Stage 1 trains on the noisy labels with a fixed
//! rate, stage 2 cycles the rate and records every sample's loss, stage 3 (optional) retrains on
//! the samples that were kept. See Huang, Qu, Jia, Zhao, "O2U-Net", ICCV 2019.

mod cpu_mlp;
mod crossfit;
mod error;
pub mod loss_record;
pub mod model;
pub mod noise_rate;
pub mod schedule;
pub mod sgd;
pub mod suspects;

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, D};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use cpu_mlp::CpuMlp;
pub use crossfit::heldout_probabilities;
pub use error::WindowError;
pub use loss_record::LossRecord;
pub use model::{InputShape, ModelConfig, Network, WeightRng};
pub use schedule::CyclicalSchedule;
pub use sgd::SgdMomentum;

/// Every knob of an O2U-Net run. Defaults follow the public PyTorch reimplementation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct O2uConfig {
    pub model: ModelConfig,
    pub batch_size: usize,
    /// E1: epochs of stage 1 at `stage1_lr`.
    pub stage1_epochs: usize,
    pub stage1_lr: f64,
    /// k: stage-2 cycles of `schedule.cycle_len` epochs each.
    pub cycles: usize,
    pub schedule: CyclicalSchedule,
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Stage 3: epochs of retraining on the kept samples (0 = skip).
    pub retrain_epochs: usize,
    /// Stage 1 runs at least this many mini-batches (more epochs on small data): a window of a
    /// few hundred records is otherwise scored by a network that has barely trained, whose
    /// losses reflect how hard a sample is rather than whether its label is wrong. 0 = exactly
    /// `stage1_epochs`.
    pub min_stage1_steps: usize,
}

impl Default for O2uConfig {
    fn default() -> Self {
        Self {
            model: ModelConfig::default(),
            batch_size: 128,
            stage1_epochs: 5,
            stage1_lr: 0.01,
            cycles: 1,
            schedule: CyclicalSchedule { lr_max: 0.01, lr_min: 0.001, cycle_len: 10 },
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
            retrain_epochs: 0,
            min_stage1_steps: 0,
        }
    }
}

/// The engine settings that differ for sentence embeddings (text records). A network on
/// normalised 384-wide sentence vectors fits wrong labels within a few epochs, after which their
/// losses no longer stand out: one stage-1 epoch and five-epoch cycles ranked flipped
/// sentence-polarity labels at AP 0.56 / 0.64 (20 % / 40 % flipped), where the image defaults
/// (5 and 10) gave 0.47 / 0.50 (docs/benchmarks.md §11).
pub struct SentenceEmbeddingDefaults;

impl SentenceEmbeddingDefaults {
    pub const STAGE1_EPOCHS: usize = 1;
    pub const CYCLE_LEN: usize = 5;
    /// About one epoch of the 8,529 sentences at batch 128: small windows train as long.
    pub const MIN_STAGE1_STEPS: usize = 60;
}

impl O2uConfig {
    /// These settings with [`SentenceEmbeddingDefaults`] (for configurations made in code; a
    /// loaded text gate's configuration gets them as a layer under the file).
    pub fn with_sentence_embedding_defaults(self) -> Self {
        use SentenceEmbeddingDefaults as Text;
        Self { stage1_epochs: Text::STAGE1_EPOCHS, min_stage1_steps: Text::MIN_STAGE1_STEPS, schedule: CyclicalSchedule { cycle_len: Text::CYCLE_LEN, ..self.schedule }, ..self }
    }

    pub fn stage2_epochs(&self) -> usize {
        self.cycles * self.schedule.cycle_len
    }

    /// Stage-1 epochs for `samples`: `stage1_epochs`, or more to reach `min_stage1_steps`.
    pub fn stage1_epochs_for(&self, samples: usize) -> usize {
        let steps_per_epoch = samples.div_ceil(self.batch_size.max(1)).max(1);
        self.stage1_epochs.max(self.min_stage1_steps.div_ceil(steps_per_epoch))
    }

    /// Problems with the values, each naming the key and a fix.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.batch_size < 2 {
            errors.push(format!("batch_size = {}: must be at least 2", self.batch_size));
        }
        if self.schedule.cycle_len == 0 || self.cycles == 0 {
            errors.push("schedule.cycle_len and cycles must be at least 1: stage 2 records the losses that make the scores".into());
        }
        for (key, v) in [("stage1_lr", self.stage1_lr), ("schedule.lr_max", self.schedule.lr_max), ("schedule.lr_min", self.schedule.lr_min)] {
            if !(v > 0.0 && v.is_finite()) {
                errors.push(format!("{key} = {v}: must be a positive number such as 0.01"));
            }
        }
        if !(0.0..1.0).contains(&self.momentum) {
            errors.push(format!("momentum = {}: must be in [0, 1), e.g. 0.9", self.momentum));
        }
        if !(self.weight_decay >= 0.0) {
            errors.push(format!("weight_decay = {}: must be >= 0, e.g. 5e-4", self.weight_decay));
        }
        if let ModelConfig::Mlp { hidden } = &self.model {
            if hidden.contains(&0) {
                errors.push("model.hidden: widths must be positive, e.g. [256, 256]".into());
            }
        }
        errors
    }
}

/// Labelled samples laid out row-major, `shape.len()` values per sample.
#[derive(Debug, Clone, Copy)]
pub struct Samples<'a> {
    pub features: &'a [f32],
    pub labels: &'a [u32],
    pub shape: InputShape,
    pub classes: usize,
}

impl Samples<'_> {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Warmup,
    Cyclical,
    Retrain,
}

/// What the engine reports after each batch and epoch, for progress bars and logs.
#[derive(Debug, Clone)]
pub struct EpochReport {
    pub stage: Stage,
    /// Epoch within the stage, from 0.
    pub epoch: usize,
    pub epochs_in_stage: usize,
    pub lr: f64,
    pub mean_loss: f64,
    pub seconds: f64,
}

pub trait TrainingObserver {
    fn on_batch(&mut self, _samples_done: usize) {}
    fn on_epoch(&mut self, _report: &EpochReport) {}
}

/// Discards all progress.
pub struct Silent;
impl TrainingObserver for Silent {}

/// The result of stages 1 and 2.
#[derive(Debug, Clone, Serialize)]
pub struct O2uOutcome {
    /// Mean over stage-2 epochs of (sample loss − epoch mean loss); higher = more suspect.
    pub scores: Vec<f32>,
    /// Variance of the same normalised loss over stage-2 epochs.
    pub loss_variance: Vec<f32>,
    /// The trained network's class for each sample (evaluation mode, after stage 2).
    pub predicted: Vec<u32>,
    /// Clean-test accuracy of the network trained on the noisy labels (end of stage 2).
    pub test_accuracy: Option<f64>,
    pub epochs: usize,
    pub training_seconds: f64,
    /// Samples × epochs per second of training, stages 1 and 2.
    pub samples_per_second: f64,
    /// Mean training loss of the last epoch.
    pub final_loss: f64,
}

/// Runs stages 1 and 2 on `train` and returns every sample's score.
pub fn score(train: Samples, test: Option<Samples>, config: &O2uConfig, device: &Device, observer: &mut dyn TrainingObserver) -> Result<O2uOutcome> {
    check(&train)?;
    let data = DeviceSamples::upload(&train, device)?;
    let mut trainer = Trainer::new(config, train.shape, train.classes, config.seed, device)?;
    let started = Instant::now();
    let mut final_loss = 0.0;
    let stage1_epochs = config.stage1_epochs_for(train.len());
    for epoch in 0..stage1_epochs {
        let t = Instant::now();
        let (mean_loss, _) = trainer.epoch(&data, config.stage1_lr, false, observer)?;
        final_loss = mean_loss;
        observer.on_epoch(&EpochReport { stage: Stage::Warmup, epoch, epochs_in_stage: stage1_epochs, lr: config.stage1_lr, mean_loss, seconds: t.elapsed().as_secs_f64() });
    }
    let mut record = LossRecord::new(train.len());
    let stage2 = config.stage2_epochs();
    for epoch in 0..stage2 {
        let t = Instant::now();
        let lr = config.schedule.lr(epoch);
        let (_, losses) = trainer.epoch(&data, lr, true, observer)?;
        let mean_loss = record.add_epoch(&losses.expect("recorded"));
        final_loss = mean_loss;
        observer.on_epoch(&EpochReport { stage: Stage::Cyclical, epoch, epochs_in_stage: stage2, lr, mean_loss, seconds: t.elapsed().as_secs_f64() });
    }
    let training_seconds = started.elapsed().as_secs_f64();
    let epochs = stage1_epochs + stage2;
    let predicted = trainer.predict(&data.x)?;
    let test_accuracy = match test {
        Some(t) => Some(trainer.accuracy(&t, device)?),
        None => None,
    };
    Ok(O2uOutcome {
        scores: record.scores(),
        loss_variance: record.variances(),
        predicted,
        test_accuracy,
        epochs,
        training_seconds,
        samples_per_second: (train.len() * epochs) as f64 / training_seconds.max(1e-9),
        final_loss,
    })
}

/// Stage 3: trains a fresh network on the samples where `keep` is true and returns its
/// accuracy on `test`.
pub fn retrain(train: Samples, keep: &[bool], test: Samples, config: &O2uConfig, device: &Device, observer: &mut dyn TrainingObserver) -> Result<f64> {
    check(&train)?;
    if keep.len() != train.len() {
        candle_core::bail!("keep mask has {} entries for {} samples", keep.len(), train.len());
    }
    let d = train.shape.len();
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (i, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
        features.extend_from_slice(&train.features[i * d..(i + 1) * d]);
        labels.push(train.labels[i]);
    }
    let kept = Samples { features: &features, labels: &labels, ..train };
    check(&kept)?;
    let data = DeviceSamples::upload(&kept, device)?;
    // A different seed from stages 1-2 so stage 3 does not inherit their initial weights.
    let mut trainer = Trainer::new(config, train.shape, train.classes, config.seed.wrapping_add(1), device)?;
    for epoch in 0..config.retrain_epochs {
        let t = Instant::now();
        let (mean_loss, _) = trainer.epoch(&data, config.stage1_lr, false, observer)?;
        observer.on_epoch(&EpochReport { stage: Stage::Retrain, epoch, epochs_in_stage: config.retrain_epochs, lr: config.stage1_lr, mean_loss, seconds: t.elapsed().as_secs_f64() });
    }
    trainer.accuracy(&test, device)
}

pub(crate) fn check(s: &Samples) -> Result<()> {
    if s.features.len() != s.len() * s.shape.len() {
        candle_core::bail!("{} feature values for {} samples of {} values", s.features.len(), s.len(), s.shape.len());
    }
    if s.len() < 2 {
        candle_core::bail!("need at least 2 samples to train, got {}", s.len());
    }
    if let Some(&bad) = s.labels.iter().find(|&&l| l as usize >= s.classes) {
        candle_core::bail!("label {bad} out of range for {} classes", s.classes);
    }
    Ok(())
}

/// Samples as tensors on the training device, beside the host rows they came from (the CPU
/// MLP trains on those directly).
struct DeviceSamples<'a> {
    host: Samples<'a>,
    x: Tensor,
    y: Tensor,
    n: usize,
}

impl<'a> DeviceSamples<'a> {
    fn upload(s: &Samples<'a>, device: &Device) -> Result<Self> {
        Ok(Self { host: *s, x: Tensor::from_slice(s.features, (s.len(), s.shape.len()), device)?, y: Tensor::from_slice(s.labels, s.len(), device)?, n: s.len() })
    }
}

struct Trainer {
    net: Network,
    steps: Steps,
    rng: WeightRng,
    batch_size: usize,
    device: Device,
}

/// How a trainer takes its SGD steps, each with its own optimiser state.
enum Steps {
    /// An MLP on the CPU: [`cpu_mlp`] (data-parallel, no autograd).
    CpuMlp(CpuMlp),
    /// Other networks and devices: candle's autograd.
    Candle(SgdMomentum),
}

impl Trainer {
    fn new(config: &O2uConfig, shape: InputShape, classes: usize, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = WeightRng::new(seed);
        let net = Network::new(&config.model, shape, classes, &mut rng, device)?;
        let steps = if device.is_cpu() && !net.is_convolutional() {
            Steps::CpuMlp(CpuMlp::new(net.params(), config.momentum, config.weight_decay, candle_core::utils::get_num_threads())?)
        } else {
            Steps::Candle(SgdMomentum::new(net.params(), config.momentum, config.weight_decay))
        };
        Ok(Self { net, steps, rng, batch_size: config.batch_size, device: device.clone() })
    }

    /// Shuffled mini-batches covering every sample once. A trailing batch of one sample is
    /// folded into the previous one (batch-norm needs two).
    fn batches(&mut self, n: usize) -> Vec<Vec<u32>> {
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(self.rng.rng());
        let mut batches: Vec<Vec<u32>> = order.chunks(self.batch_size).map(<[u32]>::to_vec).collect();
        if batches.len() > 1 && batches.last().is_some_and(|b| b.len() == 1) {
            let last = batches.pop().unwrap();
            batches.last_mut().unwrap().extend(last);
        }
        batches
    }

    /// One epoch of SGD; returns the mean loss and, when `record`, each sample's loss from the
    /// training forward pass, indexed by sample.
    fn epoch(&mut self, data: &DeviceSamples, lr: f64, record: bool, observer: &mut dyn TrainingObserver) -> Result<(f64, Option<Vec<f32>>)> {
        let batches = self.batches(data.n);
        let flat = match &mut self.steps {
            Steps::CpuMlp(mlp) => {
                mlp.load()?;
                let mut flat = Vec::with_capacity(data.n);
                for batch in &batches {
                    mlp.step(data.host.features, data.host.labels, batch, lr, &mut flat);
                    observer.on_batch(flat.len());
                }
                mlp.store()?;
                flat
            }
            Steps::Candle(_) => self.candle_epoch(data, &batches, lr, observer)?,
        };
        let mean = flat.iter().map(|&l| l as f64).sum::<f64>() / flat.len().max(1) as f64;
        if !mean.is_finite() {
            candle_core::bail!("training diverged (mean loss {mean}); lower the learning rate");
        }
        let per_sample = record.then(|| {
            let mut by_sample = vec![0f32; data.n];
            for (&i, &l) in batches.iter().flatten().zip(&flat) {
                by_sample[i as usize] = l;
            }
            by_sample
        });
        Ok((mean, per_sample))
    }

    /// An epoch's steps through candle's autograd; each sample's loss in the batches' order.
    fn candle_epoch(&mut self, data: &DeviceSamples, batches: &[Vec<u32>], lr: f64, observer: &mut dyn TrainingObserver) -> Result<Vec<f32>> {
        let Self { net, steps: Steps::Candle(opt), rng, device, .. } = self else { unreachable!("called for candle's steps only") };
        let mut losses = Vec::with_capacity(batches.len());
        let mut done = 0;
        for batch in batches {
            let idx = Tensor::from_slice(batch, batch.len(), device)?;
            let xb = data.x.index_select(&idx, 0)?;
            let yb = data.y.index_select(&idx, 0)?;
            let logits = net.forward(&xb, Some(rng))?;
            let per_sample = per_sample_nll(&logits, &yb)?;
            let loss = per_sample.mean_all()?;
            opt.step(&loss.backward()?, lr)?;
            losses.push(per_sample.detach());
            done += batch.len();
            observer.on_batch(done);
        }
        // One device-to-host copy per epoch, not per batch.
        Tensor::cat(&losses, 0)?.to_vec1::<f32>()
    }

    fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        let n = x.dim(0)?;
        let mut out = Vec::with_capacity(n);
        // Evaluation batches as large as training ones for the CNN (its activations are big),
        // larger for the MLP.
        let chunk = if self.net.is_convolutional() { self.batch_size } else { self.batch_size.max(4096) };
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let logits = self.net.forward(&x.narrow(0, start, len)?, None)?;
            out.extend(logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
        }
        Ok(out)
    }

    /// Softmax class probabilities, row-major.
    fn predict_probabilities(&self, x: &Tensor) -> Result<Vec<f32>> {
        let n = x.dim(0)?;
        let mut out = Vec::new();
        let chunk = if self.net.is_convolutional() { self.batch_size } else { self.batch_size.max(4096) };
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let logits = self.net.forward(&x.narrow(0, start, len)?, None)?;
            out.extend(candle_nn::ops::softmax_last_dim(&logits)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    fn accuracy(&self, test: &Samples, device: &Device) -> Result<f64> {
        let x = Tensor::from_slice(test.features, (test.len(), test.shape.len()), device)?;
        let predicted = self.predict(&x)?;
        let right = predicted.iter().zip(test.labels).filter(|(p, l)| p == l).count();
        Ok(right as f64 / test.len().max(1) as f64)
    }
}

/// Per-sample negative log-likelihood: `log_softmax` + `gather` on the given labels.
pub fn per_sample_nll(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let labels = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    logp.gather(&labels, 1)?.squeeze(1)?.neg()
}

#[cfg(test)]
mod tests;
