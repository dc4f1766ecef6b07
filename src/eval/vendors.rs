//! Per-annotator accuracy on real crowd labels with known truth: each annotator is treated as a
//! vendor, and the gate's estimate (the agreement model with the network's out-of-fold
//! probabilities says how many labels are wrong; the scores say which, or where the network
//! earned no weight, each label is judged by the item's other labels) is compared with the
//! annotator's true accuracy.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Serialize;

use super::metrics::spearman;
use crate::{
    accuracy::{self, agreement},
    data::LabelledSet,
    o2u::suspects,
    stats::z_for,
};

#[derive(Debug, Clone, Serialize)]
pub struct VendorRow {
    pub vendor: String,
    pub labels: usize,
    pub true_accuracy: f64,
    pub estimated_accuracy: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// "Model's argmax equals the given label", the baseline the issue quotes.
    pub argmax_agreement: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VendorReport {
    /// Only annotators with at least this many labels are compared.
    pub min_labels: usize,
    pub vendors: Vec<VendorRow>,
    pub vendor_accuracy_mae: f64,
    pub vendor_accuracy_spearman: f64,
    pub baseline_argmax_mae: f64,
    pub baseline_argmax_spearman: f64,
    pub noise_share_estimate: f64,
    pub true_noise_share: f64,
    /// Share of labels on items that another annotator labelled too.
    pub overlap_share: f64,
    /// The weight the agreement model gave the network's probabilities (0: votes alone).
    pub network_weight: f64,
}

/// `heldout`: per label row, out-of-fold class probabilities from networks that saw none of the
/// item's labels (folds grouped by item); the network counts as learned at `min_model_lift`, as in
/// the gate's windows.
pub fn vendor_report(set: &LabelledSet, scores: &[f32], predicted: &[u32], heldout: Option<&[f32]>, min_model_lift: f64, min_labels: usize) -> Result<VendorReport> {
    let (Some(annotators), Some(truth)) = (&set.annotators, &set.truth) else { bail!("--vendors needs a data set with annotators and true labels (music-genre)") };
    let item_keys: Vec<&str> = match &set.items {
        Some(items) => items.iter().map(String::as_str).collect(),
        None => set.sample_ids.iter().map(String::as_str).collect(),
    };
    let (item, items) = agreement::index_of(item_keys);
    let (annotator, n_annotators) = agreement::index_of(annotators.iter().map(String::as_str));
    let k = set.classes.len();
    let network = heldout.map(|p| agreement::network_by_item(&item, items, k, p, |j| j));
    let votes = agreement::Votes { item: &item, annotator: &annotator, label: &set.labels, items, annotators: n_annotators, classes: k, network: network.as_deref() };
    let Some(fit) = agreement::fit_votes(&votes) else { bail!("too few labels to fit the agreement model") };
    // As the gate's windows: a network that earned weight ranks the labels by its scores
    // (agreement says how many); one that earned none leaves them to the votes.
    let learned = heldout.is_some_and(|p| accuracy::evidence::ModelFit::of(p, &set.labels, k, 0.0).lift >= min_model_lift);
    let ranked_by_votes = !(learned && fit.network_knows_more_than_it_says());
    let mut flagged = vec![false; scores.len()];
    for i in suspects::top_share(scores, fit.noise_share) {
        flagged[i] = true;
    }
    #[derive(Default)]
    struct Tally {
        labels: usize,
        right: usize,
        argmax: usize,
        p_wrong: Vec<f64>,
    }
    let mut by_vendor: BTreeMap<&str, Tally> = BTreeMap::new();
    for i in 0..set.len() {
        let t = by_vendor.entry(annotators[i].as_str()).or_default();
        t.labels += 1;
        t.right += (truth[i] == set.labels[i]) as usize;
        t.argmax += (predicted[i] == set.labels[i]) as usize;
        t.p_wrong.push(if ranked_by_votes { 1.0 - fit.p_correct[i] } else { flagged[i] as u8 as f64 });
    }
    let z = z_for(0.95);
    let vendors: Vec<VendorRow> = by_vendor
        .into_iter()
        .filter(|(_, t)| t.labels >= min_labels)
        .map(|(v, t)| {
            let e = accuracy::from_posteriors(&t.p_wrong, z);
            VendorRow {
                vendor: v.to_string(),
                labels: t.labels,
                true_accuracy: t.right as f64 / t.labels as f64,
                estimated_accuracy: e.accuracy,
                ci_low: e.ci.0,
                ci_high: e.ci.1,
                argmax_agreement: t.argmax as f64 / t.labels as f64,
            }
        })
        .collect();
    if vendors.len() < 3 {
        bail!("only {} annotators have at least {min_labels} labels", vendors.len());
    }
    let truth_acc: Vec<f64> = vendors.iter().map(|v| v.true_accuracy).collect();
    let est: Vec<f64> = vendors.iter().map(|v| v.estimated_accuracy).collect();
    let base: Vec<f64> = vendors.iter().map(|v| v.argmax_agreement).collect();
    let mae = |e: &[f64]| e.iter().zip(&truth_acc).map(|(a, b)| (a - b).abs()).sum::<f64>() / e.len() as f64;
    let wrong = truth.iter().zip(&set.labels).filter(|(t, l)| t != l).count();
    Ok(VendorReport {
        min_labels,
        vendor_accuracy_mae: mae(&est),
        vendor_accuracy_spearman: spearman(&est, &truth_acc),
        baseline_argmax_mae: mae(&base),
        baseline_argmax_spearman: spearman(&base, &truth_acc),
        vendors,
        noise_share_estimate: fit.noise_share,
        true_noise_share: wrong as f64 / set.len() as f64,
        overlap_share: agreement::overlap_share(&item, &annotator, items),
        network_weight: fit.network_weight,
    })
}
