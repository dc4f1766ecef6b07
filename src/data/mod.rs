//! Labelled data sets as the engine and the evaluation see them, and the readers that make them:
//! user files (JSONL / CSV), MNIST (IDX), and the music-genre crowd labels.

pub mod crowd_text;
pub mod image;
pub mod mnist;
pub mod music_genre;
pub mod records;
pub mod sentence_polarity;

use std::path::{Path, PathBuf};

use crate::o2u::{InputShape, Samples};

/// Samples with their given labels and, where known, the truth.
#[derive(Debug, Clone)]
pub struct LabelledSet {
    pub sample_ids: Vec<String>,
    /// Row-major, `shape.len()` values per sample.
    pub features: Vec<f32>,
    pub shape: InputShape,
    /// Given (possibly wrong) labels, indices into `classes`.
    pub labels: Vec<u32>,
    pub classes: Vec<String>,
    /// True labels, when known (evaluation only).
    pub truth: Option<Vec<u32>>,
    /// Who labelled each sample, when known (vendor or annotator id).
    pub annotators: Option<Vec<String>>,
    /// What was labelled, when several samples label the same thing (the song a crowd worker
    /// labelled): the key that lets annotators' agreement count.
    pub items: Option<Vec<String>>,
    /// The texts (and pairs), when the samples came as text: `features` stay empty until an
    /// encoder embeds them ([`LabelledSet::embed`]).
    pub texts: Option<Vec<crate::encoder::TextInput>>,
}

impl LabelledSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn samples(&self) -> Samples<'_> {
        Samples { features: &self.features, labels: &self.labels, shape: self.shape, classes: self.classes.len() }
    }

    /// The same features with the true labels (for clean-test accuracy).
    pub fn true_samples(&self) -> Option<Samples<'_>> {
        self.truth.as_ref().map(|t| Samples { labels: t, ..self.samples() })
    }

    /// Which samples carry a wrong label, when the truth is known.
    pub fn is_noisy(&self) -> Option<Vec<bool>> {
        self.truth.as_ref().map(|t| t.iter().zip(&self.labels).map(|(a, b)| a != b).collect())
    }

    /// Keeps the first `n` samples.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        self.sample_ids.truncate(n);
        self.features.truncate(n * self.shape.len());
        self.labels.truncate(n);
        if let Some(t) = &mut self.truth {
            t.truncate(n);
        }
        if let Some(a) = &mut self.annotators {
            a.truncate(n);
        }
        if let Some(i) = &mut self.items {
            i.truncate(n);
        }
        if let Some(t) = &mut self.texts {
            t.truncate(n);
        }
    }

    /// Gives the texts their features from `embedder`.
    pub fn embed(&mut self, embedder: &mut crate::encoder::TextEmbedder) -> anyhow::Result<crate::encoder::EmbeddingReport> {
        let texts = self.texts.as_ref().ok_or_else(|| anyhow::anyhow!("the samples carry features, not texts"))?;
        let (features, report) = embedder.embed(texts)?;
        self.features = features;
        self.shape = InputShape::Vector { dim: embedder.feature_dim() };
        Ok(report)
    }

    /// Gives the images their features from `encoder` (in place of the pixels).
    pub fn embed_images(&mut self, encoder: &crate::encoder::ImageEncoder) -> anyhow::Result<()> {
        let InputShape::Image { channels, height, width } = self.shape else { anyhow::bail!("the samples carry {}, not images", if self.texts.is_some() { "texts" } else { "feature vectors" }) };
        let shape = [height, width, channels];
        let inputs: Vec<crate::encoder::ImageInput> = self.features.chunks_exact(self.shape.len()).map(|pixels| crate::encoder::ImageInput { pixels, shape }).collect();
        self.features = encoder.embed(&inputs)?;
        self.shape = InputShape::Vector { dim: encoder.dim() };
        Ok(())
    }

    /// Whether the samples came as text and still need an encoder.
    pub fn needs_embedding(&self) -> bool {
        self.texts.is_some() && self.features.is_empty()
    }
}

/// Zero-mean, unit-variance scaling fitted on the training features. Images share one mean
/// and deviation across pixels (per-pixel scaling would blow up near-constant border pixels);
/// feature vectors are scaled per column.
#[derive(Debug, Clone)]
pub struct Standardizer {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Standardizer {
    pub fn fit(features: &[f32], shape: InputShape) -> Self {
        let dim = shape.len().max(1);
        let n = features.len() / dim;
        let columns = match shape {
            InputShape::Image { .. } => 1,
            InputShape::Vector { dim } => dim,
        };
        let mut sum = vec![0f64; columns];
        let mut sq = vec![0f64; columns];
        for row in features.chunks_exact(dim) {
            for part in row.chunks_exact(columns) {
                for ((s, q), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(part) {
                    *s += v as f64;
                    *q += (v as f64) * (v as f64);
                }
            }
        }
        let count = (n * dim / columns).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, &m)| {
                let var = (s / count - (m as f64).powi(2)).max(0.0);
                // Constant columns carry no information; leave them at zero instead of dividing by ~0.
                if var < 1e-12 {
                    1.0
                } else {
                    var.sqrt() as f32
                }
            })
            .collect();
        Self { mean, std }
    }

    /// Fits on `features` and scales them in place (for data with no separate test split).
    pub fn standardize_in_place(features: &mut [f32], shape: InputShape) {
        Self::fit(features, shape).apply(features, shape.len());
    }

    pub fn apply(&self, features: &mut [f32], dim: usize) {
        let columns = self.mean.len();
        debug_assert_eq!(dim % columns, 0);
        for part in features.chunks_exact_mut(columns) {
            for ((v, &m), &s) in part.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }
}

/// The data directory: `--data-dir`, else `LABELGATE_DATA_DIR`, else `../shared/data` next to
/// the project root.
pub fn default_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_scaled_per_column() {
        let mut f = vec![1.0, 10.0, 3.0, 30.0, 5.0, 50.0];
        let s = Standardizer::fit(&f, InputShape::Vector { dim: 2 });
        s.apply(&mut f, 2);
        let col0: Vec<f32> = f.iter().step_by(2).copied().collect();
        assert!((col0[0] + 1.2247).abs() < 1e-3 && col0[1].abs() < 1e-6);
        assert!((f[1] - col0[0]).abs() < 1e-5, "both columns end on the same scale");
    }

    #[test]
    fn constant_columns_become_zero_not_nan() {
        let mut f = vec![7.0, 1.0, 7.0, 2.0];
        let s = Standardizer::fit(&f, InputShape::Vector { dim: 2 });
        s.apply(&mut f, 2);
        assert_eq!(f[0], 0.0);
        assert!(f.iter().all(|v| v.is_finite()));
    }
}

/// The data sets that ship in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Builtin {
    /// MNIST training images (60,000) with the t10k images as the clean test set.
    Mnist,
    /// 2,945 real crowd labels on 700 songs; 300 held-out songs as the test set.
    MusicGenre,
    /// 10,662 movie-review sentences by polarity (texts: needs the text encoder); the last
    /// fifth is the test set.
    SentencePolarity,
}

impl Builtin {
    /// Stage-1 epochs when none are given: 2,945 music-genre labels are 23 steps an epoch, so
    /// five epochs (115 steps) leave stage 1 under-trained (auto F1 0.74 → 0.76 at 20 epochs,
    /// annotator-accuracy Spearman 0.49–0.65 → 0.84–0.90 over seeds 0–4; docs/benchmarks.md §5).
    pub fn default_stage1_epochs(self) -> usize {
        match self {
            Builtin::Mnist => crate::o2u::O2uConfig::default().stage1_epochs,
            Builtin::MusicGenre => 20,
            Builtin::SentencePolarity => crate::o2u::SentenceEmbeddingDefaults::STAGE1_EPOCHS,
        }
    }
}

/// Loads a built-in data set as (train, clean test), features standardised on the train split;
/// a set of texts comes with its texts and no features yet (see [`standardize_split`]).
pub fn load_builtin(which: Builtin, dir: &Path) -> anyhow::Result<(LabelledSet, LabelledSet)> {
    let (mut train, mut test) = load_builtin_unscaled(which, dir)?;
    if !train.needs_embedding() {
        standardize_split(&mut train, &mut test);
    }
    Ok((train, test))
}

/// A built-in data set as it is stored (MNIST's pixels in [0, 1]), for an encoder that takes
/// the raw values; scale what it makes with [`standardize_split`].
pub fn load_builtin_unscaled(which: Builtin, dir: &Path) -> anyhow::Result<(LabelledSet, LabelledSet)> {
    Ok(match which {
        Builtin::SentencePolarity => sentence_polarity::load_split(dir)?,
        Builtin::Mnist => (mnist::load(dir, "train")?, mnist::load(dir, "t10k")?),
        Builtin::MusicGenre => {
            let train = music_genre::load_crowd(dir)?;
            let test = music_genre::load_test(dir, &train.classes)?;
            (train, test)
        }
    })
}

/// Scales both splits by the train split's mean and deviation.
pub fn standardize_split(train: &mut LabelledSet, test: &mut LabelledSet) {
    let scaler = Standardizer::fit(&train.features, train.shape);
    let dim = train.shape.len();
    scaler.apply(&mut train.features, dim);
    scaler.apply(&mut test.features, dim);
}
