//! A text gate (`gate.input = "text"`) on the real broker and Redis: `labelgate run` embeds the
//! movie-review sentences three vendors labelled with all-MiniLM-L6-v2 (installed by
//! `scripts/models.sh`, which `scripts/test.sh` runs), routes every record once, and gives each
//! delivery a verdict whose interval holds its true accuracy.

mod common;

use std::{collections::HashMap, process::Stdio, time::Duration};

use common::{
    kafka::{gate_command, produce, routed, test_config},
    process::{http_get, reserve_port, sample, wait_for, KillOnDrop},
};
use labelgate::{
    data::{sentence_polarity, LabelledSet},
    noise::NoiseModel,
    service,
    wire::{Decision, VerdictMessage},
};
use rdkafka::{message::Headers, Message};
use serde_json::json;

const VENDORS: [(&str, f64); 3] = [("acme-labels", 0.03), ("bolt-annotate", 0.12), ("crux-crowd", 0.35)];
const PER_DELIVERY: usize = 500;
const MAX_TEXT_BYTES: usize = 2000;

/// Two deliveries per vendor, each vendor's labels flipped at its rate: (batch_id, vendor, rows).
fn deliveries(set: &mut LabelledSet) -> Vec<(String, String, Vec<usize>)> {
    let truth = set.truth.clone().unwrap();
    let mut out = Vec::new();
    for (v, (vendor, rate)) in VENDORS.iter().enumerate() {
        for d in 0..2 {
            let start = (v * 2 + d) * PER_DELIVERY;
            let idx: Vec<usize> = (start..start + PER_DELIVERY).collect();
            let slice: Vec<u32> = idx.iter().map(|&i| truth[i]).collect();
            for (&i, l) in idx.iter().zip(NoiseModel::Symmetric(*rate).apply(&slice, 2, (v * 10 + d) as u64)) {
                set.labels[i] = l;
            }
            out.push((format!("{vendor}-{d}"), vendor.to_string(), idx));
        }
    }
    out
}

/// Text records that are wrong each in their own way, with the reason the DLQ must give.
fn bad_records() -> Vec<(String, &'static str)> {
    let rec = |id: &str, fields: serde_json::Value| {
        let mut r = json!({"sample_id": id, "batch_id": "bad-1", "vendor_id": "v", "label": "positive"});
        r.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        r.to_string()
    };
    vec![
        (rec("empty", json!({"text": "   "})), "empty_text"),
        (rec("long", json!({"text": "a".repeat(MAX_TEXT_BYTES + 1)})), "text_too_long"),
        (rec("mixed", json!({"text": "fine", "features": [1.0, 2.0]})), "mixed_payload"),
        (rec("vector", json!({"features": [1.0, 2.0]})), "unexpected_payload"),
        (rec("pair", json!({"text": "fine", "text_pair": "also fine"})), "unexpected_payload"),
    ]
}

/// `labelgate run` as a text gate on `config`'s topics until `deliveries` verdicts are counted in
/// `/metrics`; the last scrape. Only the input kind and the classes change: a text gate's engine
/// settings come from the layer under the file (one stage-1 epoch, five-epoch cycles).
fn run_until_gated(config: &labelgate::config::Config, deliveries: usize) -> String {
    let http_port = reserve_port();
    let _gate = KillOnDrop(
        gate_command(config)
            .env("LABELGATE__GATE__INPUT", "text")
            .env("LABELGATE__GATE__CLASSES", r#"["negative", "positive"]"#)
            .env("LABELGATE__GATE__MAX_TEXT_BYTES", MAX_TEXT_BYTES.to_string())
            .env("LABELGATE__METRICS__LISTEN", format!("127.0.0.1:{http_port}"))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut metrics = String::new();
    wait_for("every verdict", Duration::from_secs(300), || {
        metrics = http_get(http_port, "/metrics").map(|r| r.1).unwrap_or_default();
        let gated: f64 = metrics.lines().filter(|l| l.starts_with("labelgate_deliveries_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
        gated == deliveries as f64
    });
    metrics
}

fn batch_end(batch: &str, vendor: &str, count: usize) -> String {
    json!({"type": "batch_end", "batch_id": batch, "vendor_id": vendor, "count": count}).to_string()
}

#[test]
fn a_text_gate_embeds_routes_and_judges_vendor_sentences() {
    let config = test_config("text", 384);
    let mut set = sentence_polarity::load(&common::data_dir()).unwrap();
    let ds = deliveries(&mut set);
    let texts = set.texts.clone().unwrap();
    let mut messages = Vec::new();
    for (batch, vendor, idx) in &ds {
        for &i in idx {
            let payload = json!({"sample_id": set.sample_ids[i], "batch_id": batch, "vendor_id": vendor, "label": set.classes[set.labels[i] as usize], "text": texts[i].text});
            messages.push((batch.clone(), payload.to_string()));
        }
        messages.push((batch.clone(), batch_end(batch, vendor, idx.len())));
    }
    let bad = bad_records();
    messages.extend(bad.iter().map(|(payload, _)| ("bad-1".to_string(), payload.clone())));
    tokio::runtime::Runtime::new().unwrap().block_on(service::ensure_topics(&config, 2)).unwrap();
    produce(&config, &messages);

    let metrics = run_until_gated(&config, ds.len());
    // Every text embedded once, none cut (movie-review sentences are short).
    assert_eq!(sample(&metrics, "labelgate_text_embeddings_total{cache=\"miss\"}"), Some((VENDORS.len() * 2 * PER_DELIVERY) as f64), "{metrics}");
    assert_eq!(sample(&metrics, "labelgate_texts_truncated_total"), Some(0.0));

    // Every record in exactly one place.
    let (routed, suspects) = routed(&config);
    assert_eq!(routed.len(), VENDORS.len() * 2 * PER_DELIVERY);
    assert!(routed.values().all(|&n| n == 1), "a record routed twice");
    let mut reasons = Vec::new();
    service::read_topic_messages(&config, &config.kafka.dlq_topic, |m| {
        let class = m.headers().unwrap().iter().find(|h| h.key == "labelgate-error-class").and_then(|h| h.value).unwrap();
        reasons.push(String::from_utf8_lossy(class).into_owned());
    })
    .unwrap();
    reasons.sort();
    let mut want: Vec<String> = bad.iter().map(|(_, r)| r.to_string()).collect();
    want.sort();
    assert_eq!(reasons, want, "each bad text record in the DLQ with its reason");

    // A reviewer sees the sentence; most suspects are really wrong labels.
    let index: HashMap<&str, usize> = set.sample_ids.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let noisy = set.is_noisy().unwrap();
    assert!(suspects.iter().all(|s| s.text.as_deref() == Some(texts[index[s.sample_id.as_str()]].text.as_str())));
    let hits = suspects.iter().filter(|s| noisy[index[s.sample_id.as_str()]]).count();
    let precision = hits as f64 / suspects.len().max(1) as f64;
    let noise_share = noisy.iter().filter(|&&n| n).count() as f64 / (VENDORS.len() * 2 * PER_DELIVERY) as f64;
    eprintln!("re-review: {} suspects, precision {precision:.3} (wrong labels {noise_share:.3} of all)", suspects.len());
    assert!(suspects.is_empty() || precision > 2.0 * noise_share, "suspect precision {precision} against a base rate of {noise_share}");

    // One verdict per delivery; no good delivery rejected; the intervals hold the truth.
    let mut verdicts: Vec<VerdictMessage> = Vec::new();
    service::read_topic(&config, &config.kafka.verdicts_topic, |_, v| verdicts.push(serde_json::from_slice(v).unwrap())).unwrap();
    assert_eq!(verdicts.len(), ds.len());
    let mut covered = 0;
    for (batch, _, idx) in &ds {
        let v = verdicts.iter().find(|v| &v.batch_id == batch).expect("a verdict per delivery");
        let truth = idx.iter().filter(|&&i| !noisy[i]).count() as f64 / idx.len() as f64;
        let (low, high) = (v.accuracy_ci_low.unwrap_or(0.0), v.accuracy_ci_high.unwrap_or(1.0));
        eprintln!("{batch}: true {truth:.3}, estimated {:?} [{low:.3}, {high:.3}], {:?} ({:?})", v.estimated_accuracy, v.decision, v.review_reason);
        assert!(v.model_version.contains("all-MiniLM-L6-v2"), "{}", v.model_version);
        if truth >= v.sla_accuracy {
            assert_ne!(v.decision, Decision::Reject, "{batch}: a good delivery rejected");
        }
        covered += (low <= truth && truth <= high) as usize;
    }
    assert!(covered as f64 / ds.len() as f64 >= 0.8, "{covered} of {} intervals hold the truth", ds.len());
}

/// Three vendors label the same 600 sentences (the same `sample_id` and text), each in its own
/// delivery: each sentence is embedded once, and the other two labels of it are cache hits,
/// within a window and across windows.
#[test]
fn vendors_labelling_the_same_sentences_embed_each_once() {
    let config = test_config("text-shared", 384);
    let set = sentence_polarity::load(&common::data_dir()).unwrap();
    let texts = set.texts.as_ref().unwrap();
    let (items, vendors) = (600, ["acme-labels", "bolt-annotate", "crux-crowd"]);
    let mut messages = Vec::new();
    for vendor in vendors {
        let batch = format!("{vendor}-shared");
        for i in 0..items {
            let payload = json!({"sample_id": set.sample_ids[i], "batch_id": batch, "vendor_id": vendor, "label": set.classes[set.truth.as_ref().unwrap()[i] as usize], "text": texts[i].text});
            messages.push((batch.clone(), payload.to_string()));
        }
        messages.push((batch.clone(), batch_end(&batch, vendor, items)));
    }
    tokio::runtime::Runtime::new().unwrap().block_on(service::ensure_topics(&config, 2)).unwrap();
    produce(&config, &messages);
    let metrics = run_until_gated(&config, vendors.len());
    let hits = sample(&metrics, "labelgate_text_embeddings_total{cache=\"hit\"}").unwrap();
    let misses = sample(&metrics, "labelgate_text_embeddings_total{cache=\"miss\"}").unwrap();
    eprintln!("shared sentences: {hits} cache hits, {misses} misses (hit rate {:.3})", hits / (hits + misses));
    assert_eq!((hits, misses), (((vendors.len() - 1) * items) as f64, items as f64));
}
