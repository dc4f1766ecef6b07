//! How many labels are wrong where several annotators labelled the same items: a one-coin
//! Dawid–Skene model whose item prior is the network's out-of-fold class probabilities, weighted
//! by what the network has shown it knows.
//!
//! Annotator `a` gives the true class with probability `accuracy[a]` (else one of the other
//! classes, uniformly). An item's prior over classes is `π^(1−w) · p^w`: the class shares alone
//! at `w = 0` (plain Dawid–Skene on the votes), the probabilities of a network that saw none of
//! the item's labels (`p`, cross-fitted with the item's labels in one fold) at `w = 1`, sharper
//! beyond. EM fits the accuracies and shares for each weight in [`NETWORK_WEIGHTS`], and the
//! weight under which the labels are most likely wins (empirical Bayes): a network that knows
//! nothing of the classes earns 0, and the model is Dawid–Skene on the votes.
//!
//! Each label is then judged by the others: its probability of being right is the posterior of
//! its class given the item's other labels and the network, with its own likelihood taken out. An
//! annotator's accuracy is the mean of its labels', and the window's wrong share is one minus
//! their mean. Judged with its own label, every label of a careful-looking annotator is nearly
//! sure, and the music-genre workers ranked at ρ 0.62 (the model's accuracy parameter alike);
//! judged by the others, 0.79. The price: where the others leave an item in doubt (two labels of
//! mixed quality and no network), a label's chance of matching their verdict is lower than its
//! chance of being right, and accuracy reads low (0.51 wrong against a true 0.34 on a synthetic
//! crowd of three labels per item; on music-genre, 0.444 against a true 0.440).
//!
//! Which model when: one-coin for every annotator. A per-class confusion matrix (full
//! Dawid–Skene) for annotators with many labels ranked the music-genre workers worse (ρ 0.75–0.85
//! against 0.80–0.85, smoothed towards one-coin by 2–20 pseudo-labels), so it is not used.
//!
//! On the music-genre crowd labels in one window: wrong share 0.444 against a true 0.440, worker
//! ranking ρ 0.79 and MAE 0.048 (docs/benchmarks.md §10).

const PRIOR_ACCURACY: f64 = 0.7;
/// Pseudo-labels of the Beta prior on each annotator's accuracy, so an annotator with three
/// labels does not get an accuracy of 0 or 1.
const PRIOR_STRENGTH: f64 = 2.0;
const MAX_ITERATIONS: usize = 200;
/// Relative change of the labels' log-likelihood at which EM stops.
const TOLERANCE: f64 = 1e-9;

/// Labels with their item and annotator, and optionally what a network that never saw the
/// item's labels says of its class. Indices are dense: items in `0..items`, annotators in
/// `0..annotators`, labels in `0..classes`.
pub struct Votes<'a> {
    pub item: &'a [usize],
    pub annotator: &'a [usize],
    pub label: &'a [u32],
    pub items: usize,
    pub annotators: usize,
    pub classes: usize,
    /// Per item, `classes` out-of-fold class probabilities (items × classes, row-major).
    pub network: Option<&'a [f32]>,
}

/// [`Votes::network`] from out-of-fold probabilities by row (`classes` per row): label `j`'s item
/// takes the probabilities of row `row_of(j)` (the rows of one item share its features and fold).
pub fn network_by_item(item: &[usize], items: usize, classes: usize, p: &[f32], row_of: impl Fn(usize) -> usize) -> Vec<f32> {
    let mut per_item = vec![0f32; items * classes];
    for (j, &i) in item.iter().enumerate() {
        let row = row_of(j);
        per_item[i * classes..(i + 1) * classes].copy_from_slice(&p[row * classes..(row + 1) * classes]);
    }
    per_item
}

/// The network's weights tried: the item prior is `π^(1−w) · p^w`, from the class shares alone
/// (w = 0: Dawid–Skene on the votes) to the network's probabilities alone (w = 1).
const NETWORK_WEIGHTS: [f64; 10] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0];
/// Probabilities are floored so that a confident network cannot veto the votes outright.
const MIN_NETWORK_PROBABILITY: f64 = 1e-4;

#[derive(Debug, Clone)]
pub struct VoteFit {
    pub noise_share: f64,
    /// Per label: the probability that it is right given the item's other labels and the
    /// network (the model fitted on every label).
    pub p_correct: Vec<f64>,
    /// Per label: the posterior that it is right with its own vote counted too. Where the other
    /// labels leave an item in doubt, a careful annotator's label is likelier right than judged
    /// by the others alone: intervals span both.
    pub p_correct_with_own: Vec<f64>,
    /// Per annotator: the model's accuracy parameter.
    pub annotator_accuracy: Vec<f64>,
    /// The weight the network's evidence earned (0 without a network).
    pub network_weight: f64,
    /// The labels' marginal log-likelihood at that weight.
    pub log_likelihood: f64,
}

/// One-coin Dawid–Skene whose item prior leans on the network as far as the votes bear it out:
/// the weight is the one (of [`NETWORK_WEIGHTS`]) under which the annotators' labels are most
/// likely (empirical Bayes). A network that knows nothing of the classes earns weight 0, and the
/// model is Dawid–Skene on the votes; one that predicts what careful annotators say earns a high
/// weight, and then it also judges labels that no other annotator checked.
pub fn fit_votes(v: &Votes<'_>) -> Option<VoteFit> {
    let n = v.label.len();
    if n < 10 || v.classes < 2 {
        return None;
    }
    let weights: &[f64] = if v.network.is_some() { &NETWORK_WEIGHTS } else { &NETWORK_WEIGHTS[..1] };
    weights.iter().map(|&w| fit_at_weight(v, w)).max_by(|a, b| a.log_likelihood.total_cmp(&b.log_likelihood))
}

fn fit_at_weight(v: &Votes<'_>, w: f64) -> VoteFit {
    let (n, k) = (v.label.len(), v.classes);
    let ln_other = ((k - 1) as f64).ln();
    let mut counts = vec![0.0f64; v.annotators];
    for &a in v.annotator {
        counts[a] += 1.0;
    }
    // Start from the vote shares (and the network where it counts).
    let mut class_share = vec![1.0 / k as f64; k];
    let mut accuracy = vec![PRIOR_ACCURACY; v.annotators];
    let network_ln: Vec<f64> = v.network.map_or_else(Vec::new, |p| p.iter().map(|&x| (x as f64).max(MIN_NETWORK_PROBABILITY).ln()).collect());
    let mut post = vec![0.0f64; v.items * k];
    let mut log_joint = vec![0.0f64; v.items * k];
    let mut p_correct = vec![0.0f64; n];
    let mut log_likelihood = f64::NEG_INFINITY;
    for iteration in 0..MAX_ITERATIONS {
        // E step: prior ∝ π^(1−w) · p^w per item, times each label's likelihood.
        for i in 0..v.items {
            let row = &mut post[i * k..(i + 1) * k];
            for (c, x) in row.iter_mut().enumerate() {
                let network = if network_ln.is_empty() { 0.0 } else { w * network_ln[i * k + c] };
                *x = (1.0 - w).max(0.0) * class_share[c].max(1e-12).ln() + network;
            }
            normalise_log(row);
            for x in row.iter_mut() {
                *x = x.ln();
            }
        }
        for j in 0..n {
            let a = accuracy[v.annotator[j]];
            let (if_right, if_wrong) = (a.ln(), (1.0 - a).ln() - ln_other);
            let row = &mut post[v.item[j] * k..(v.item[j] + 1) * k];
            row.iter_mut().for_each(|x| *x += if_wrong);
            row[v.label[j] as usize] += if_right - if_wrong;
        }
        log_joint.copy_from_slice(&post);
        let mut ll = 0.0;
        for row in post.chunks_mut(k) {
            ll += normalise_log(row);
        }
        for j in 0..n {
            p_correct[j] = post[v.item[j] * k + v.label[j] as usize];
        }
        // M step.
        let mut hits = vec![0.0f64; v.annotators];
        for j in 0..n {
            hits[v.annotator[j]] += p_correct[j];
        }
        for a in 0..v.annotators {
            accuracy[a] = ((hits[a] + PRIOR_STRENGTH * PRIOR_ACCURACY) / (counts[a] + PRIOR_STRENGTH)).clamp(1e-3, 1.0 - 1e-3);
        }
        let labelled: Vec<bool> = {
            let mut seen = vec![false; v.items];
            v.item.iter().for_each(|&i| seen[i] = true);
            seen
        };
        let mut share = vec![0.0f64; k];
        for (_, row) in post.chunks(k).enumerate().filter(|(i, _)| labelled[*i]) {
            row.iter().zip(share.iter_mut()).for_each(|(p, s)| *s += p);
        }
        let total: f64 = share.iter().sum();
        class_share = share.iter().map(|s| (s + 1.0) / (total + k as f64)).collect();
        let converged = iteration > 0 && (ll - log_likelihood).abs() < TOLERANCE * ll.abs().max(1.0);
        log_likelihood = ll;
        if converged {
            break;
        }
    }
    // Each label judged by the others: its own likelihood taken out of its item's posterior. A
    // label that agrees with itself proves nothing, and the full posterior made every label of a
    // careful-looking annotator nearly sure (vendor ranking ρ 0.62 on music-genre; 0.80–0.85 so).
    let mut judged_by_others = vec![0.0f64; n];
    let mut row = vec![0.0f64; k];
    for j in 0..n {
        let a = accuracy[v.annotator[j]];
        let (if_right, if_wrong) = (a.ln(), (1.0 - a).ln() - ln_other);
        row.copy_from_slice(&log_joint[v.item[j] * k..(v.item[j] + 1) * k]);
        row.iter_mut().for_each(|x| *x -= if_wrong);
        row[v.label[j] as usize] -= if_right - if_wrong;
        normalise_log(&mut row);
        judged_by_others[j] = row[v.label[j] as usize];
    }
    let noise_share = 1.0 - judged_by_others.iter().sum::<f64>() / n as f64;
    VoteFit { noise_share, p_correct: judged_by_others, p_correct_with_own: p_correct, annotator_accuracy: accuracy, network_weight: w, log_likelihood }
}

impl VoteFit {
    /// Whether the network's own scores should say which labels are wrong (agreement says how
    /// many): the labels are likeliest with its probabilities sharpened (weight ≥ 2), so it knows
    /// the classes better than its probabilities say, as a network trained on noisy labels tends
    /// to. Where it earns less, its probabilities already count in the judgment by the votes.
    /// On the music-genre labels (weight 2) its scores ranked the workers at ρ 0.81–0.88 against
    /// 0.76–0.80 by the votes; on the crowd text set (weight 1–1.5) at 0.59 against 0.61–0.68
    /// (docs/benchmarks.md §10).
    pub fn network_knows_more_than_it_says(&self) -> bool {
        self.network_weight >= 2.0
    }
}

/// Turns a row of log-weights into probabilities in place; returns the log of their sum.
fn normalise_log(row: &mut [f64]) -> f64 {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    row.iter_mut().for_each(|x| *x /= sum);
    max + sum.ln()
}

/// Dense indices for string keys, in order of first appearance.
pub fn index_of<'a>(keys: impl IntoIterator<Item = &'a str>) -> (Vec<usize>, usize) {
    let mut seen = std::collections::HashMap::new();
    let idx = keys
        .into_iter()
        .map(|k| {
            let next = seen.len();
            *seen.entry(k).or_insert(next)
        })
        .collect();
    (idx, seen.len())
}

/// Share of labels whose item was also labelled by a different annotator.
pub fn overlap_share(item: &[usize], annotator: &[usize], items: usize) -> f64 {
    overlap_shares(item, annotator, items, item.len())
}

/// Share of the first `counted` labels whose item was also labelled by a different annotator
/// (among all the labels given).
pub fn overlap_shares(item: &[usize], annotator: &[usize], items: usize, counted: usize) -> f64 {
    if counted == 0 {
        return 0.0;
    }
    let mut first: Vec<Option<usize>> = vec![None; items];
    let mut multi = vec![false; items];
    for (&i, &a) in item.iter().zip(annotator) {
        match first[i] {
            None => first[i] = Some(a),
            Some(b) if b != a => multi[i] = true,
            _ => {}
        }
    }
    item[..counted].iter().filter(|&&i| multi[i]).count() as f64 / counted as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// A synthetic crowd: `items` items of 4 classes, 3 labels each from annotators with known
    /// accuracies; per item, a network's probabilities that put `network_accuracy` of its mass on
    /// the true class (the rest spread evenly). Returns the votes' parts and which labels are wrong.
    struct Crowd {
        item: Vec<usize>,
        annotator: Vec<usize>,
        label: Vec<u32>,
        network: Vec<f32>,
        wrong: Vec<bool>,
    }

    fn crowd(accuracies: &[f64], items: usize, per_item: usize, network_accuracy: f32, seed: u64) -> Crowd {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut c = Crowd { item: vec![], annotator: vec![], label: vec![], network: vec![], wrong: vec![] };
        for i in 0..items {
            let truth = rng.random_range(0..4u32);
            for k in 0..4u32 {
                c.network.push(if k == truth { network_accuracy } else { (1.0 - network_accuracy) / 3.0 });
            }
            for _ in 0..per_item {
                let a = rng.random_range(0..accuracies.len());
                let right = rng.random::<f64>() < accuracies[a];
                c.item.push(i);
                c.annotator.push(a);
                c.label.push(if right { truth } else { (truth + rng.random_range(1..4u32)) % 4 });
                c.wrong.push(!right);
            }
        }
        c
    }

    fn votes<'a>(c: &'a Crowd, items: usize, annotators: usize, network: bool) -> Votes<'a> {
        Votes { item: &c.item, annotator: &c.annotator, label: &c.label, items, annotators, classes: 4, network: network.then_some(c.network.as_slice()) }
    }

    /// Each annotator's mean probability of being right, against its true accuracy.
    fn estimates(c: &Crowd, fit: &VoteFit, annotators: usize) -> Vec<(f64, f64)> {
        (0..annotators)
            .map(|a| {
                let own: Vec<usize> = (0..c.label.len()).filter(|&j| c.annotator[j] == a).collect();
                let est = own.iter().map(|&j| fit.p_correct[j]).sum::<f64>() / own.len() as f64;
                let truth = own.iter().filter(|&&j| !c.wrong[j]).count() as f64 / own.len() as f64;
                (est, truth)
            })
            .collect()
    }

    #[test]
    fn votes_alone_rank_the_annotators_and_never_flatter_them() {
        // Judged by the others, a label reads less likely right than it is where the others leave
        // its item in doubt: the share errs on the side of wrong (module documentation), by at
        // most 0.06 here, and the annotators keep their order.
        let acc = [0.95, 0.85, 0.7, 0.5];
        let c = crowd(&acc, 2000, 5, 0.25, 1);
        let fit = fit_votes(&votes(&c, 2000, acc.len(), false)).unwrap();
        assert_eq!(fit.network_weight, 0.0);
        let truth = c.wrong.iter().filter(|&&w| w).count() as f64 / c.wrong.len() as f64;
        assert!(fit.noise_share >= truth - 0.01 && fit.noise_share <= truth + 0.06, "estimated {} true {truth}", fit.noise_share);
        let e = estimates(&c, &fit, acc.len());
        for pair in e.windows(2) {
            assert!(pair[0].0 > pair[1].0 + 0.05, "the order of the annotators: {e:?}");
        }
        for (est, truth) in e {
            assert!(est <= truth + 0.01 && est >= truth - 0.1, "estimated {est} true {truth}");
        }
    }

    #[test]
    fn a_network_that_knows_nothing_earns_no_weight() {
        let acc = [0.9, 0.6];
        let c = crowd(&acc, 1500, 3, 0.25, 2);
        let fit = fit_votes(&votes(&c, 1500, 2, true)).unwrap();
        assert!(fit.network_weight <= 0.2, "an uninformative network got weight {}", fit.network_weight);
        let e = estimates(&c, &fit, 2);
        assert!(e[0].0 > e[1].0 + 0.2, "{e:?}");
    }

    #[test]
    fn a_network_that_knows_the_classes_earns_weight_and_judges_better() {
        // Poor annotators: the votes alone leave many items in doubt.
        let acc = [0.8, 0.6, 0.45, 0.35];
        let c = crowd(&acc, 1500, 3, 0.8, 3);
        let alone = fit_votes(&votes(&c, 1500, acc.len(), false)).unwrap();
        let with = fit_votes(&votes(&c, 1500, acc.len(), true)).unwrap();
        assert!(with.network_weight >= 0.6, "a network right 80 % of the time got weight {}", with.network_weight);
        let error = |fit: &VoteFit| estimates(&c, fit, acc.len()).iter().map(|(e, t)| (e - t).abs()).sum::<f64>() / acc.len() as f64;
        assert!(error(&with) < error(&alone), "with the network {} votes alone {}", error(&with), error(&alone));
        assert!(error(&with) < 0.03, "{}", error(&with));
    }

    #[test]
    fn a_label_is_judged_by_the_others_not_by_itself() {
        // One item, two annotators of equal standing who disagree, and no network: each label is
        // as likely right as the other, and neither vouches for itself.
        let (item, annotator, label) = (vec![0; 12], (0..12).map(|j| j % 2).collect::<Vec<_>>(), (0..12).map(|j| (j % 2) as u32).collect::<Vec<_>>());
        let v = Votes { item: &item, annotator: &annotator, label: &label, items: 1, annotators: 2, classes: 2, network: None };
        let fit = fit_votes(&v).unwrap();
        assert!((fit.p_correct[0] - fit.p_correct[1]).abs() < 1e-9);
        assert!(fit.p_correct[0] < 0.9, "a label that contradicts five others cannot be sure: {}", fit.p_correct[0]);
    }

    #[test]
    fn overlap_and_indices() {
        let (idx, n) = index_of(["a", "b", "a", "c"]);
        assert_eq!((idx, n), (vec![0, 1, 0, 2], 3));
        assert_eq!(overlap_share(&[0, 0, 1, 2, 2], &[0, 1, 0, 3, 3], 3), 0.4);
    }
}
