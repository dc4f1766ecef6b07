//! The streaming gate against a real Apache Kafka broker (KRaft, started by
//! `scripts/kafka.sh start`; `scripts/test.sh` does it and sets LABELGATE_KAFKA_BOOTSTRAP).

mod common;

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    kafka::{gate_command, produce, produce_to, run_until_verdicts, test_config as config},
    process::{http_get, own_redis, reserve_port, sample, scrape, wait_for, KillOnDrop, OutputWithStdin},
};
use labelgate::{
    config::Config,
    data::{mnist, LabelledSet},
    noise::NoiseModel,
    service::{self, Hooks},
    wire::{RereviewMessage, VerdictMessage},
};
use rdkafka::message::Headers;
use serde_json::json;

/// MNIST deliveries: (batch_id, vendor, indices); labels of each vendor flipped at its rate.
fn deliveries(set: &mut LabelledSet, vendors: &[(&str, f64, usize)], per_delivery: usize) -> Vec<(String, String, Vec<usize>)> {
    let truth = set.truth.clone().unwrap();
    let mut out = Vec::new();
    let mut next = 0;
    for (v, &(vendor, rate, count)) in vendors.iter().enumerate() {
        for d in 0..count {
            let idx: Vec<usize> = (next..next + per_delivery).collect();
            let slice: Vec<u32> = idx.iter().map(|&i| truth[i]).collect();
            for (&i, l) in idx.iter().zip(NoiseModel::Symmetric(rate).apply(&slice, 10, (v * 7 + d) as u64)) {
                set.labels[i] = l;
            }
            out.push((format!("{vendor}-{d}"), vendor.to_string(), idx));
            next += per_delivery;
        }
    }
    out
}

fn record(set: &LabelledSet, i: usize, batch: &str, vendor: &str) -> String {
    let dim = set.shape.len();
    json!({"sample_id": set.sample_ids[i], "batch_id": batch, "vendor_id": vendor, "label": set.classes[set.labels[i] as usize], "features": &set.features[i * dim..(i + 1) * dim]}).to_string()
}

const BAD_RECORDS: [(&str, &str); 4] = [
    ("{\"sample_id\": ", "invalid_json"),
    (r#"{"sample_id":"x","batch_id":"bad-1","vendor_id":"v","label":"3","features":[1,2]}"#, "wrong_feature_length"),
    (r#"{"sample_id":"y","batch_id":"bad-1","vendor_id":"v","label":"cow","features":[]}"#, "unknown_class"),
    (r#"{"type":"rollback","batch_id":"bad-1"}"#, "unknown_message_type"),
];

fn messages(set: &LabelledSet, ds: &[(String, String, Vec<usize>)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (batch, vendor, idx) in ds {
        for &i in idx {
            out.push((batch.clone(), record(set, i, batch, vendor)));
        }
        out.push((batch.clone(), json!({"type": "batch_end", "batch_id": batch, "vendor_id": vendor, "count": idx.len()}).to_string()));
    }
    for (payload, _) in BAD_RECORDS {
        out.push(("bad-1".to_string(), payload.to_string()));
    }
    out
}

struct Outputs {
    accepted: Vec<String>,
    rereview: Vec<RereviewMessage>,
    verdicts: Vec<VerdictMessage>,
    dlq_reasons: Vec<String>,
}

fn read_outputs(config: &Config) -> Outputs {
    let mut accepted = Vec::new();
    service::read_topic(config, &config.kafka.accepted_topic, |_, v| {
        let value: serde_json::Value = serde_json::from_slice(v).unwrap();
        accepted.push(value["sample_id"].as_str().unwrap().to_string());
    })
    .unwrap();
    let mut rereview = Vec::new();
    service::read_topic(config, &config.kafka.rereview_topic, |_, v| rereview.push(serde_json::from_slice(v).unwrap())).unwrap();
    let mut verdicts = Vec::new();
    service::read_topic(config, &config.kafka.verdicts_topic, |_, v| verdicts.push(serde_json::from_slice(v).unwrap())).unwrap();
    let dlq_reasons = dlq_headers(config);
    Outputs { accepted, rereview, verdicts, dlq_reasons }
}

/// The `labelgate-error-class` header of every DLQ record.
fn dlq_headers(config: &Config) -> Vec<String> {
    use rdkafka::Message;
    let mut reasons = Vec::new();
    service::read_topic_messages(config, &config.kafka.dlq_topic, |m| {
        let headers = m.headers().expect("dlq headers");
        let class = headers.iter().find(|h| h.key == "labelgate-error-class").and_then(|h| h.value).expect("error class");
        assert!(headers.iter().any(|h| h.key == "labelgate-source-offset"));
        reasons.push(String::from_utf8_lossy(class).into_owned());
    })
    .unwrap();
    reasons
}

/// Every record of every delivery in accepted or re-review, once.
fn check_routed_once(ds: &[(String, String, Vec<usize>)], out: &Outputs) {
    let expected: usize = ds.iter().map(|d| d.2.len()).sum();
    let mut seen = HashSet::new();
    for id in out.accepted.iter().chain(out.rereview.iter().map(|r| &r.sample_id)) {
        assert!(seen.insert(id.clone()), "sample {id} routed twice");
    }
    assert_eq!(seen.len(), expected, "every record routed: accepted {} + rereview {}", out.accepted.len(), out.rereview.len());
}

fn check_one_verdict_each(ds: &[(String, String, Vec<usize>)], out: &Outputs) {
    let mut batches: Vec<&str> = out.verdicts.iter().map(|v| v.batch_id.as_str()).collect();
    batches.sort();
    let mut want: Vec<&str> = ds.iter().map(|d| d.0.as_str()).collect();
    want.sort();
    assert_eq!(batches, want, "one verdict per delivery");
}

/// Verdicts counted in `/metrics` over `vendors`, whatever the decision.
fn deliveries_gated(metrics: &str, vendors: &[&str]) -> f64 {
    vendors.iter().flat_map(|v| ["accept", "reject", "review"].map(|d| sample(metrics, &format!("labelgate_deliveries_total{{decision=\"{d}\",vendor=\"{v}\"}}")).unwrap_or(0.0))).sum()
}

/// A Redis of the test's own (no persistence, without the suite's ACL user) for `config`: its
/// port, to start it again, and the running server.
fn with_own_redis(config: &mut Config) -> (u16, KillOnDrop) {
    let port = reserve_port();
    config.state.redis.url = format!("redis://127.0.0.1:{port}/0");
    config.state.redis.username = String::new();
    config.state.redis.password = None;
    (port, KillOnDrop(own_redis(port)))
}

fn check_exactly_once(set: &LabelledSet, ds: &[(String, String, Vec<usize>)], out: &Outputs) {
    check_routed_once(ds, out);
    let mut reasons = out.dlq_reasons.clone();
    reasons.sort();
    let mut want: Vec<String> = BAD_RECORDS.iter().map(|(_, r)| r.to_string()).collect();
    want.sort();
    assert_eq!(reasons, want, "each bad record in the DLQ once, with its reason");
    check_one_verdict_each(ds, out);
    // Injected noise dominates the re-review topic.
    let index: HashMap<&str, usize> = set.sample_ids.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let noisy = set.is_noisy().unwrap();
    let hits = out.rereview.iter().filter(|r| noisy[index[r.sample_id.as_str()]]).count();
    let precision = hits as f64 / out.rereview.len().max(1) as f64;
    eprintln!("re-review: {} suspects, precision {precision:.3}", out.rereview.len());
    assert!(precision > 0.8, "suspect precision {precision}");
}

fn mnist_set(n: usize) -> LabelledSet {
    let mut set = mnist::load(&common::data_dir(), "train").unwrap();
    set.truncate(n);
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_routed_exactly_once_with_verdicts() {
    common::single_thread();
    let config = config("routing", 784);
    service::ensure_topics(&config, 3).await.unwrap();
    let mut set = mnist_set(4000);
    let ds = deliveries(&mut set, &[("clean-co", 0.03, 2), ("sloppy-inc", 0.3, 2)], 1000);
    produce(&config, &messages(&set, &ds));
    let summary = run_until_verdicts(config.clone(), ds.len()).await;
    assert_eq!(summary.verdicts, 4);
    let out = read_outputs(&config);
    check_exactly_once(&set, &ds, &out);
    // The sloppier vendor's estimated accuracy is lower, and its deliveries are rejected.
    let acc = |vendor: &str| out.verdicts.iter().filter(|v| v.vendor_id == vendor).map(|v| v.estimated_accuracy.expect("valid records")).sum::<f64>() / 2.0;
    assert!(acc("clean-co") > acc("sloppy-inc") + 0.15, "clean {} sloppy {}", acc("clean-co"), acc("sloppy-inc"));
    assert!(out.verdicts.iter().filter(|v| v.vendor_id == "sloppy-inc").all(|v| v.decision == labelgate::wire::Decision::Reject));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_as_the_external_producer() {
    common::single_thread();
    let config = config("kcat", 784);
    service::ensure_topics(&config, 2).await.unwrap();
    let mut set = mnist_set(2000);
    let ds = deliveries(&mut set, &[("kcat-vendor", 0.2, 2)], 1000);
    let mut kcat = Command::new("kcat")
        .args(["-P", "-b", &config.kafka.bootstrap_servers, "-t", &config.kafka.input_topic, "-K", "\t"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat (Debian package kcat) on the PATH");
    {
        let stdin = kcat.stdin.as_mut().unwrap();
        for (key, payload) in messages(&set, &ds) {
            writeln!(stdin, "{key}\t{payload}").unwrap();
        }
    }
    assert!(kcat.wait().unwrap().success());
    run_until_verdicts(config.clone(), ds.len()).await;
    check_exactly_once(&set, &ds, &read_outputs(&config));
}

#[test]
fn kill_mid_window_then_restart_is_exactly_once() {
    let config = config("sigkill", 784);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(service::ensure_topics(&config, 2)).unwrap();
    let mut set = mnist_set(9000);
    let ds = deliveries(&mut set, &[("kill-a", 0.1, 3), ("kill-b", 0.25, 3)], 1500);
    produce(&config, &messages(&set, &ds));
    let http_port = reserve_port();
    let spawn = || gate_command(&config).env("LABELGATE__METRICS__LISTEN", format!("127.0.0.1:{http_port}")).stderr(Stdio::piped()).spawn().unwrap();
    // First run: let one window commit, then SIGKILL during the second.
    let mut gate = spawn();
    let stderr = gate.stderr.take().unwrap();
    std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).for_each(drop));
    wait_for("the second window to start", Duration::from_secs(240), || scrape(http_port, "labelgate_windows_started_total").is_some_and(|n| n >= 2.0));
    std::thread::sleep(Duration::from_millis(800));
    gate.kill().unwrap(); // SIGKILL
    gate.wait().unwrap();
    let partial = read_outputs(&config);
    assert!(partial.verdicts.len() < ds.len(), "killed before every delivery was gated");

    // Restart and let it finish; then stop it with SIGTERM and expect a clean exit.
    let mut gate = spawn();
    let stderr = gate.stderr.take().unwrap();
    let reader = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let verdicts = {
            let mut n = 0;
            service::read_topic(&config, &config.kafka.verdicts_topic, |_, _| n += 1).unwrap();
            n
        };
        if verdicts >= ds.len() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(2));
    let status = Command::new("kill").args(["-TERM", &gate.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = gate.wait().unwrap();
    let log = reader.join().unwrap();
    assert!(exit.success(), "SIGTERM exits 0; log tail: {:?}", &log[log.len().saturating_sub(5)..]);
    check_exactly_once(&set, &ds, &read_outputs(&config));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_partitions_and_each_delivery_stays_on_one() {
    common::single_thread();
    let first = config("replicas", 784);
    service::ensure_topics(&first, 4).await.unwrap();
    let mut second = first.clone();
    second.kafka.instance_id = format!("{}-second", first.kafka.instance_id);
    let mut set = mnist_set(9000);
    let ds = deliveries(&mut set, &[("r-a", 0.05, 3), ("r-b", 0.2, 3)], 1500);
    // Both replicas join before the records arrive, so the group splits the partitions.
    let (hooks, all_verdicts) = Hooks::until_verdicts(ds.len() as u64);
    let stop = |all_verdicts: service::VerdictsReached| async move {
        tokio::select! { _ = all_verdicts.wait() => {}, _ = tokio::time::sleep(Duration::from_secs(150)) => {} }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    };
    let a = tokio::spawn(service::run(first.clone(), hooks.clone(), stop(all_verdicts.clone())));
    let b = tokio::spawn(service::run(second.clone(), hooks, stop(all_verdicts)));
    tokio::time::sleep(Duration::from_secs(8)).await;
    produce(&first, &messages(&set, &ds));
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    eprintln!("replica a: {} verdicts, replica b: {} verdicts", a.verdicts, b.verdicts);
    assert_eq!(a.verdicts + b.verdicts, ds.len() as u64);
    assert!(a.verdicts > 0 && b.verdicts > 0, "both replicas gated deliveries");
    let out = read_outputs(&first);
    check_exactly_once(&set, &ds, &out);
    // A delivery is gated in one window by one replica: its suspects share the verdict's window.
    let window_of: HashMap<&str, &str> = out.verdicts.iter().map(|v| (v.batch_id.as_str(), v.window_id.as_str())).collect();
    for r in &out.rereview {
        assert_eq!(window_of[r.batch_id.as_str()], r.window_id, "{} split across windows", r.batch_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_pauses_consumption_without_losing_records() {
    common::single_thread();
    let mut config = config("backpressure", 784);
    // Each delivery (1,000 records) is larger than the buffer (800): the gate reads on past the
    // bound until the delivery closes and gates it whole, then pauses while closed deliveries
    // wait for their window, and resumes.
    config.gate.max_buffered_records = 800;
    config.gate.max_window_records = 1000;
    config.gate.min_window_records = 1000;
    service::ensure_topics(&config, 1).await.unwrap();
    let mut set = mnist_set(5000);
    let ds = deliveries(&mut set, &[("bp-a", 0.05, 3), ("bp-b", 0.3, 2)], 1000);
    produce(&config, &messages(&set, &ds));
    let summary = run_until_verdicts(config.clone(), ds.len()).await;
    eprintln!("pauses {} windows {}", summary.pauses, summary.windows);
    assert!(summary.pauses >= 1, "consumption paused at the buffer bound");
    assert!(summary.windows >= 3, "deliveries gated in several windows");
    let out = read_outputs(&config);
    // Windows of one delivery are small; check routing, not detection quality.
    check_routed_once(&ds, &out);
    assert_eq!(out.verdicts.len(), ds.len());
    assert!(
        out.verdicts.iter().all(|v| v.records == 1000 && v.closed_by == "batch_end"),
        "every delivery gated whole: {:?}",
        out.verdicts.iter().map(|v| (v.records, &v.closed_by)).collect::<Vec<_>>()
    );
    assert!(out.dlq_reasons.iter().all(|r| r != "late_record"), "no record of a delivery dead-lettered");
}

/// Two vendors through the real binary, Kafka and Redis: Redis goes away mid-run (the gate turns
/// not-ready and resumes without losing or duplicating a record), then `/metrics` carries each
/// vendor's accuracy within 0.05 of the truth, passes `promtool check metrics`, and the alert
/// rules fire for the worse vendor only.
#[test]
fn vendor_metrics_scrape_and_redis_outage() {
    let mut config = config("metrics", 784);
    let http_port = reserve_port();
    let (redis_port, mut redis) = with_own_redis(&mut config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(service::ensure_topics(&config, 2)).unwrap();
    let mut set = mnist_set(6000);
    let ds = deliveries(&mut set, &[("steady", 0.05, 2), ("slipping", 0.25, 2)], 1500);
    let truth = set.truth.clone().unwrap();
    let true_accuracy = |vendor: &str| {
        let idx: Vec<usize> = ds.iter().filter(|d| d.1 == vendor).flat_map(|d| d.2.clone()).collect();
        idx.iter().filter(|&&i| set.labels[i] == truth[i]).count() as f64 / idx.len() as f64
    };
    let mut gate = KillOnDrop(
        gate_command(&config).env("LABELGATE__STATE__REDIS__TIMEOUT_MS", "500").env("LABELGATE__METRICS__LISTEN", format!("127.0.0.1:{http_port}")).stderr(Stdio::inherit()).spawn().unwrap(),
    );
    wait_for("/readyz 200", Duration::from_secs(60), || http_get(http_port, "/readyz").is_some_and(|r| r.0 == 200));

    // Redis goes away before the first window commits.
    redis.0.kill().unwrap();
    redis.0.wait().unwrap();
    produce(&config, &messages(&set, &ds));
    wait_for("/readyz 503 while Redis is down", Duration::from_secs(120), || http_get(http_port, "/readyz").is_some_and(|r| r.0 == 503));
    assert_eq!(http_get(http_port, "/healthz").unwrap().0, 200, "alive while not ready");
    std::thread::sleep(Duration::from_secs(2));
    let _redis = KillOnDrop(own_redis(redis_port));
    let mut metrics = String::new();
    wait_for("four deliveries gated", Duration::from_secs(240), || {
        metrics = http_get(http_port, "/metrics").map(|r| r.1).unwrap_or_default();
        deliveries_gated(&metrics, &["steady", "slipping"]) == 4.0
            // The gauges follow the window's commit.
            && ["steady", "slipping"].iter().all(|v| sample(&metrics, &format!("labelgate_vendor_label_accuracy_ratio{{vendor=\"{v}\"}}")).is_some())
    });
    assert_eq!(http_get(http_port, "/readyz").unwrap().0, 200, "ready again");
    let state_errors: f64 = metrics.lines().filter(|l| l.starts_with("labelgate_state_errors_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    assert!(state_errors >= 1.0, "the outage was seen in labelgate_state_errors_total");

    // Nothing lost, nothing duplicated across the outage.
    let out = read_outputs(&config);
    check_exactly_once(&set, &ds, &out);

    // Each vendor's accuracy gauge is within 0.05 of its true accuracy.
    let mut before_reviews = HashMap::new();
    for vendor in ["steady", "slipping"] {
        let gauge = sample(&metrics, &format!("labelgate_vendor_label_accuracy_ratio{{vendor=\"{vendor}\"}}")).expect("accuracy gauge");
        let truth = true_accuracy(vendor);
        eprintln!("{vendor}: estimated {gauge:.4}, true {truth:.4}");
        assert!((gauge - truth).abs() <= 0.05, "{vendor}: gauge {gauge} vs true {truth}");
        before_reviews.insert(vendor, gauge);
    }
    // Reviewers settle the slipping vendor's suspects (twice, as a replayed topic would): the
    // realised precision gauge is the share of its suspects that were really wrong, counted once.
    let index: HashMap<&str, usize> = set.sample_ids.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let suspects: Vec<&RereviewMessage> = out.rereview.iter().filter(|r| r.vendor_id == "slipping").collect();
    let really_wrong = suspects.iter().filter(|r| set.labels[index[r.sample_id.as_str()]] != truth[index[r.sample_id.as_str()]]).count();
    let reviews: Vec<(String, String)> = suspects
        .iter()
        .map(|r| (r.sample_id.clone(), json!({"sample_id": r.sample_id, "final_label": set.classes[truth[index[r.sample_id.as_str()]] as usize], "reviewer": "qa-1"}).to_string()))
        .collect();
    produce_to(&config, &config.kafka.reviews_topic, &reviews);
    produce_to(&config, &config.kafka.reviews_topic, &reviews);
    produce_to(&config, &config.kafka.reviews_topic, &[("x".into(), "not a review".into())]);
    let precision_series = "labelgate_vendor_suspect_precision_ratio{vendor=\"slipping\"}";
    let counted = format!("labelgate_reviews_total{{result=\"confirmed_wrong\",vendor=\"slipping\"}} {really_wrong}");
    wait_for("every review counted once", Duration::from_secs(60), || {
        metrics = http_get(http_port, "/metrics").map(|r| r.1).unwrap_or_default();
        metrics.lines().any(|l| l == counted) && sample(&metrics, "labelgate_reviews_total{result=\"invalid\",vendor=\"unknown\"}") == Some(1.0)
    });
    let precision = sample(&metrics, precision_series).expect("precision gauge");
    assert!((precision - really_wrong as f64 / suspects.len() as f64).abs() < 1e-9, "precision {precision}");
    // Reviews replace the gate's own correction (the pool control) and remove the false flags:
    // wrong share = flagged share × realised precision.
    let corrected = sample(&metrics, "labelgate_vendor_label_accuracy_ratio{vendor=\"slipping\"}").unwrap();
    eprintln!("slipping: {} suspects reviewed, realised precision {precision:.4}, accuracy corrected to {corrected:.4}", suspects.len());
    let slipping_records: usize = out.verdicts.iter().filter(|v| v.vendor_id == "slipping").map(|v| v.records).sum();
    let flagged_share = suspects.len() as f64 / slipping_records as f64;
    assert!((corrected - (1.0 - flagged_share * precision)).abs() < 1e-9, "corrected {corrected}");
    assert!((corrected - true_accuracy("slipping")).abs() <= 0.05, "after reviews: {corrected}");
    assert_eq!(sample(&metrics, "labelgate_vendor_label_accuracy_ratio{vendor=\"steady\"}"), Some(before_reviews["steady"]), "no reviews, no change");

    // The live exposition passes promtool's lint.
    let dir = std::env::temp_dir().join(format!("labelgate-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut lint = Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).output_with_stdin(&metrics);
    assert!(lint.status.success(), "promtool check metrics:\n{}{}", String::from_utf8_lossy(&lint.stdout), String::from_utf8_lossy(&std::mem::take(&mut lint.stderr)));

    // The alert rules, fed the scraped values for 40 minutes: the SLA alert fires for the
    // slipping vendor and not for the steady one.
    let series: String = ["steady", "slipping"]
        .iter()
        .flat_map(|v| {
            let acc = sample(&metrics, &format!("labelgate_vendor_label_accuracy_ratio{{vendor=\"{v}\"}}")).unwrap();
            let sla = sample(&metrics, &format!("labelgate_vendor_label_accuracy_sla_ratio{{vendor=\"{v}\"}}")).unwrap();
            [
                format!("      - series: 'labelgate_vendor_label_accuracy_ratio{{vendor=\"{v}\",instance=\"gate\",job=\"labelgate\"}}'\n        values: '{acc}x45'\n"),
                format!("      - series: 'labelgate_vendor_label_accuracy_sla_ratio{{vendor=\"{v}\",instance=\"gate\",job=\"labelgate\"}}'\n        values: '{sla}x45'\n"),
            ]
        })
        .collect();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/labelgate/files/alerts.yaml");
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    promql_expr_test:\n      - expr: 'ALERTS{{alertname=\"LabelgateVendorAccuracyBelowSla\",alertstate=\"firing\"}}'\n        eval_time: 40m\n        exp_samples:\n          - labels: 'ALERTS{{alertname=\"LabelgateVendorAccuracyBelowSla\",alertstate=\"firing\",severity=\"warning\",vendor=\"slipping\"}}'\n            value: 1\n",
        rules.display()
    );
    let test_file = dir.join("scraped.test.yaml");
    std::fs::write(&test_file, test).unwrap();
    let run = Command::new("promtool").args(["test", "rules"]).arg(&test_file).output().expect("promtool (Debian package prometheus)");
    assert!(run.status.success(), "the SLA alert should fire for `slipping` only:\n{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));

    // SIGTERM: drain and exit 0.
    Command::new("kill").args(["-TERM", &gate.0.id().to_string()]).status().unwrap();
    assert!(gate.0.wait().unwrap().success(), "SIGTERM exits 0");
}

/// Redis without persistence loses everything on a SIGKILL. The gate, SIGKILLed too and
/// restarted on the empty Redis, keeps routing exactly once (the transactions and the progress
/// topic hold what routing needs), and a late record for a delivery gated before the loss still
/// goes to the DLQ (gated deliveries are re-read from the verdict topic, not from Redis).
#[test]
fn a_redis_restarted_empty_keeps_routing_exactly_once() {
    let mut config = config("redis-empty", 784);
    let http_port = reserve_port();
    let (redis_port, mut redis) = with_own_redis(&mut config);
    tokio::runtime::Runtime::new().unwrap().block_on(service::ensure_topics(&config, 2)).unwrap();
    let mut set = mnist_set(6000);
    let ds = deliveries(&mut set, &[("before", 0.05, 2), ("after", 0.05, 2)], 1500);
    let gate = || KillOnDrop(gate_command(&config).env("LABELGATE__METRICS__LISTEN", format!("127.0.0.1:{http_port}")).stderr(Stdio::inherit()).spawn().unwrap());
    let gated = || deliveries_gated(&http_get(http_port, "/metrics").map(|r| r.1).unwrap_or_default(), &["before", "after"]);
    let mut first_gate = gate();
    produce(&config, &messages(&set, &ds[..2]));
    wait_for("the first two deliveries gated", Duration::from_secs(240), || gated() == 2.0);

    redis.0.kill().unwrap();
    redis.0.wait().unwrap();
    first_gate.0.kill().unwrap();
    first_gate.0.wait().unwrap();
    let _redis = KillOnDrop(own_redis(redis_port));
    let _second_gate = gate();
    let mut rest = messages(&set, &ds[2..]);
    rest.truncate(rest.len() - BAD_RECORDS.len());
    let late = json!({"sample_id": "late-1", "batch_id": ds[0].0, "vendor_id": "before", "label": "1", "features": &set.features[..784]});
    rest.push((ds[0].0.clone(), late.to_string()));
    produce(&config, &rest);
    wait_for("the other two deliveries gated", Duration::from_secs(240), || gated() == 2.0);
    std::thread::sleep(Duration::from_secs(3));

    let out = read_outputs(&config);
    check_routed_once(&ds, &out);
    check_one_verdict_each(&ds, &out);
    let mut reasons = out.dlq_reasons.clone();
    reasons.sort();
    let mut want: Vec<String> = BAD_RECORDS.iter().map(|(_, r)| r.to_string()).chain(["late_record".to_string()]).collect();
    want.sort();
    assert_eq!(reasons, want, "each bad record once and the late record in the DLQ");
}
