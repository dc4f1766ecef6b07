//! Turns scores into a ranked suspect list: top-k when the noise rate is known, the mixture
//! estimate of `noise_rate` when it is not.

use std::str::FromStr;

use serde::Serialize;

use super::noise_rate::{self, NoiseEstimate};

/// How many samples to flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoiseRate {
    /// Estimate it from the scores.
    Auto,
    /// The buyer knows (or assumes) the share of wrong labels: flag the top `rate · n`.
    Fixed(f64),
}

impl FromStr for NoiseRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(NoiseRate::Auto);
        }
        match s.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(NoiseRate::Fixed(r)),
            _ => Err(format!("noise rate `{s}`: use `auto` or a fraction between 0 and 1, e.g. 0.2")),
        }
    }
}

/// Sample indices ordered from most to least suspect (ties keep input order).
pub fn rank_descending(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    /// Indices of flagged samples, most suspect first.
    pub flagged: Vec<usize>,
    /// The rate used: the given one, or the estimate.
    pub noise_rate: f64,
    pub estimate: Option<NoiseEstimate>,
}

pub fn select(scores: &[f32], rate: NoiseRate) -> Selection {
    let order = rank_descending(scores);
    match rate {
        NoiseRate::Fixed(r) => {
            let k = ((r * scores.len() as f64).round() as usize).min(scores.len());
            Selection { flagged: order[..k].to_vec(), noise_rate: r, estimate: None }
        }
        NoiseRate::Auto => {
            let est = noise_rate::estimate(scores);
            let flagged = order.into_iter().take_while(|&i| scores[i] >= est.threshold).collect();
            Selection { flagged, noise_rate: est.rate, estimate: Some(est) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auto_and_fractions_and_rejects_the_rest() {
        assert_eq!("auto".parse::<NoiseRate>(), Ok(NoiseRate::Auto));
        assert_eq!("0.25".parse::<NoiseRate>(), Ok(NoiseRate::Fixed(0.25)));
        assert!("1.5".parse::<NoiseRate>().unwrap_err().contains("between 0 and 1"));
        assert!("lots".parse::<NoiseRate>().is_err());
    }

    #[test]
    fn fixed_rate_flags_the_top_k() {
        let scores = [0.1, 0.9, -0.3, 0.5, 0.0];
        let sel = select(&scores, NoiseRate::Fixed(0.4));
        assert_eq!(sel.flagged, vec![1, 3]);
        assert_eq!(rank_descending(&scores), vec![1, 3, 0, 4, 2]);
    }
}
