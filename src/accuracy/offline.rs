//! The gate's evidence for a whole labelled set, as `score` and `eval` use it: how many of its
//! labels are wrong, with an interval, and which samples that flags.
//!
//! The set is judged as one window with no reference pool: the same estimators
//! ([`super::evidence::gather`]) on the same out-of-fold probabilities, and the same rule for when
//! they may decide. Where they cannot (the network did not learn, or the readings disagree),
//! nothing is flagged automatically; the ranking is still written.

use candle_core::Device;
use serde::Serialize;

use super::evidence::{self, EvidencePolicy, WindowEvidence, WindowSignals};
use crate::o2u::{self, suspects, O2uConfig, O2uOutcome, Samples};

/// Folds of the cross-fitting that yields the out-of-fold probabilities; the gate's windows use
/// the same.
pub const CROSSFIT_FOLDS: usize = 2;

/// How a set is judged: the gate's evidence bounds and cross-fitting length.
#[derive(Debug, Clone, Copy)]
pub struct JudgeSettings {
    pub evidence: EvidencePolicy,
    /// Mini-batches each cross-fitting network trains for at least.
    pub crossfit_min_steps: usize,
}

/// What was decided for a set.
#[derive(Debug, Clone, Serialize)]
pub struct SetJudgement {
    pub evidence: WindowEvidence,
    /// Flagged sample indices, most suspect first.
    #[serde(skip)]
    pub flagged: Vec<usize>,
    /// Why nothing was flagged automatically (`insufficient_evidence`, `estimators_disagree`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_flagged_because: Option<&'static str>,
}

/// Judges a scored set. `rate` is the buyer's `--noise-rate`: a fixed share flags that share,
/// `auto` reads the evidence.
pub fn judge(samples: Samples, outcome: &O2uOutcome, rate: suspects::NoiseRate, config: &O2uConfig, settings: &JudgeSettings, device: &Device) -> SetJudgement {
    let n = outcome.scores.len();
    let evidence = match rate {
        suspects::NoiseRate::Fixed(r) => evidence::fixed(r, n, 0, settings.evidence.z),
        suspects::NoiseRate::Auto => {
            // A set too small to split still gets the mixture; the missing fit makes the evidence
            // insufficient.
            let heldout = o2u::heldout_probabilities(samples, config, CROSSFIT_FOLDS, settings.crossfit_min_steps, None, device).ok();
            let signals =
                WindowSignals { scores: &outcome.scores, labels: samples.labels, pending: n, classes: samples.classes, heldout: heldout.as_deref(), final_loss: outcome.final_loss, seed: config.seed };
            evidence::gather(&signals, None, 0.0, &settings.evidence)
        }
    };
    let not_flagged_because = (!evidence.status.sets_the_flag_count()).then(|| evidence.status.review_reason()).flatten();
    let share = if not_flagged_because.is_some() { 0.0 } else { evidence.wrong_share };
    SetJudgement { flagged: suspects::top_share(&outcome.scores, share), evidence, not_flagged_because }
}
