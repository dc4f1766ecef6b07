//! The streaming evaluation: vendor deliveries replayed through the real gate state machine
//! ([`crate::gate::Gate`]) and engine ([`crate::gate::window::score_window`]) with the in-memory
//! state store, no Kafka (both are pure), and every verdict compared with the truth.
//!
//! One *case* is a data set (synthetic Gaussian classes, MNIST pixels or the music-genre crowd
//! labels, each optionally with its features replaced by noise: "unlearnable"), a window size, a
//! pool that starts empty or full, and the vendors' wrong-label rates (one vendor per rate). The
//! data and the deliveries are fixed per case; each engine seed replays them, so a window's
//! estimate can be compared across seeds.

mod streams;

use std::{collections::BTreeMap, path::Path, time::Instant};

use anyhow::Result;
use candle_core::Device;
use serde::Serialize;

use super::metrics::spearman;
use crate::{
    accuracy::{self, evidence::EvidenceStatus, ReviewStats},
    config::GateConfig,
    data::LabelledSet,
    gate::{window, Gate, InputMessage, Output, SourcePos},
    o2u::{O2uConfig, Silent},
    state::{MemoryState, StateStore},
    wire::{Decision, VerdictMessage},
};
use streams::{build, wire_record, Stream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StreamData {
    Synthetic,
    Mnist,
    MusicGenre,
    /// The crowd text set of [`crate::data::crowd_text`] (empty pool only).
    CrowdText,
    /// Movie-review sentences, embedded by the default sentence encoder as a text gate would;
    /// the pool's clean samples come from the test split.
    SentencePolarity,
}

impl StreamData {
    /// Whether the records are texts (the gate's text engine settings apply).
    pub fn is_text(self) -> bool {
        matches!(self, StreamData::SentencePolarity)
    }
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
    /// The stream's features moved away from the pool's (the pool keeps the original ones).
    #[serde(default)]
    pub shifted: bool,
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
    /// Records sent to re-review.
    pub rereview: usize,
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
    pub network_weight: Option<f64>,
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
    /// Records sent to re-review, as a share of all records; and the same over the deliveries
    /// whose window could not decide (bounded by the vendors' SLA error budget).
    pub rereview_share: f64,
    pub undecided_rereview_share: f64,
    /// Share of windows whose evidence named a distribution shift.
    pub shifted_window_share: f64,
    /// Vendors (≥ 20 labels) with a gauge at the end of the stream, of those with ≥ 20 labels
    /// (crowd labels), over the seeds.
    pub vendors_with_gauge: Option<(usize, usize)>,
    /// Crowd labels: per-vendor accuracy against the truth (vendors with ≥ 20 labels), mean
    /// over seeds.
    pub vendor_spearman: Option<f64>,
    pub vendor_mae: Option<f64>,
    pub runs: Vec<StreamRun>,
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
        InputMessage { key: None, payload, headers: Vec::new(), pos: SourcePos { partition: 0, offset } }
    };
    let index: BTreeMap<&str, &Vec<usize>> = stream.deliveries.iter().map(|(b, _, idx)| (b.as_str(), idx)).collect();
    let mut run = StreamRun { seed, deliveries: Vec::new(), windows: Vec::new(), vendors: BTreeMap::new(), seconds: 0.0 };
    let drain = |gate: &mut Gate, run: &mut StreamRun, force: bool| -> Result<()> {
        let now = if force { clock + std::time::Duration::from_secs(3600 * 24) } else { clock };
        if force {
            // The replay is the whole stream: its one partition is read to its end.
            gate.partition_at_end(0, true, clock);
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
                network_weight: e.network_weight,
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
    run.vendors = vendor_figures(&stream, &state, config.min_reviews)?;
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

/// Per vendor: labels, true accuracy, and the gauge's estimate from the store's history.
/// Per vendor: (labels, true accuracy, the gauge's estimate).
type VendorFigures = BTreeMap<String, (usize, f64, Option<f64>)>;

fn vendor_figures(stream: &Stream, state: &MemoryState, min_reviews: u64) -> Result<VendorFigures> {
    let (set, truth) = (&stream.set, stream.set.truth.as_ref().expect("evaluation needs the truth"));
    let mut by_vendor: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (_, vendor, idx) in &stream.deliveries {
        let e = by_vendor.entry(vendor.as_str()).or_default();
        e.0 += idx.len();
        e.1 += idx.iter().filter(|&&i| set.labels[i] == truth[i]).count();
    }
    let mut figures = BTreeMap::new();
    for (vendor, (n, right)) in by_vendor {
        let history = state.vendor_history(vendor, 0)?;
        let estimate = accuracy::rolling_accuracy(&history, ReviewStats::default(), min_reviews);
        figures.insert(vendor.to_string(), (n, right as f64 / n as f64, estimate));
    }
    Ok(figures)
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
        rereview: v.rereview,
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
    if matches!(case.data, StreamData::MusicGenre | StreamData::CrowdText) {
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
        rereview_share: all.iter().map(|d| d.rereview).sum::<usize>() as f64 / all.iter().map(|d| d.records).sum::<usize>().max(1) as f64,
        undecided_rereview_share: {
            let undecided: Vec<&&DeliveryOutcome> = all.iter().filter(|d| d.estimated_accuracy.is_none()).collect();
            undecided.iter().map(|d| d.rereview).sum::<usize>() as f64 / undecided.iter().map(|d| d.records).sum::<usize>().max(1) as f64
        },
        shifted_window_share: {
            let windows: Vec<&WindowOutcome> = runs.iter().flat_map(|r| &r.windows).collect();
            windows.iter().filter(|w| w.status == EvidenceStatus::Shifted).count() as f64 / windows.len().max(1) as f64
        },
        vendors_with_gauge: matches!(case.data, StreamData::MusicGenre | StreamData::CrowdText).then(|| {
            let eligible: Vec<&(usize, f64, Option<f64>)> = runs.iter().flat_map(|r| r.vendors.values()).filter(|(n, _, _)| *n >= 20).collect();
            (eligible.iter().filter(|(_, _, e)| e.is_some()).count(), eligible.len())
        }),
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
        "| {:?}{}{} | {} | {:?} | {} | {}/{} | {}/{} | {:.3} | {} | {} | {} | {:.2} | {:.2} | {:.3} | {:.3} | {:.2} | {} | {} | {} |",
        s.case.data,
        if s.case.unlearnable { " (unlearnable)" } else { "" },
        if s.case.shifted { " (shifted)" } else { "" },
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
        s.rereview_share,
        s.undecided_rereview_share,
        s.shifted_window_share,
        f(s.vendor_spearman),
        f(s.vendor_mae),
        s.vendors_with_gauge.map_or("-".to_string(), |(g, n)| format!("{g}/{n}")),
    )
}

pub const TABLE_HEADER: &str = "| data | window | pool | deliveries | false rejects / good | false accepts / bad ≥500 | coverage | median abs err ≥1000 | max abs err ≥1000 | max window spread | review share | insufficient share | re-review share | undecided re-review share | shifted windows | vendor ρ | vendor MAE | vendors with a gauge |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";
