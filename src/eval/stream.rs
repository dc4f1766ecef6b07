//! The streaming evaluation: vendor deliveries replayed through the real gate state machine
//! ([`crate::gate::Gate`]) and engine ([`crate::gate::window::score_window`]) with the in-memory
//! state store, no Kafka (both are pure), and every verdict compared with the truth.
//!
//! One *case* is a data set (synthetic Gaussian classes, MNIST pixels or the music-genre crowd
//! labels, each optionally with its features replaced by noise: "unlearnable"), a window size, a
//! pool that starts empty or full, and the vendors' wrong-label rates (one vendor per rate). The
//! data and the deliveries are fixed per case; each engine seed replays them, so a window's
//! estimate can be compared across seeds.

use std::{collections::BTreeMap, path::Path, time::Instant};

use anyhow::{bail, Result};
use candle_core::Device;
use rand::{seq::SliceRandom, RngExt, SeedableRng};
use serde::Serialize;

use super::metrics::spearman;
use crate::{
    accuracy::{self, evidence::EvidenceStatus, ReviewStats},
    config::GateConfig,
    data::{self, LabelledSet},
    gate::{window, Gate, InputMessage, Output, SourcePos},
    o2u::{O2uConfig, Silent},
    state::{MemoryState, StateStore},
    wire::{Decision, VerdictMessage},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StreamData {
    Synthetic,
    Mnist,
    MusicGenre,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PoolStart {
    Empty,
    Full,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamCase {
    pub data: StreamData,
    pub unlearnable: bool,
    pub window: usize,
    pub pool: PoolStart,
    /// One vendor per rate (ignored for the crowd labels, whose noise is real).
    pub vendor_noise: Vec<f64>,
}

/// One delivery's verdict beside its truth.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryOutcome {
    pub batch_id: String,
    pub vendor_id: String,
    pub records: usize,
    pub window: usize,
    pub true_accuracy: f64,
    pub estimated_accuracy: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub sla: f64,
    pub decision: Decision,
    pub review_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowOutcome {
    pub records: usize,
    pub true_wrong_share: f64,
    pub wrong_share: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub status: EvidenceStatus,
    pub readings: Vec<(String, f64)>,
    pub lift: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamRun {
    pub seed: u64,
    pub deliveries: Vec<DeliveryOutcome>,
    pub windows: Vec<WindowOutcome>,
    /// Per vendor at the end of the stream: (true accuracy, the gate's rolling accuracy).
    pub vendors: BTreeMap<String, (usize, f64, Option<f64>)>,
    pub seconds: f64,
}

/// The figures the targets are stated in, over every seed of a case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    pub case: StreamCase,
    pub seeds: Vec<u64>,
    pub deliveries: usize,
    /// Deliveries whose true accuracy is at least SLA + 0.03, and how many of them were rejected.
    pub good_deliveries: usize,
    pub false_rejects: usize,
    /// Deliveries of ≥ 500 records at most SLA − 0.10 accurate, and how many were accepted.
    pub bad_large_deliveries: usize,
    pub false_accepts: usize,
    /// Share of deliveries (with an interval) whose interval holds the true accuracy.
    pub coverage: f64,
    /// |estimate − truth| over deliveries of ≥ 1,000 records with an estimate.
    pub median_abs_error_1000: Option<f64>,
    pub max_abs_error_1000: Option<f64>,
    pub median_abs_error: Option<f64>,
    /// Largest spread (max − min over seeds) of one window's wrong-share estimate.
    pub max_window_spread: Option<f64>,
    pub review_share: f64,
    pub insufficient_share: f64,
    /// Crowd labels: per-vendor accuracy against the truth (vendors with ≥ 20 labels), mean
    /// over seeds.
    pub vendor_spearman: Option<f64>,
    pub vendor_mae: Option<f64>,
    pub runs: Vec<StreamRun>,
}

/// A stream: the set (given labels, truth), its deliveries in arrival order, and clean samples
/// for a full pool.
struct Stream {
    set: LabelledSet,
    deliveries: Vec<(String, String, Vec<usize>)>,
    pool: Vec<(u32, Vec<f32>)>,
}

const DATA_SEED: u64 = 20_261_129;

fn synthetic(n: usize, seed: u64) -> LabelledSet {
    let (dim, classes) = (32, 10);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut means = vec![0f32; dim * classes];
    for m in means.iter_mut() {
        *m = (rng.random::<f32>() - 0.5) * 1.8;
    }
    let mut features = Vec::with_capacity(n * dim);
    let mut truth = Vec::with_capacity(n);
    for _ in 0..n {
        let c = rng.random_range(0..classes);
        for j in 0..dim {
            features.push(means[c * dim + j] + gaussian(&mut rng));
        }
        truth.push(c as u32);
    }
    LabelledSet {
        sample_ids: (0..n).map(|i| format!("g{i}")).collect(),
        features,
        shape: crate::o2u::InputShape::Vector { dim },
        labels: truth.clone(),
        classes: (0..classes).map(|c| c.to_string()).collect(),
        truth: Some(truth),
        annotators: None,
        items: None,
    }
}

fn gaussian(rng: &mut rand_chacha::ChaCha8Rng) -> f32 {
    // Box–Muller.
    let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

fn noise_features(set: &mut LabelledSet, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xdead);
    for f in set.features.iter_mut() {
        *f = gaussian(&mut rng);
    }
}

/// Delivery sizes between a tenth and half of the window (at least 20, at most 5,000 records).
fn sizes(window: usize, total: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<usize> {
    let hi = (window / 2).clamp(20, 5000);
    let lo = (window / 10).max(20).min(hi);
    let mut out = Vec::new();
    let mut left = total;
    while left >= lo {
        let s = rng.random_range(lo..=hi).min(left);
        out.push(s);
        left -= s;
    }
    out
}

fn build(case: &StreamCase, data_dir: &Path, pool_size: usize) -> Result<Stream> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(DATA_SEED);
    if case.data == StreamData::MusicGenre {
        return music_stream(case, data_dir, &mut rng);
    }
    // Three windows' worth of records (at least 4,000), plus the pool's clean samples.
    let stream_records = (3 * case.window).max(4000);
    let (mut set, mut pool_set) = match case.data {
        StreamData::Synthetic => {
            let all = synthetic(stream_records + pool_size, DATA_SEED);
            split(all, stream_records)
        }
        StreamData::Mnist => {
            let mut train = data::mnist::load(data_dir, "train")?;
            if train.len() < stream_records {
                bail!("MNIST has {} training images; a window of {} needs {stream_records}", train.len(), case.window);
            }
            train.truncate(stream_records);
            let mut test = data::mnist::load(data_dir, "t10k")?;
            test.truncate(pool_size);
            (train, test)
        }
        StreamData::MusicGenre => unreachable!(),
    };
    if case.unlearnable {
        noise_features(&mut set, DATA_SEED);
        noise_features(&mut pool_set, DATA_SEED + 1);
    }
    let truth = set.truth.clone().expect("synthetic and MNIST carry the truth");
    let classes = set.classes.len() as u32;
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.shuffle(&mut rng);
    let mut deliveries = Vec::new();
    let mut next = 0;
    for (i, size) in sizes(case.window, set.len(), &mut rng).into_iter().enumerate() {
        let v = i % case.vendor_noise.len();
        let rate = case.vendor_noise[v];
        let idx: Vec<usize> = order[next..next + size].to_vec();
        for &j in &idx {
            if rng.random::<f64>() < rate {
                set.labels[j] = (truth[j] + rng.random_range(1..classes)) % classes;
            }
        }
        deliveries.push((format!("d{i:04}-v{v}"), format!("vendor-{:02}pct", (rate * 100.0).round() as u32), idx));
        next += size;
    }
    let dim = set.shape.len();
    let pool = match case.pool {
        PoolStart::Empty => Vec::new(),
        PoolStart::Full => (0..pool_set.len()).map(|i| (pool_set.truth.as_ref().unwrap()[i], pool_set.features[i * dim..(i + 1) * dim].to_vec())).collect(),
    };
    Ok(Stream { set, deliveries, pool })
}

fn split(all: LabelledSet, n: usize) -> (LabelledSet, LabelledSet) {
    let dim = all.shape.len();
    let take = |range: std::ops::Range<usize>| LabelledSet {
        sample_ids: all.sample_ids[range.clone()].to_vec(),
        features: all.features[range.start * dim..range.end * dim].to_vec(),
        shape: all.shape,
        labels: all.labels[range.clone()].to_vec(),
        classes: all.classes.clone(),
        truth: all.truth.as_ref().map(|t| t[range.clone()].to_vec()),
        annotators: None,
        items: None,
    };
    (take(0..n), take(n..all.len()))
}

/// The crowd labels: each worker a vendor, its labels in deliveries of at most 60, the sample_id
/// the song (shared by the workers who labelled it), deliveries in a random order so that a
/// song's labels arrive in different windows.
fn music_stream(case: &StreamCase, data_dir: &Path, rng: &mut rand_chacha::ChaCha8Rng) -> Result<Stream> {
    let mut set = data::music_genre::load_crowd(data_dir)?;
    let mut pool_set = data::music_genre::load_test(data_dir, &set.classes)?;
    if case.unlearnable {
        noise_features(&mut set, DATA_SEED);
        noise_features(&mut pool_set, DATA_SEED + 1);
    }
    let annotators = set.annotators.clone().expect("crowd labels name their workers");
    let mut by_worker: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, w) in annotators.iter().enumerate() {
        by_worker.entry(w.as_str()).or_default().push(i);
    }
    let mut deliveries = Vec::new();
    for (w, idx) in by_worker {
        for (k, chunk) in idx.chunks(60).enumerate() {
            deliveries.push((format!("{w}-{k}"), w.to_string(), chunk.to_vec()));
        }
    }
    deliveries.shuffle(rng);
    let dim = set.shape.len();
    let pool = match case.pool {
        PoolStart::Empty => Vec::new(),
        PoolStart::Full => (0..pool_set.len()).map(|i| (pool_set.labels[i], pool_set.features[i * dim..(i + 1) * dim].to_vec())).collect(),
    };
    Ok(Stream { set, deliveries, pool })
}

fn wire_record(set: &LabelledSet, i: usize, batch_id: &str, vendor: &str) -> Vec<u8> {
    let dim = set.shape.len();
    let sample_id = set.items.as_ref().map_or(&set.sample_ids[i], |items| &items[i]);
    serde_json::json!({
        "sample_id": sample_id,
        "batch_id": batch_id,
        "vendor_id": vendor,
        "label": set.classes[set.labels[i] as usize],
        "features": &set.features[i * dim..(i + 1) * dim],
    })
    .to_string()
    .into_bytes()
}

/// Replays one case with one engine seed.
pub fn run_case(case: &StreamCase, data_dir: &Path, gate_config: &GateConfig, engine: &O2uConfig, seed: u64, device: &Device) -> Result<StreamRun> {
    let started = Instant::now();
    let stream = build(case, data_dir, gate_config.reference_pool_size)?;
    let set = &stream.set;
    let truth = set.truth.as_ref().expect("evaluation needs the truth");
    let mut config = gate_config.clone();
    config.classes = set.classes.clone();
    config.feature_dim = set.shape.len();
    config.min_window_records = case.window;
    config.max_window_records = case.window;
    config.max_buffered_records = config.max_buffered_records.max(4 * case.window);
    let engine = O2uConfig { seed, ..engine.clone() };
    let policy = crate::gate::window::WindowPolicy::from_config(&config);
    let mut gate = Gate::new(config.clone(), usize::MAX / 2, "eval".into(), "eval".into());
    gate.restore_pool(stream.pool.iter().cloned());
    let state = MemoryState::default();
    let clock = Instant::now();
    let mut offset = 0i64;
    let mut message = |payload: Vec<u8>| {
        offset += 1;
        InputMessage { key: None, payload, pos: SourcePos { partition: 0, offset } }
    };
    let index: BTreeMap<&str, &Vec<usize>> = stream.deliveries.iter().map(|(b, _, idx)| (b.as_str(), idx)).collect();
    let mut run = StreamRun { seed, deliveries: Vec::new(), windows: Vec::new(), vendors: BTreeMap::new(), seconds: 0.0 };
    let drain = |gate: &mut Gate, run: &mut StreamRun, force: bool| -> Result<()> {
        let now = if force { clock + std::time::Duration::from_secs(3600 * 24) } else { clock };
        if force {
            gate.close_idle(now);
        }
        while gate.window_due(now) {
            let Some(mut job) = gate.take_window() else { break };
            let prior = state.sample_labels(&job.data.distinct_sample_ids())?;
            job.data.attach_prior_labels(prior);
            let batch_rows: Vec<usize> = job.batch_ids().iter().flat_map(|b| index[b.as_str()].iter().copied()).collect();
            let data = job.take_data();
            let scores = window::score_window(data, &engine, &policy, device, &mut Silent)?;
            let wrong = batch_rows.iter().filter(|&&i| set.labels[i] != truth[i]).count();
            let e = &scores.evidence;
            run.windows.push(WindowOutcome {
                records: batch_rows.len(),
                true_wrong_share: wrong as f64 / batch_rows.len().max(1) as f64,
                wrong_share: e.wrong_share,
                ci_low: e.wrong_share_ci_low,
                ci_high: e.wrong_share_ci_high,
                status: e.status,
                readings: e.readings.iter().map(|r| (format!("{:?}", r.estimator), r.wrong_share)).collect(),
                lift: e.model_fit.map(|f| f.lift),
            });
            let reviews: std::collections::HashMap<String, ReviewStats> = std::collections::HashMap::new();
            let commit = gate.finish_window(job, &scores, &reviews, crate::clock::unix_millis());
            state.save_window(&commit.state)?;
            for o in &commit.outputs {
                if let Output::Verdict(v) = o {
                    run.deliveries.push(outcome(v, index[v.batch_id.as_str()], set, truth, run.windows.len() - 1));
                }
            }
        }
        Ok(())
    };
    for (batch_id, vendor, idx) in &stream.deliveries {
        for &i in idx {
            gate.ingest(message(wire_record(set, i, batch_id, vendor)), clock);
        }
        let end = serde_json::json!({"type": "batch_end", "batch_id": batch_id, "vendor_id": vendor, "count": idx.len()});
        gate.ingest(message(end.to_string().into_bytes()), clock);
        drain(&mut gate, &mut run, false)?;
    }
    drain(&mut gate, &mut run, true)?;
    let mut by_vendor: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (_, vendor, idx) in &stream.deliveries {
        let e = by_vendor.entry(vendor.as_str()).or_default();
        e.0 += idx.len();
        e.1 += idx.iter().filter(|&&i| set.labels[i] == truth[i]).count();
    }
    for (vendor, (n, right)) in by_vendor {
        let history = state.vendor_history(vendor, 0)?;
        let estimate = accuracy::rolling_accuracy(&history, ReviewStats::default(), config.min_reviews);
        run.vendors.insert(vendor.to_string(), (n, right as f64 / n as f64, estimate));
    }
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

fn outcome(v: &VerdictMessage, idx: &[usize], set: &LabelledSet, truth: &[u32], window: usize) -> DeliveryOutcome {
    let right = idx.iter().filter(|&&i| set.labels[i] == truth[i]).count();
    DeliveryOutcome {
        batch_id: v.batch_id.clone(),
        vendor_id: v.vendor_id.clone(),
        records: v.records,
        window,
        true_accuracy: right as f64 / idx.len().max(1) as f64,
        estimated_accuracy: v.estimated_accuracy,
        ci_low: v.accuracy_ci_low,
        ci_high: v.accuracy_ci_high,
        sla: v.sla_accuracy,
        decision: v.decision,
        review_reason: v.review_reason.clone(),
    }
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(xs[xs.len() / 2])
}

/// Runs a case over `seeds` and summarises it against the targets.
pub fn evaluate_case(case: StreamCase, data_dir: &Path, gate_config: &GateConfig, engine: &O2uConfig, seeds: &[u64], device: &Device) -> Result<CaseSummary> {
    let runs = seeds.iter().map(|&s| run_case(&case, data_dir, gate_config, engine, s, device)).collect::<Result<Vec<_>>>()?;
    let all: Vec<&DeliveryOutcome> = runs.iter().flat_map(|r| &r.deliveries).collect();
    let good: Vec<&&DeliveryOutcome> = all.iter().filter(|d| d.true_accuracy >= d.sla + 0.03).collect();
    let bad: Vec<&&DeliveryOutcome> = all.iter().filter(|d| d.records >= 500 && d.true_accuracy <= d.sla - 0.10).collect();
    let estimated: Vec<&&DeliveryOutcome> = all.iter().filter(|d| d.estimated_accuracy.is_some()).collect();
    // Every interval counts, also those of deliveries that got no figure.
    let with_interval: Vec<&&DeliveryOutcome> = all.iter().filter(|d| d.ci_low.is_some()).collect();
    let covered = with_interval.iter().filter(|d| d.ci_low.unwrap() - 1e-9 <= d.true_accuracy && d.true_accuracy <= d.ci_high.unwrap() + 1e-9).count();
    let errors = |min: usize| -> Vec<f64> { estimated.iter().filter(|d| d.records >= min).map(|d| (d.estimated_accuracy.unwrap() - d.true_accuracy).abs()).collect() };
    let windows = runs.iter().map(|r| r.windows.len()).min().unwrap_or(0);
    let max_window_spread = (runs.len() > 1 && windows > 0).then(|| {
        (0..windows)
            .map(|w| {
                let shares: Vec<f64> = runs.iter().map(|r| r.windows[w].wrong_share).collect();
                shares.iter().cloned().fold(f64::NEG_INFINITY, f64::max) - shares.iter().cloned().fold(f64::INFINITY, f64::min)
            })
            .fold(0.0, f64::max)
    });
    let (mut rhos, mut maes) = (Vec::new(), Vec::new());
    if case.data == StreamData::MusicGenre {
        for r in &runs {
            let rows: Vec<(f64, f64)> = r.vendors.values().filter(|(n, _, e)| *n >= 20 && e.is_some()).map(|(_, t, e)| (*t, e.unwrap())).collect();
            if rows.len() >= 3 {
                let (t, e): (Vec<f64>, Vec<f64>) = rows.iter().copied().unzip();
                rhos.push(spearman(&e, &t));
                maes.push(rows.iter().map(|(t, e)| (t - e).abs()).sum::<f64>() / rows.len() as f64);
            }
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let e1000 = errors(1000);
    Ok(CaseSummary {
        seeds: seeds.to_vec(),
        deliveries: all.len(),
        good_deliveries: good.len(),
        false_rejects: good.iter().filter(|d| d.decision == Decision::Reject).count(),
        bad_large_deliveries: bad.len(),
        false_accepts: bad.iter().filter(|d| d.decision == Decision::Accept).count(),
        coverage: covered as f64 / with_interval.len().max(1) as f64,
        median_abs_error_1000: median(e1000.clone()),
        max_abs_error_1000: e1000.iter().cloned().reduce(f64::max),
        median_abs_error: median(errors(0)),
        max_window_spread,
        review_share: all.iter().filter(|d| d.decision == Decision::Review).count() as f64 / all.len().max(1) as f64,
        insufficient_share: all.iter().filter(|d| d.review_reason.as_deref() == Some("insufficient_evidence")).count() as f64 / all.len().max(1) as f64,
        vendor_spearman: mean(&rhos),
        vendor_mae: mean(&maes),
        case,
        runs,
    })
}

/// One line per case, for the terminal and docs/benchmarks.md.
pub fn table_row(s: &CaseSummary) -> String {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
    format!(
        "| {:?}{} | {} | {:?} | {} | {}/{} | {}/{} | {:.3} | {} | {} | {} | {:.2} | {:.2} | {} | {} |",
        s.case.data,
        if s.case.unlearnable { " (unlearnable)" } else { "" },
        s.case.window,
        s.case.pool,
        s.deliveries,
        s.false_rejects,
        s.good_deliveries,
        s.false_accepts,
        s.bad_large_deliveries,
        s.coverage,
        f(s.median_abs_error_1000),
        f(s.max_abs_error_1000),
        f(s.max_window_spread),
        s.review_share,
        s.insufficient_share,
        f(s.vendor_spearman),
        f(s.vendor_mae),
    )
}

pub const TABLE_HEADER: &str = "| data | window | pool | deliveries | false rejects / good | false accepts / bad ≥500 | coverage | median abs err ≥1000 | max abs err ≥1000 | max window spread | review share | insufficient share | vendor ρ | vendor MAE |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";
