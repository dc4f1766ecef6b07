//! Each estimator and their combination on synthetic windows with a known share.

use super::*;

const POLICY: EvidencePolicy = EvidencePolicy { max_estimator_gap: 0.1, min_evidence_rows: 1000, min_model_lift: 0.2, min_pool_control_rows: 100, z: 1.96 };

fn reading(estimator: Estimator, share: f64) -> Reading {
    Reading { estimator, wrong_share: share, ci_low: share - 0.02, ci_high: share + 0.02 }
}

fn fit(lift: f64) -> Option<ModelFit> {
    Some(ModelFit { heldout_accuracy: 0.5, chance_accuracy: 0.1, lift, final_loss: 0.3 })
}

#[test]
fn an_outlier_is_named_and_left_out_of_the_interval() {
    let rs = vec![reading(Estimator::ScoreMixture, 0.9), reading(Estimator::PoolControl, 0.08), reading(Estimator::ConfidentLearning, 0.1)];
    let e = combine(Gathered { readings: rs, model_fit: fit(0.8), rows: 6000, pool_rows: 5000, agreement_coverage: 0.0 }, &POLICY);
    assert_eq!(e.status, EvidenceStatus::Outlier);
    assert_eq!(e.outliers, vec![Estimator::ScoreMixture]);
    assert!((e.wrong_share - 0.09).abs() < 1e-12, "the mean of the two that agree");
    assert!(e.wrong_share_ci_high < 0.2, "{e:?}");
}

#[test]
fn two_readings_far_apart_disagree_with_a_wide_interval() {
    let rs = vec![reading(Estimator::ScoreMixture, 0.9), reading(Estimator::ConfidentLearning, 0.1)];
    let e = combine(Gathered { readings: rs, model_fit: fit(0.8), rows: 3000, pool_rows: 0, agreement_coverage: 0.0 }, &POLICY);
    assert_eq!(e.status, EvidenceStatus::Disagree);
    assert!(e.wrong_share_ci_low <= 0.08 && e.wrong_share_ci_high >= 0.92, "{e:?}");
    assert!(!e.status.supports_a_decision());
}

#[test]
fn a_network_that_learned_nothing_gives_insufficient_evidence() {
    let rs = vec![reading(Estimator::ScoreMixture, 0.05), reading(Estimator::ConfidentLearning, 0.06)];
    let e = combine(Gathered { readings: rs.clone(), model_fit: fit(0.05), rows: 3000, pool_rows: 0, agreement_coverage: 0.0 }, &POLICY);
    assert_eq!((e.status, e.wrong_share_ci_low, e.wrong_share_ci_high), (EvidenceStatus::Insufficient, 0.0, 1.0));
    assert_eq!(
        combine(Gathered { readings: rs.clone(), model_fit: None, rows: 3000, pool_rows: 0, agreement_coverage: 0.0 }, &POLICY).status,
        EvidenceStatus::Insufficient,
        "no out-of-fold fit: no proof of learning"
    );
    assert_eq!(combine(Gathered { readings: rs.clone(), model_fit: fit(0.5), rows: 400, pool_rows: 0, agreement_coverage: 0.0 }, &POLICY).status, EvidenceStatus::Insufficient, "a 400-row network");
    assert_eq!(combine(Gathered { readings: rs, model_fit: fit(0.5), rows: 3000, pool_rows: 0, agreement_coverage: 0.0 }, &POLICY).status, EvidenceStatus::Consistent);
    // Two readings 0.18 apart are each within 0.1 of their midpoint, but not of each other.
    let apart = vec![reading(Estimator::ScoreMixture, 0.44), reading(Estimator::ConfidentLearning, 0.26)];
    assert_eq!(combine(Gathered { readings: apart, model_fit: fit(0.6), rows: 3000, pool_rows: 0, agreement_coverage: 0.0 }, &POLICY).status, EvidenceStatus::Disagree);
}

#[test]
fn agreement_decides_even_when_the_features_are_weak() {
    let rs = vec![reading(Estimator::ScoreMixture, 0.9), reading(Estimator::Agreement, 0.3)];
    let e = combine(Gathered { readings: rs, model_fit: fit(0.0), rows: 3000, pool_rows: 0, agreement_coverage: 0.6 }, &POLICY);
    assert_eq!((e.status, e.wrong_share), (EvidenceStatus::Consistent, 0.3));
}

#[test]
fn agreement_over_few_shared_items_needs_a_network_that_learned_on_enough_rows() {
    let rs = vec![reading(Estimator::ScoreMixture, 0.3), reading(Estimator::Agreement, 0.25)];
    let low = AGREEMENT_CARRIES_COVERAGE / 2.0;
    let cold = combine(Gathered { readings: rs.clone(), model_fit: fit(0.1), rows: 300, pool_rows: 0, agreement_coverage: low }, &POLICY);
    assert_eq!((cold.status, cold.wrong_share_ci_low, cold.wrong_share_ci_high), (EvidenceStatus::Insufficient, 0.0, 1.0), "cold start: 300 rows, nothing learned");
    assert!(!cold.may_feed_pool(), "a network that learned nothing must not seed the pool");
    let small = combine(Gathered { readings: rs.clone(), model_fit: fit(0.5), rows: 300, pool_rows: 0, agreement_coverage: low }, &POLICY);
    assert_eq!(small.status, EvidenceStatus::Insufficient, "learned, but on 300 rows");
    assert!(small.may_feed_pool(), "only too small, readings agree: it may seed the pool, or small windows never get one");
    assert_eq!(
        combine(Gathered { readings: rs.clone(), model_fit: fit(0.1), rows: 3000, pool_rows: 0, agreement_coverage: low }, &POLICY).status,
        EvidenceStatus::Insufficient,
        "enough rows, nothing learned"
    );
    assert_eq!(combine(Gathered { readings: rs.clone(), model_fit: None, rows: 3000, pool_rows: 0, agreement_coverage: low }, &POLICY).status, EvidenceStatus::Insufficient, "no out-of-fold fit");
    assert_eq!(combine(Gathered { readings: rs.clone(), model_fit: fit(0.5), rows: 3000, pool_rows: 0, agreement_coverage: low }, &POLICY).status, EvidenceStatus::Consistent);
    // Most labels shared: agreement carries the share, whatever the network.
    let shared = combine(Gathered { readings: rs, model_fit: None, rows: 300, pool_rows: 0, agreement_coverage: AGREEMENT_CARRIES_COVERAGE }, &POLICY);
    assert_eq!((shared.status, shared.wrong_share), (EvidenceStatus::Consistent, 0.25));
}

/// Synthetic window: right labels score low, wrong ones high, the pool holds right labels
/// only; the pool control must recover the window's wrong share whatever its class mix.
#[test]
fn the_pool_control_recovers_the_wrong_share() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    for truth in [0.0, 0.05, 0.3] {
        let (pending, pool) = (2000, 3000);
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for i in 0..pending + pool {
            let wrong = i < pending && rng.random::<f64>() < truth;
            // Class 0 is harder (higher clean scores) and over-represented in the window.
            let class = if i < pending { (rng.random::<f64>() < 0.6) as u32 } else { (i % 2) as u32 };
            let clean = rng.random::<f32>() + if class == 1 { 0.5 } else { 0.0 };
            scores.push(if wrong { 3.0 + rng.random::<f32>() } else { clean });
            labels.push(class);
        }
        let s = WindowSignals { scores: &scores, labels: &labels, pending, classes: 2, heldout: None, final_loss: 0.1, seed: 1 };
        let r = pool_control(&s, 1.96).unwrap();
        assert!((r.wrong_share - truth).abs() < 0.04, "truth {truth}: {r:?}");
        assert!(r.ci_low <= truth + 0.01 && r.ci_high >= truth - 0.01, "truth {truth}: {r:?}");
    }
}

#[test]
fn confident_learning_counts_labels_the_network_puts_elsewhere() {
    // Four rows labelled 0 and four labelled 1; the network puts row 3 (labelled 0) in 1.
    let labels = [0, 0, 0, 0, 1, 1, 1, 1];
    let p: Vec<f32> = labels.iter().enumerate().flat_map(|(i, &l)| if i == 3 || l == 1 { [0.1, 0.9] } else { [0.9, 0.1] }).collect();
    let s = WindowSignals { scores: &[0.0; 8], labels: &labels, pending: 8, classes: 2, heldout: Some(&p), final_loss: 0.1, seed: 1 };
    let r = confident_learning(&p, &s, 1.96, 100).unwrap();
    assert!((r.wrong_share - 1.0 / 8.0).abs() < 1e-9, "{r:?}");
    let f = model_fit(&p, &s);
    assert!((f.heldout_accuracy - 7.0 / 8.0).abs() < 1e-9 && (f.lift - 0.75).abs() < 1e-9, "{f:?}");
}

#[test]
fn a_lone_reading_sets_the_flag_count_but_its_interval_reaches_zero() {
    let e = combine(Gathered { readings: vec![reading(Estimator::ConfidentLearning, 0.04)], model_fit: fit(0.9), rows: 10_000, pool_rows: 0, agreement_coverage: 0.0 }, &POLICY);
    assert_eq!((e.status, e.wrong_share, e.wrong_share_ci_low), (EvidenceStatus::Uncorroborated, 0.04, 0.0));
    assert!((e.wrong_share_ci_high - 0.06).abs() < 1e-12);
    assert!(e.status.sets_the_flag_count() && !e.status.supports_a_decision());
    assert_eq!(e.status.review_reason(), Some("uncorroborated_estimate"));
}

#[test]
fn no_interval_is_narrower_than_its_sample_allows() {
    // A bootstrap of zero flags on 2,000 rows: [0, 0]. Three in 2,000 is still possible.
    let (lo, hi) = no_narrower_than_its_sample((0.0, 0.0), 0.0, 2000, 1.96);
    assert_eq!(lo, 0.0);
    assert!(hi > 0.0015, "{hi}");
    // A wide bootstrap interval stays as it is.
    assert_eq!(no_narrower_than_its_sample((0.05, 0.4), 0.2, 2000, 1.96), (0.05, 0.4));
}

#[test]
fn confident_learning_on_a_clean_window_keeps_an_upper_bound() {
    // Out-of-fold probabilities that agree with every label: nothing is confidently wrong.
    let n = 2000;
    let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
    let p: Vec<f32> = labels.iter().flat_map(|&l| if l == 0 { [0.9, 0.1] } else { [0.1, 0.9] }).collect();
    let scores: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.01).collect();
    let s = WindowSignals { scores: &scores, labels: &labels, pending: n, classes: 2, heldout: Some(&p), final_loss: 0.1, seed: 1 };
    let cl = confident_learning(&p, &s, 1.96, 100).unwrap();
    assert_eq!((cl.wrong_share, cl.ci_low), (0.0, 0.0));
    assert!(cl.ci_high > 0.0015, "{cl:?}");
}

#[test]
fn a_shift_keeps_the_window_from_deciding_unless_agreement_carried_it() {
    let rs = vec![reading(Estimator::ScoreMixture, 0.1), reading(Estimator::PoolControl, 0.3), reading(Estimator::ConfidentLearning, 0.11)];
    let shifted = Some(ShiftCheck { statistic: 0.8, threshold: 0.25, shifted: true });
    let e = combine(Gathered { readings: rs.clone(), model_fit: fit(0.8), rows: 6000, pool_rows: 5000, agreement_coverage: 0.0 }, &POLICY).with_shift(shifted);
    assert_eq!(e.status, EvidenceStatus::Shifted);
    assert_eq!(e.status.review_reason(), Some("distribution_shift"));
    assert!(e.wrong_share_ci_high >= 0.32 && e.outliers.is_empty(), "spans every reading: {e:?}");
    assert!(e.may_feed_pool(), "the readings but one agreed: a stream that moved for good can re-seed its pool");
    let calm = combine(Gathered { readings: rs, model_fit: fit(0.8), rows: 6000, pool_rows: 5000, agreement_coverage: 0.0 }, &POLICY).with_shift(Some(ShiftCheck {
        statistic: 0.1,
        threshold: 0.25,
        shifted: false,
    }));
    assert_eq!(calm.status, EvidenceStatus::Outlier);
    let agreed = combine(Gathered { readings: vec![reading(Estimator::Agreement, 0.2)], model_fit: fit(0.0), rows: 3000, pool_rows: 0, agreement_coverage: 0.8 }, &POLICY).with_shift(shifted);
    assert_eq!(agreed.status, EvidenceStatus::Consistent);
}
