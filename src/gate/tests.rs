//! The state machine end to end without Kafka: deliveries, windows, restarts, rebalances.

use super::*;
use std::collections::BTreeSet;

use super::window::WindowScores;
use crate::accuracy::evidence::EvidenceStatus;
use crate::wire::Decision;

fn config() -> GateConfig {
    let mut c = crate::config::Config::defaults().gate;
    c.classes = vec!["a".into(), "b".into()];
    c.feature_dim = 2;
    c.min_window_records = 3;
    c.max_window_records = 100;
    c.delivery_timeout_secs = 5;
    c
}

fn msg(offset: i64, body: &str) -> InputMessage {
    InputMessage { key: None, payload: body.as_bytes().to_vec(), headers: Vec::new(), pos: SourcePos { partition: 0, offset } }
}

fn rec(id: &str, batch: &str, label: &str) -> String {
    format!(r#"{{"sample_id":"{id}","batch_id":"{batch}","vendor_id":"v","label":"{label}","features":[1,2]}}"#)
}

/// Window scores that flag `flag` (ranked first) with consistent evidence at that share.
fn scores(n: usize, flag: &[usize]) -> WindowScores {
    let mut order: Vec<usize> = flag.to_vec();
    order.extend((0..n).filter(|i| !flag.contains(i)));
    let mut rank = vec![0; n];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    let share = flag.len() as f64 / n.max(1) as f64;
    let mut evidence = crate::accuracy::evidence::fixed(share, n, 0, 1.96);
    evidence.status = crate::accuracy::evidence::EvidenceStatus::Consistent;
    (evidence.wrong_share_ci_low, evidence.wrong_share_ci_high) = (share, share);
    WindowScores {
        scores: (0..n).map(|i| i as f32).collect(),
        predicted: vec![0; n],
        flagged: (0..n).map(|i| flag.contains(&i)).collect(),
        rank,
        percentile: vec![0.5; n],
        evidence,
        noise_rate_from: wire::NoiseRateFrom::Estimators,
        pool_control: None,
        p_wrong: None,
        p_wrong_with_own: None,
        ranked_by_votes: false,
        revised: Vec::new(),
        final_loss: 0.3,
        training_seconds: 0.1,
    }
}

#[test]
fn a_delivery_closes_on_its_batch_end_and_every_record_lands_once() {
    let now = Instant::now();
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    assert_eq!(g.ingest(msg(0, &rec("s1", "b1", "a")), now), Ingested::Buffered);
    assert_eq!(g.ingest(msg(1, "garbage"), now), Ingested::Rejected(DlqReason::InvalidJson));
    assert_eq!(g.ingest(msg(2, &rec("s2", "b1", "b")), now), Ingested::Buffered);
    assert_eq!(g.ingest(msg(3, &rec("s2", "b1", "b")), now), Ingested::Rejected(DlqReason::DuplicateSampleId));
    assert_eq!(g.ingest(msg(4, &rec("s3", "b1", "a")), now), Ingested::Buffered);
    assert!(!g.window_due(now), "not closed yet");
    assert_eq!(g.ingest(msg(5, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now), Ingested::DeliveryClosed);
    assert!(g.window_due(now));
    let job = g.take_window().unwrap();
    assert_eq!(job.records(), 3);
    let commit = g.finish_window(job, &scores(3, &[1]), &HashMap::new(), 0);
    let count = |f: fn(&Output) -> bool| commit.outputs.iter().filter(|o| f(o)).count();
    assert_eq!(count(|o| matches!(o, Output::Accepted { .. })), 2);
    assert_eq!(count(|o| matches!(o, Output::Rereview(_))), 1);
    assert_eq!(count(|o| matches!(o, Output::DeadLetter { .. })), 2);
    assert_eq!(count(|o| matches!(o, Output::Verdict(_))), 1);
    assert_eq!(commit.routed, 5, "3 records + 2 dead letters");
    assert_eq!(commit.progress, vec![PartitionProgress { partition: 0, commit_offset: 6, done: vec![] }]);
    // The delivery is gated: a late record and a second batch_end are dead letters.
    assert_eq!(g.ingest(msg(6, &rec("s4", "b1", "a")), now), Ingested::Rejected(DlqReason::LateRecord));
    assert_eq!(g.ingest(msg(7, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now), Ingested::Rejected(DlqReason::DuplicateBatchEnd));
}

#[test]
fn offsets_commit_below_open_deliveries_and_done_ranges_cover_the_rest() {
    let now = Instant::now();
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    g.ingest(msg(0, &rec("x1", "open", "a")), now);
    for (i, id) in ["s1", "s2", "s3"].iter().enumerate() {
        g.ingest(msg(1 + i as i64, &rec(id, "b1", "a")), now);
    }
    g.ingest(msg(4, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now);
    g.ingest(msg(5, &rec("x2", "open", "a")), now);
    let job = g.take_window().unwrap();
    let commit = g.finish_window(job, &scores(3, &[]), &HashMap::new(), 0);
    assert_eq!(commit.progress, vec![PartitionProgress { partition: 0, commit_offset: 0, done: vec![(1, 5)] }]);
    // After a restart the done offsets are skipped, the open delivery is read again.
    let mut restarted = Gate::new(config(), 10_000, "m".into(), "t".into());
    restarted.assign(0, Some(commit.progress[0].clone()));
    assert_eq!(restarted.ingest(msg(0, &rec("x1", "open", "a")), now), Ingested::Buffered);
    assert_eq!(restarted.ingest(msg(2, &rec("s2", "b1", "a")), now), Ingested::Skipped);
    assert_eq!(restarted.ingest(msg(5, &rec("x2", "open", "a")), now), Ingested::Buffered);
}

#[test]
fn quiet_deliveries_close_after_the_timeout_and_dead_letters_flush_alone() {
    let now = Instant::now();
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    g.ingest(msg(0, &rec("s1", "b1", "a")), now);
    g.ingest(msg(1, "{}"), now);
    // Quiet, but the partition was never seen read to its end (a stall, a pause, a lagging
    // consumer): nothing closes, however long.
    assert_eq!(g.quiet_partitions(now + Duration::from_secs(3)), BTreeSet::from([0]));
    assert_eq!(g.close_idle(now + Duration::from_secs(600)), 0);
    // Read to the end at 3 s: the timeout counts from there.
    g.partition_at_end(0, true, now + Duration::from_secs(3));
    assert_eq!(g.close_idle(now + Duration::from_secs(7)), 0);
    g.partition_at_end(0, false, now + Duration::from_secs(7));
    assert_eq!(g.close_idle(now + Duration::from_secs(9)), 0, "behind again: the clock starts over");
    g.partition_at_end(0, true, now + Duration::from_secs(9));
    assert_eq!(g.close_idle(now + Duration::from_secs(13)), 0);
    assert_eq!(g.close_idle(now + Duration::from_secs(14)), 1);
    assert!(g.window_due(now + Duration::from_secs(60)), "waited past max_window_wait_secs");
    let flushed = g.flush_dead_letters().unwrap();
    assert_eq!(flushed.routed, 1);
    assert_eq!(flushed.progress[0].commit_offset, 0, "record 0 still buffered");
    assert_eq!(flushed.progress[0].done, vec![(1, 2)]);
    assert!(g.flush_dead_letters().is_none());
}

fn verdict_of(commit: &Commit) -> &VerdictMessage {
    commit.outputs.iter().find_map(|o| if let Output::Verdict(v) = o { Some(v) } else { None }).expect("a verdict")
}

#[test]
fn an_empty_delivery_has_no_accuracy_and_weak_evidence_no_decision() {
    let now = Instant::now();
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    assert_eq!(g.ingest(msg(0, r#"{"type":"batch_end","batch_id":"empty","vendor_id":"v","count":0}"#), now), Ingested::DeliveryClosed);
    let job = g.take_window().unwrap();
    let commit = g.finish_window(job, &scores(0, &[]), &HashMap::new(), 0);
    let v = verdict_of(&commit);
    assert_eq!((v.estimated_accuracy, v.decision, v.review_reason.as_deref()), (None, Decision::Review, Some("no_valid_records")));
    assert!(!commit.state.deliveries[0].counts_towards_accuracy());

    // Three records, one flagged, but the network learned nothing: no figure, no decision,
    // and nothing joins the reference pool.
    for (i, id) in ["s1", "s2", "s3"].iter().enumerate() {
        g.ingest(msg(1 + i as i64, &rec(id, "b1", "a")), now);
    }
    g.ingest(msg(4, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now);
    let job = g.take_window().unwrap();
    let mut weak = scores(3, &[0]);
    weak.evidence.status = EvidenceStatus::Insufficient;
    weak.evidence.readings_agree = false;
    let commit = g.finish_window(job, &weak, &HashMap::new(), 0);
    let v = verdict_of(&commit);
    assert_eq!((v.estimated_accuracy, v.accuracy_ci_low, v.accuracy_ci_high), (None, Some(0.0), Some(1.0)));
    assert_eq!((v.decision, v.review_reason.as_deref()), (Decision::Review, Some("insufficient_evidence")));
    assert!(commit.state.pool_added.is_empty(), "a window that cannot decide does not feed the pool");
    assert_eq!(commit.state.labels.len(), 3, "its labels are kept for agreement across windows");
}

#[test]
fn requeue_puts_back_only_deliveries_of_partitions_still_owned() {
    let now = Instant::now();
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    for (p, batch) in [(0, "b0"), (1, "b1")] {
        let m = |offset: i64, body: &str| InputMessage { key: None, payload: body.as_bytes().to_vec(), headers: Vec::new(), pos: SourcePos { partition: p, offset } };
        g.ingest(m(0, &rec(&format!("{batch}-s"), batch, "a")), now);
        g.ingest(m(1, &format!(r#"{{"type":"batch_end","batch_id":"{batch}","vendor_id":"v","count":1}}"#)), now);
    }
    let job = g.take_window().unwrap();
    assert_eq!((job.deliveries(), g.buffered()), (2, 0));
    g.revoke(1);
    g.requeue(job, &[1]);
    assert_eq!((g.open_deliveries(), g.buffered()), (1, 1), "partition 0's delivery waits for the next window");
    assert_eq!(g.take_window().unwrap().batch_ids(), vec!["b0".to_string()]);
}

#[test]
fn revoking_a_partition_drops_its_buffered_records() {
    let now = Instant::now();
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    g.ingest(msg(0, &rec("s1", "b1", "a")), now);
    assert_eq!(g.buffered(), 1);
    g.revoke(0);
    assert_eq!((g.buffered(), g.open_deliveries()), (0, 0));
}

#[test]
fn oversized_records_are_dead_lettered_without_their_payload_and_keys_must_match_batch_ids() {
    let mut g = Gate::new(config(), 200, "m".into(), "i".into());
    let now = Instant::now();
    let huge = format!(r#"{{"sample_id":"s1","batch_id":"b1","vendor_id":"v","label":"a","features":[1,2],"pad":"{}"}}"#, "x".repeat(500));
    let mut m = msg(0, &huge);
    m.headers = vec![("trace".into(), b"t-1".to_vec())];
    m.key = Some(vec![b'k'; 5000]);
    assert_eq!(g.ingest(m, now), Ingested::Rejected(DlqReason::Oversized));
    let keyed = |offset, key: &str, body: &str| InputMessage { key: Some(key.as_bytes().to_vec()), ..msg(offset, body) };
    assert_eq!(g.ingest(keyed(1, "b2", &rec("s2", "b1", "a")), now), Ingested::Rejected(DlqReason::KeyMismatch));
    assert_eq!(g.ingest(keyed(2, "b1", &rec("s3", "b1", "a")), now), Ingested::Buffered);
    let commit = g.flush_dead_letters().unwrap();
    let Output::DeadLetter { key, payload, headers, dropped, reason, .. } = &commit.outputs[0] else { panic!() };
    assert_eq!(*reason, DlqReason::Oversized);
    assert!(payload.is_empty(), "the payload that could not be produced is dropped");
    assert_eq!(dropped.as_ref().unwrap().bytes, huge.len());
    assert_eq!(dropped.as_ref().unwrap().sha256, DroppedPayload::of(huge.as_bytes()).sha256);
    assert_eq!(dropped.as_ref().unwrap().sha256.len(), 64);
    assert_eq!(key.as_ref().unwrap().len(), MAX_DEAD_LETTER_KEY);
    assert_eq!(headers, &vec![("trace".to_string(), b"t-1".to_vec())]);
    assert!(matches!(&commit.outputs[1], Output::DeadLetter { reason: DlqReason::KeyMismatch, .. }));
}

#[test]
fn a_buffer_full_of_open_deliveries_reads_on() {
    let mut c = config();
    c.max_buffered_records = 3;
    c.max_window_records = 3;
    let mut g = Gate::new(c, 10_000, "m".into(), "t".into());
    let now = Instant::now();
    for (i, b) in ["b1", "b2", "b3"].iter().enumerate() {
        g.ingest(msg(i as i64, &rec(&format!("s{i}"), b, "a")), now);
    }
    assert!(g.is_full() && g.full_of_open_deliveries(), "pausing would wait forever");
    g.ingest(msg(3, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":1}"#), now);
    assert!(g.is_full() && !g.full_of_open_deliveries(), "b1 closed: a window can free the buffer");
}

#[test]
fn a_failed_window_sends_every_record_to_review_with_the_reason() {
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    let now = Instant::now();
    for i in 0..3 {
        g.ingest(msg(i, &rec(&format!("s{i}"), "b1", "a")), now);
    }
    g.ingest(msg(3, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now);
    let job = g.take_window().unwrap();
    let commit = g.fail_window(job, 0);
    let rereview: Vec<_> = commit.outputs.iter().filter_map(|o| if let Output::Rereview(r) = o { Some(r) } else { None }).collect();
    assert_eq!(rereview.len(), 3);
    assert!(rereview.iter().all(|r| r.reason == "window_failed"));
    let v = verdict_of(&commit);
    assert_eq!((v.decision, v.estimated_accuracy, v.rereview), (Decision::Review, None, 3));
    assert_eq!(v.review_reason.as_deref(), Some("window_failed"));
    assert_eq!(commit.progress[0].commit_offset, 4, "every record and the batch_end are done");
    assert!(!commit.state.deliveries[0].counts_towards_accuracy());
    assert_eq!(g.ingest(msg(4, &rec("s9", "b1", "a")), now), Ingested::Rejected(DlqReason::LateRecord));
}

/// Records of a delivery that arrive while its window trains are late records, not a second
/// delivery with the same batch_id (found by the chaos soak: one delivery, two verdicts).
#[test]
fn records_arriving_while_their_delivery_trains_are_late_not_a_second_delivery() {
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    let now = Instant::now();
    for i in 0..3 {
        g.ingest(msg(i, &rec(&format!("s{i}"), "b1", "a")), now);
    }
    g.partition_at_end(0, true, now);
    assert_eq!(g.close_idle(now + Duration::from_secs(10)), 1);
    let job = g.take_window().unwrap();
    assert_eq!(g.ingest(msg(3, &rec("s3", "b1", "a")), now), Ingested::Rejected(DlqReason::LateRecord));
    assert_eq!(g.ingest(msg(4, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":4}"#), now), Ingested::Rejected(DlqReason::DuplicateBatchEnd));
    assert_eq!(g.open_deliveries(), 0);
    // A window given back on a rebalance: its deliveries take records again.
    g.requeue(job, &[]);
    g.ingest(msg(5, &rec("s5", "b1", "a")), now);
    assert_eq!(g.open_deliveries(), 1);
}

/// A partition revoked and given back while its window trains is re-read from its committed
/// offset: those records open the delivery again, they are not late (found by the CI soak: a
/// replica joining mid-window dead-lettered three whole deliveries as `late_record`).
#[test]
fn records_re_read_after_a_partition_comes_back_mid_window_are_not_late() {
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    let now = Instant::now();
    g.assign(0, None);
    let batch_end = r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#;
    for i in 0..3 {
        g.ingest(msg(i, &rec(&format!("s{i}"), "b1", "a")), now);
    }
    g.ingest(msg(3, batch_end), now);
    let job = g.take_window().unwrap();
    g.revoke(0);
    g.assign(0, None);
    for i in 0..3 {
        assert_eq!(g.ingest(msg(i, &rec(&format!("s{i}"), "b1", "a")), now), Ingested::Buffered, "record {i} re-read");
    }
    g.ingest(msg(3, batch_end), now);
    // The stale window is dropped; the re-read delivery stays and forms the next window.
    g.requeue(job, &[0]);
    assert_eq!(g.open_deliveries(), 1);
    assert_eq!(g.take_window().expect("the re-read delivery is due").records(), 3);
}

#[test]
fn a_window_trains_on_the_pool_less_its_own_items() {
    let now = Instant::now();
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    // One pooled copy of the item the delivery labels (features [1, 2]) and one other item.
    assert_eq!(g.restore_pool([(0, vec![1.0, 2.0]), (1, vec![7.0, 8.0])]), 2);
    for (i, id) in ["s1", "s2"].iter().enumerate() {
        g.ingest(msg(i as i64, &rec(id, "b1", "a")), now);
    }
    g.ingest(msg(2, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":2}"#), now);
    let job = g.take_window().unwrap();
    assert_eq!(job.data.pending, 2);
    assert_eq!(job.data.labels, vec![0, 0, 1], "the two records, then only the other item's pool row");
    assert_eq!(&job.data.features[4..], &[7.0, 8.0]);
}

#[test]
fn text_records_wait_as_text_and_join_the_pool_with_their_embeddings() {
    let now = Instant::now();
    let mut c = config();
    c.input = wire::GatedInput::Text;
    let mut g = Gate::new(c, 10_000, "m".into(), "t".into());
    let text = |id: &str, label: &str, t: &str| format!(r#"{{"sample_id":"{id}","batch_id":"b1","vendor_id":"v","label":"{label}","text":"{t}"}}"#);
    for (i, (id, label, t)) in [("s1", "a", "good"), ("s2", "b", "bad"), ("s3", "a", "fine")].into_iter().enumerate() {
        assert_eq!(g.ingest(msg(i as i64, &text(id, label, t)), now), Ingested::Buffered);
    }
    assert_eq!(g.ingest(msg(3, &rec("s4", "b1", "a")), now), Ingested::Rejected(DlqReason::UnexpectedPayload));
    g.ingest(msg(4, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now);
    let mut job = g.take_window().unwrap();
    let mut data = job.take_data();
    assert_eq!(data.texts.iter().map(|(row, t)| (*row, t.text.as_str())).collect::<Vec<_>>(), vec![(0, "good"), (1, "bad"), (2, "fine")]);
    assert!(data.features.iter().all(|&f| f == 0.0), "zeros until embedded");
    // What the window thread does with the encoder's vectors.
    let embedded = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    data.set_embedded(&embedded);
    job.set_embedded(&[0, 1, 2], &embedded);
    assert_eq!(data.features, embedded);
    g.finish_window(job, &scores(3, &[1]), &HashMap::new(), 0);
    let mut pooled: Vec<(u32, Vec<f32>)> = g.pool.samples().map(|(l, f)| (l, f.to_vec())).collect();
    pooled.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap());
    assert_eq!(pooled, vec![(0, vec![1.0, 2.0]), (0, vec![5.0, 6.0])], "the two accepted records, by their embeddings");
}

#[test]
fn images_at_a_gate_with_an_image_encoder_train_and_pool_by_embedding_and_re_review_shows_the_pixels() {
    let now = Instant::now();
    let mut c = config();
    // Pixels of 1×3 grey (3 values); the encoder's vectors have 2, as GateLoop::start sets.
    c.image_shape = Some([1, 3, 1]);
    c.feature_dim = 2;
    let mut g = Gate::new(c, 10_000, "m".into(), "t".into()).embedding_images(true);
    let image = |id: &str, label: &str, shape: &str, b64: &str| format!(r#"{{"sample_id":"{id}","batch_id":"b1","vendor_id":"v","label":"{label}","image":{{"shape":{shape},"data_b64":"{b64}"}}}}"#);
    assert_eq!(g.ingest(msg(0, &image("s1", "a", "[1,3,1]", "AID/")), now), Ingested::Buffered, "pixels [0, 128, 255]");
    assert_eq!(g.ingest(msg(1, &image("s2", "b", "[1,3,1]", "ChQe")), now), Ingested::Buffered);
    assert_eq!(g.ingest(msg(5, &image("s5", "b", "[3,1,1]", "ChQe")), now), Ingested::Rejected(DlqReason::InvalidImage), "another shape of as many pixels is not the gate's images");
    let features = r#"{"sample_id":"s3","batch_id":"b1","vendor_id":"v","label":"a","features":[0.5,0.25,1.0]}"#;
    assert_eq!(g.ingest(msg(2, features), now), Ingested::Buffered, "features are pixels of gate.image_shape");
    assert_eq!(g.ingest(msg(3, &rec("s4", "b1", "a")), now), Ingested::Rejected(DlqReason::WrongFeatureLength), "records are checked against the pixels' length, not the encoder's");
    g.ingest(msg(4, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now);
    let mut job = g.take_window().unwrap();
    let mut data = job.take_data();
    assert_eq!((data.dim, data.images.clone()), (2, vec![(0, [1, 3, 1]), (1, [1, 3, 1]), (2, [1, 3, 1])]));
    assert!(data.texts.is_empty() && data.features.iter().all(|&f| f == 0.0), "zeros until embedded");
    let pixels = job.pixels(&[0, 2]);
    assert_eq!(pixels, vec![&[0.0, 128.0 / 255.0, 1.0][..], &[0.5, 0.25, 1.0][..]]);
    // What the window thread does with the encoder's vectors.
    let embedded = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    data.set_embedded_images(&embedded);
    job.set_embedded(&[0, 1, 2], &embedded);
    assert_eq!(data.features, embedded);
    let commit = g.finish_window(job, &scores(3, &[0]), &HashMap::new(), 0);
    let rereview = commit.outputs.iter().find_map(|o| if let Output::Rereview(r) = o { Some(r) } else { None }).expect("s1 flagged");
    let shown = rereview.image.as_ref().expect("re-review carries the image");
    assert_eq!((shown.shape, shown.pixels().unwrap()), ([1, 3, 1], vec![0, 128, 255]), "the pixels that came, not the embedding");
    let mut pooled: Vec<(u32, Vec<f32>)> = g.pool.samples().map(|(l, f)| (l, f.to_vec())).collect();
    pooled.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap());
    assert_eq!(pooled, vec![(1, vec![3.0, 4.0]), (0, vec![5.0, 6.0])], "the two accepted records, by their embeddings");
    assert_eq!(g.restore_pool([(0, vec![1.0, 2.0]), (0, vec![1.0, 2.0, 3.0])]), 1, "a restored pool row has the encoder's length");
}

/// A buffered record is held compressed and without its ids (the delivery has them); what the
/// accepted topic gets is still the original bytes, keyed as they came, and re-review names the
/// batch and vendor.
#[test]
fn accepted_records_leave_byte_for_byte_with_their_key_and_ids() {
    let now = Instant::now();
    let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
    let bodies: Vec<String> = (0..4).map(|i| format!(r#"{{"sample_id":"s{i}", "batch_id":"b1","vendor_id":"acme","label":"a","features":[{i}.50, -2e0]}}"#)).collect();
    for (i, body) in bodies.iter().enumerate() {
        let key = (i % 2 == 0).then(|| b"b1".to_vec());
        assert_eq!(g.ingest(InputMessage { key, ..msg(i as i64, body) }, now), Ingested::Buffered);
    }
    g.ingest(msg(4, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"acme","count":4}"#), now);
    let job = g.take_window().unwrap();
    let commit = g.finish_window(job, &scores(4, &[3]), &HashMap::new(), 0);
    let accepted: Vec<(Option<Vec<u8>>, Vec<u8>, String)> = commit
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Accepted { key, payload, vendor_id, .. } => Some((key.clone(), payload.clone(), vendor_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(accepted.len(), 3);
    for (i, (key, payload, vendor)) in accepted.iter().enumerate() {
        assert_eq!(payload, bodies[i].as_bytes(), "the original bytes, unchanged");
        assert_eq!(key.as_deref(), (i % 2 == 0).then_some(&b"b1"[..]), "keyed as it came");
        assert_eq!(vendor, "acme");
    }
    let Some(Output::Rereview(r)) = commit.outputs.iter().find(|o| matches!(o, Output::Rereview(_))) else { panic!("one suspect") };
    assert_eq!((r.batch_id.as_str(), r.vendor_id.as_str(), r.sample_id.as_str()), ("b1", "acme", "s3"));
}
