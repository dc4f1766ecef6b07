//! `labelgate demo`: the whole gate with no services. librdkafka's mock cluster stands in for
//! Kafka; vendor deliveries are made from the real data in the data directory (MNIST digits with
//! a different injected noise rate per vendor, then the music-genre crowd labels with each
//! worker as a vendor, then movie-review sentences as text records that the gate embeds itself);
//! the gate runs, and the verdicts and suspects are checked against the truth.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::{
    config::ClientConfig,
    mocking::MockCluster,
    producer::{BaseProducer, BaseRecord, Producer},
};
use serde::Serialize;
use serde_json::json;

use crate::{
    config::Config,
    data::{self, LabelledSet},
    noise::NoiseModel,
    service::{self, Hooks, RunSummary},
    wire::{RereviewMessage, VerdictMessage},
};

/// One vendor's deliveries for the demo.
struct Scenario {
    name: &'static str,
    set: LabelledSet,
    /// (batch_id, vendor_id, sample indices)
    deliveries: Vec<(String, String, Vec<usize>)>,
    /// Known-answer items: their gold label is the truth.
    gold: HashSet<usize>,
    extra_bad_records: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DeliveryReport {
    pub batch_id: String,
    pub vendor_id: String,
    pub records: usize,
    pub true_accuracy: f64,
    pub verdict: VerdictMessage,
}

#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub input_records: usize,
    pub summary: RunSummary,
    pub deliveries: Vec<DeliveryReport>,
    pub suspects: usize,
    pub suspect_precision: f64,
    pub suspect_recall: f64,
    pub seconds: f64,
}

fn mnist_scenario(dir: &Path, per_delivery: usize) -> Result<Scenario> {
    // Raw pixels in [0, 1], as a vendor would send them: the gate standardises each window.
    let mut set = data::mnist::load(dir, "train")?;
    let vendors = [("acme-labels", 0.03), ("bolt-annotate", 0.12), ("crux-crowd", 0.35)];
    let deliveries_per_vendor = 2;
    let total = vendors.len() * deliveries_per_vendor * per_delivery;
    set.truncate(total);
    let truth = set.truth.clone().unwrap();
    let mut labels = truth.clone();
    let mut deliveries = Vec::new();
    let mut next = 0;
    for (v, (vendor, rate)) in vendors.iter().enumerate() {
        for d in 0..deliveries_per_vendor {
            let idx: Vec<usize> = (next..next + per_delivery).collect();
            let slice: Vec<u32> = idx.iter().map(|&i| truth[i]).collect();
            let noisy = NoiseModel::Symmetric(*rate).apply(&slice, 10, (v * 10 + d) as u64);
            for (&i, l) in idx.iter().zip(noisy) {
                labels[i] = l;
            }
            deliveries.push((format!("{vendor}-{:03}", d + 1), vendor.to_string(), idx));
            next += per_delivery;
        }
    }
    set.labels = labels;
    let gold = (0..total).filter(|i| i % 20 == 7).collect();
    let extra_bad_records = vec![
        "{\"sample_id\": \"broken".into(),
        json!({"sample_id": "short-1", "batch_id": "acme-labels-001", "vendor_id": "acme-labels", "label": "3", "features": [0.1, 0.2]}).to_string(),
        json!({"sample_id": "cow-1", "batch_id": "bolt-annotate-001", "vendor_id": "bolt-annotate", "label": "cow", "features": vec![0.0; 784]}).to_string(),
    ];
    Ok(Scenario { name: "MNIST vendors (3% / 12% / 35% of labels flipped)", set, deliveries, gold, extra_bad_records })
}

/// Text deliveries: sentences a vendor labelled, sent as `text`. Vendors and their error rates as
/// for MNIST; fewer records per delivery, as each is embedded.
fn text_scenario(dir: &Path, per_delivery: usize) -> Result<Scenario> {
    let mut set = data::sentence_polarity::load(dir)?;
    let vendors = [("acme-labels", 0.03), ("bolt-annotate", 0.12), ("crux-crowd", 0.35)];
    let per_delivery = per_delivery.min(500);
    set.truncate(vendors.len() * 2 * per_delivery);
    let truth = set.truth.clone().expect("polarity is known");
    let mut deliveries = Vec::new();
    for (v, (vendor, rate)) in vendors.iter().enumerate() {
        for d in 0..2 {
            let start = (v * 2 + d) * per_delivery;
            let idx: Vec<usize> = (start..start + per_delivery).collect();
            let slice: Vec<u32> = idx.iter().map(|&i| truth[i]).collect();
            for (&i, l) in idx.iter().zip(NoiseModel::Symmetric(*rate).apply(&slice, 2, (v * 10 + d) as u64)) {
                set.labels[i] = l;
            }
            deliveries.push((format!("{vendor}-text-{:03}", d + 1), vendor.to_string(), idx));
        }
    }
    let extra_bad_records = vec![
        json!({"sample_id": "empty-1", "batch_id": "acme-labels-text-001", "vendor_id": "acme-labels", "label": "positive", "text": " "}).to_string(),
        json!({"sample_id": "mixed-1", "batch_id": "acme-labels-text-001", "vendor_id": "acme-labels", "label": "positive", "text": "fine", "features": [0.5]}).to_string(),
    ];
    Ok(Scenario { name: "movie-review sentences as text (3% / 12% / 35% of labels flipped)", set, deliveries, gold: HashSet::new(), extra_bad_records })
}

fn music_scenario(dir: &Path) -> Result<Scenario> {
    let set = data::music_genre::load_crowd(dir)?;
    let annotators = set.annotators.clone().unwrap();
    let mut by_worker: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, w) in annotators.iter().enumerate() {
        by_worker.entry(w.clone()).or_default().push(i);
    }
    let deliveries = by_worker.into_iter().map(|(w, idx)| (format!("mturk-{w}"), w, idx)).collect();
    Ok(Scenario { name: "music-genre crowd (44 MTurk workers as vendors)", set, deliveries, gold: HashSet::new(), extra_bad_records: vec![] })
}

/// The sample id on the wire: what was labelled (the song, for crowd labels, so that workers'
/// labels of one song meet in a window as agreement), else the sample's own id.
fn wire_id(set: &LabelledSet, i: usize) -> &str {
    set.items.as_ref().map_or(set.sample_ids[i].as_str(), |items| items[i].as_str())
}

fn scenario_config(s: &Scenario, bootstrap: &str, prefix: &str) -> Result<Config> {
    let mut config = Config::load(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.kafka.bootstrap_servers = bootstrap.to_string();
    config.kafka.group_id = format!("{prefix}-gate");
    config.kafka.instance_id = format!("{prefix}-demo");
    let k = &mut config.kafka;
    k.input_topic = format!("{prefix}.annotations");
    k.accepted_topic = format!("{prefix}.annotations.accepted");
    k.rereview_topic = format!("{prefix}.annotations.rereview");
    k.verdicts_topic = format!("{prefix}.annotations.verdicts");
    k.dlq_topic = format!("{prefix}.annotations.dlq");
    k.progress_topic = format!("{prefix}.labelgate.progress");
    k.reviews_topic = format!("{prefix}.annotations.reviews");
    // Zero setup: state in this process, no HTTP server.
    config.state.backend = crate::config::StateBackend::Memory;
    config.metrics.listen = String::new();
    if s.set.texts.is_some() {
        // What loading a file with gate.input = "text" gives: the text gate's engine settings.
        let text = Config::text_defaults();
        (config.gate.input, config.engine, config.gate.crossfit_min_steps) = (text.gate.input, text.engine, text.gate.crossfit_min_steps);
    }
    config.gate.classes = s.set.classes.clone();
    config.gate.feature_dim = s.set.shape.len();
    config.gate.delivery_timeout_secs = 5;
    config.gate.max_window_wait_secs = 2;
    config.gate.min_window_records = s.set.len().min(2000);
    config.gate.max_window_records = s.set.len().max(2000);
    config.gate.max_buffered_records = config.gate.max_window_records * 2;
    if s.set.texts.is_none() && s.set.shape.len() < 200 {
        // Small crowd sets (2,945 labels of 124 features) need more warm-up steps than MNIST
        // windows before their losses separate (see docs/benchmarks.md).
        config.engine.stage1_epochs = 20;
        // and are scored as one window: 44 small deliveries, one per worker.
        config.gate.min_window_records = s.set.len();
    }
    Ok(config)
}

/// Produces every delivery and the bad records; returns (annotation and bad records, batch_end markers).
fn produce(s: &Scenario, config: &Config) -> Result<(usize, usize)> {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &config.kafka.bootstrap_servers).set("linger.ms", "5").create()?;
    let topic = &config.kafka.input_topic;
    let dim = s.set.shape.len();
    let truth = s.set.truth.as_ref().unwrap();
    let image = match s.set.shape {
        crate::o2u::InputShape::Image { channels, height, width } => Some([height, width, channels]),
        crate::o2u::InputShape::Vector { .. } => None,
    };
    let mut sent = 0;
    let mut push = |key: &str, payload: String| -> Result<()> {
        service::send_retrying_when_full(&producer, BaseRecord::to(topic).key(key.as_bytes()).payload(payload.as_bytes()))?;
        sent += 1;
        Ok(())
    };
    for (batch, vendor, idx) in &s.deliveries {
        for &i in idx {
            let mut rec = json!({
                "sample_id": wire_id(&s.set, i),
                "batch_id": batch,
                "vendor_id": vendor,
                "label": s.set.classes[s.set.labels[i] as usize],
            });
            let values = &s.set.features[i * dim..(i + 1) * dim];
            match (image, &s.set.texts) {
                (_, Some(texts)) => rec["text"] = json!(texts[i].text),
                // Images travel as base64 u8 pixels: a fifth of the bytes of a JSON array (the
                // mock cluster keeps only 5 MB per partition).
                (Some(shape), None) => {
                    use base64::Engine;
                    let pixels: Vec<u8> = values.iter().map(|v| (v * 255.0).round() as u8).collect();
                    rec["image"] = json!({"shape": shape, "data_b64": base64::engine::general_purpose::STANDARD.encode(pixels)});
                }
                (None, None) => rec["features"] = json!(values),
            }
            if s.gold.contains(&i) {
                rec["gold_label"] = json!(s.set.classes[truth[i] as usize]);
            }
            push(batch, rec.to_string())?;
        }
        push(batch, json!({"type": "batch_end", "batch_id": batch, "vendor_id": vendor, "count": idx.len()}).to_string())?;
    }
    for bad in &s.extra_bad_records {
        push("bad", bad.clone())?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok((sent - s.deliveries.len(), s.deliveries.len()))
}

async fn run_scenario(s: &Scenario, mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>, prefix: &str) -> Result<ScenarioReport> {
    let started = Instant::now();
    let config = scenario_config(s, &mock.bootstrap_servers(), prefix)?;
    let k = &config.kafka;
    mock.create_topic(&k.input_topic, 8, 1)?;
    // The reviews topic too: the gate subscribes to it at start (a reviewer's answers arrive there).
    for t in [&k.accepted_topic, &k.rereview_topic, &k.verdicts_topic, &k.dlq_topic, &k.reviews_topic] {
        mock.create_topic(t, 4, 1)?;
    }
    mock.create_topic(&k.progress_topic, 1, 1)?;
    let (input_records, markers) = produce(s, &config)?;
    println!("\n== {}: {} records ({} bad on purpose) in {} deliveries, each closed by a batch_end, produced to {}", s.name, input_records, s.extra_bad_records.len(), markers, k.input_topic);

    let bar = ProgressBar::new(1);
    bar.set_style(ProgressStyle::with_template("   {spinner} {msg} [{bar:30}] {pos}/{len} epochs").expect("template").progress_chars("=> "));
    let verdicts = Arc::new(Mutex::new(Vec::<VerdictMessage>::new()));
    let (hooks, all_verdicts) = Hooks::until_verdicts(s.deliveries.len() as u64);
    let hooks = progress_hooks(hooks, &bar, &config).also_on_verdict(Arc::new({
        let verdicts = verdicts.clone();
        move |v: &VerdictMessage| verdicts.lock().unwrap().push(v.clone())
    }));
    let deadline = tokio::time::sleep(Duration::from_secs(240));
    let summary = service::run(config.clone(), hooks, async move {
        tokio::select! { _ = all_verdicts.wait() => {}, _ = deadline => tracing::warn!("demo: not every delivery got a verdict in 240 s") }
        // Let the dead letters of the last poll flush.
        tokio::time::sleep(Duration::from_millis(800)).await;
    })
    .await?;
    bar.finish_and_clear();
    let verdicts = std::mem::take(&mut *verdicts.lock().unwrap());
    score_against_truth(s, &config, input_records, summary, verdicts, started)
}

/// The progress bar follows each window's epochs.
fn progress_hooks(hooks: Hooks, bar: &ProgressBar, config: &Config) -> Hooks {
    // Windows whose labels overlap train stage 1 longer: allow for the longest.
    let engine = crate::gate::window::WindowPolicy::from_config(&config.gate).engine_for(&config.engine, true);
    Hooks {
        on_window_start: Some(Arc::new({
            let bar = bar.clone();
            move |id: &str, records: usize, deliveries: usize| {
                // Small windows train stage 1 longer; the pool's rows and the labels' overlap are
                // not known here, so this is the most it can be.
                bar.set_length((engine.stage1_epochs_for(records) + engine.stage2_epochs()) as u64);
                bar.set_position(0);
                bar.set_message(format!("window {id}: {records} records, {deliveries} deliveries"));
            }
        })),
        on_epoch: Some(Arc::new({
            let bar = bar.clone();
            move |_| bar.inc(1)
        })),
        ..hooks
    }
}

/// Reads the re-review topic back and scores the suspects and verdicts against the truth.
fn score_against_truth(s: &Scenario, config: &Config, input_records: usize, summary: RunSummary, verdicts: Vec<VerdictMessage>, started: Instant) -> Result<ScenarioReport> {
    // Read the re-review topic back and score the suspects against the truth.
    let mut suspects: Vec<RereviewMessage> = Vec::new();
    service_read(config, &config.kafka.rereview_topic, |v| {
        suspects.push(serde_json::from_slice(v)?);
        Ok(())
    })?;
    // Crowd workers share sample ids (the song), so a suspect is known by its vendor too.
    let id_index: HashMap<(&str, &str), usize> = s.deliveries.iter().flat_map(|(_, vendor, idx)| idx.iter().map(move |&i| ((wire_id(&s.set, i), vendor.as_str()), i))).collect();
    let noisy = s.set.is_noisy().unwrap();
    let true_hits = suspects.iter().filter(|r| id_index.get(&(r.sample_id.as_str(), r.vendor_id.as_str())).is_some_and(|&i| noisy[i])).count();
    let noisy_total = s.deliveries.iter().flat_map(|(_, _, idx)| idx).filter(|&&i| noisy[i]).count();
    let mut deliveries: Vec<DeliveryReport> = verdicts
        .iter()
        .map(|v| {
            let idx = &s.deliveries.iter().find(|(b, _, _)| b == &v.batch_id).expect("known delivery").2;
            let right = idx.iter().filter(|&&i| !noisy[i]).count();
            DeliveryReport { batch_id: v.batch_id.clone(), vendor_id: v.vendor_id.clone(), records: idx.len(), true_accuracy: right as f64 / idx.len() as f64, verdict: v.clone() }
        })
        .collect();
    deliveries.sort_by(|a, b| a.batch_id.cmp(&b.batch_id));
    Ok(ScenarioReport {
        name: s.name.to_string(),
        input_records,
        summary,
        deliveries,
        suspects: suspects.len(),
        suspect_precision: true_hits as f64 / suspects.len().max(1) as f64,
        suspect_recall: true_hits as f64 / noisy_total.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn service_read(config: &Config, topic: &str, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut err = None;
    service::read_topic(config, topic, |_, v| {
        if err.is_none() {
            if let Err(e) = each(v) {
                err = Some(e);
            }
        }
    })?;
    err.map_or(Ok(()), Err)
}

fn print_report(r: &ScenarioReport) {
    println!("   {:<28} {:>6} {:>7} {:>9}  {:<17} {:>8} {:>6}  decision", "delivery", "n", "suspects", "est. acc", "95% interval", "true acc", "gold");
    let figure = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
    for d in &r.deliveries {
        let v = &d.verdict;
        println!(
            "   {:<28} {:>6} {:>7} {:>9}  [{}, {}]   {:>8.3} {:>6}  {:?} (by {}, SLA {}{})",
            d.batch_id,
            d.records,
            v.rereview,
            figure(v.estimated_accuracy),
            figure(v.accuracy_ci_low),
            figure(v.accuracy_ci_high),
            d.true_accuracy,
            v.gold_accuracy.map_or("-".into(), |g| format!("{g:.2}")),
            v.decision,
            v.decided_by.as_str(),
            v.sla_accuracy,
            v.review_reason.as_ref().map_or(String::new(), |r| format!("; {r}"))
        );
    }
    let mut windows: Vec<&crate::accuracy::evidence::WindowEvidence> = Vec::new();
    for e in r.deliveries.iter().filter_map(|d| d.verdict.evidence.as_deref()) {
        if !windows.contains(&e) {
            windows.push(e);
        }
    }
    for e in windows {
        let readings: Vec<String> = e.readings.iter().map(|r| format!("{:?} {:.3} [{:.3}, {:.3}]", r.estimator, r.wrong_share, r.ci_low, r.ci_high)).collect();
        println!(
            "   window evidence {}: wrong share {:.3} [{:.3}, {:.3}] from {}; out-of-fold lift {}",
            e.status.name(),
            e.wrong_share,
            e.wrong_share_ci_low,
            e.wrong_share_ci_high,
            readings.join(", "),
            e.model_fit.map_or("-".into(), |f| format!("{:.2}", f.lift))
        );
    }
    let s = &r.summary;
    let dlq: u64 = s.dead_letters.values().sum();
    println!("   records in {} = accepted {} + re-review {} + dead-letter {} {:?}  (plus one batch_end per delivery)", r.input_records, s.accepted, s.rereview, dlq, s.dead_letters);
    println!("   suspects {}: precision {:.3} against the truth, recall {:.3}; {} windows, {:.0} s", r.suspects, r.suspect_precision, r.suspect_recall, s.windows, r.seconds);
    for t in &s.window_timings {
        println!(
            "   window of {} records / {} deliveries: closed → verdict {:.2} s = waiting {:.2} + training {:.2} + producing {:.2}",
            t.records,
            t.deliveries,
            t.waiting_seconds + t.training_seconds + t.producing_seconds,
            t.waiting_seconds,
            t.training_seconds,
            t.producing_seconds
        );
    }
}

/// Runs both scenarios; returns their reports.
pub async fn run(data_dir: &Path, per_delivery: usize) -> Result<Vec<ScenarioReport>> {
    let mock = MockCluster::new(1).context("librdkafka mock cluster")?;
    println!("labelgate demo: an in-process Kafka mock cluster at {}, in-memory state", mock.bootstrap_servers());
    let mut reports = Vec::new();
    for (prefix, scenario) in [("mnist", mnist_scenario(data_dir, per_delivery)?), ("music", music_scenario(data_dir)?)] {
        let report = run_scenario(&scenario, &mock, prefix).await?;
        print_report(&report);
        reports.push(report);
    }
    // The text scenario needs the sentence encoder's model, which the demo does not download.
    let model = crate::encoder::model_dir::text_model_dir(None);
    if crate::encoder::text::missing_files(&model).is_empty() {
        let report = run_scenario(&text_scenario(data_dir, per_delivery)?, &mock, "text").await?;
        print_report(&report);
        reports.push(report);
    } else {
        println!("\n== text records: skipped, the sentence encoder is not installed at {}; {}", model.display(), crate::encoder::model_dir::how_to_install());
    }
    Ok(reports)
}
