//! Turns scores into a ranked suspect list: the most suspect first, and the top share of it as
//! flags. How large a share `auto` flags is the evidence's call ([`crate::accuracy::offline`]).

use std::str::FromStr;

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

/// The top `share` of the samples by score (`round(share · n)` of them), most suspect first.
pub fn top_share(scores: &[f32], share: f64) -> Vec<usize> {
    let mut order = rank_descending(scores);
    order.truncate(((share * scores.len() as f64).round() as usize).min(scores.len()));
    order
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
        assert_eq!(top_share(&scores, 0.4), vec![1, 3]);
        assert_eq!(rank_descending(&scores), vec![1, 3, 0, 4, 2]);
    }
}
