//! Turns what vendors deliver into the feature vectors the engine scores: texts and text pairs
//! through a sentence encoder, with a bounded cache by content; images through a pretrained
//! vision tower. Model files are read once, at load; embedding is pure computation.

pub mod cache;
pub mod clip_preprocess;
pub mod image;
pub mod model_dir;
pub mod text;

use std::time::Instant;

use anyhow::{bail, Result};

pub use cache::{CacheCounts, EmbeddingCache};
pub use image::ImageEncoder;
pub use text::SentenceEncoder;

/// A text record's payload: one text, or two for pair tasks (entailment, paraphrase, relevance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextInput {
    pub text: String,
    pub pair: Option<String>,
}

/// An image record's pixels as the gate holds them: u8 values scaled to [0, 1], row-major
/// `[height, width, channels]` with 1 (grey), 3 (RGB) or 4 (RGBA) channels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageInput<'a> {
    pub pixels: &'a [f32],
    pub shape: [usize; 3],
}

/// The encoder a gate embeds its records with before a window trains: texts (`gate.input` =
/// `text` or `text_pair`) or images (`[encoder.image]`).
#[allow(clippy::large_enum_variant)] // one per gate
pub enum Embedder {
    Text(TextEmbedder),
    Image(ImageEncoder),
}

impl Embedder {
    /// Features per record: what the network trains on.
    pub fn feature_dim(&self) -> usize {
        match self {
            Embedder::Text(t) => t.feature_dim(),
            Embedder::Image(i) => i.dim(),
        }
    }

    pub fn embeds_images(&self) -> bool {
        matches!(self, Embedder::Image(_))
    }
}

/// What one call of [`TextEmbedder::embed`] did, for the metrics and the window's log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct EmbeddingReport {
    /// Records embedded (a pair counts once).
    pub records: usize,
    /// Text lookups (two per pair) by whether the cache had them.
    pub cache: CacheCounts,
    /// Texts cut at the model's token limit (of those the encoder ran on).
    pub truncated: usize,
    pub seconds: f64,
}

/// The sentence encoder with its cache, set for single texts or for pairs.
pub struct TextEmbedder {
    encoder: SentenceEncoder,
    cache: EmbeddingCache,
    pairs: bool,
}

impl TextEmbedder {
    pub fn new(encoder: SentenceEncoder, cache_entries: usize, pairs: bool) -> Self {
        Self { encoder, cache: EmbeddingCache::new(cache_entries), pairs }
    }

    /// Loads the model of `model_dir` (the default model in the model cache when `None`), on
    /// the CPU. A missing model is an error that says how to install it.
    pub fn load(model_dir: Option<&std::path::Path>, batch_size: usize, cache_entries: usize, pairs: bool) -> Result<Self> {
        let dir = model_dir::text_model_dir(model_dir);
        let encoder = SentenceEncoder::load(&dir, batch_size, &candle_core::Device::Cpu).map_err(|e| anyhow::anyhow!("encoder.text.model_dir: {e:#}; {}", model_dir::how_to_install()))?;
        Ok(Self::new(encoder, cache_entries, pairs))
    }

    /// Features per record: the sentence vector u, or for a pair the Sentence-BERT classification
    /// input [u, v, |u − v|, u ⊙ v].
    pub fn feature_dim(&self) -> usize {
        if self.pairs {
            4 * self.encoder.dim()
        } else {
            self.encoder.dim()
        }
    }

    pub fn encoder(&self) -> &SentenceEncoder {
        &self.encoder
    }

    /// Features of each input, `feature_dim` each, row-major. Each distinct text is embedded once
    /// (within the call and across calls while the cache keeps it).
    pub fn embed(&mut self, inputs: &[TextInput]) -> Result<(Vec<f32>, EmbeddingReport)> {
        let started = Instant::now();
        let mut texts: Vec<&str> = Vec::with_capacity(inputs.len() * if self.pairs { 2 } else { 1 });
        for input in inputs {
            match (&input.pair, self.pairs) {
                (Some(pair), true) => texts.extend([input.text.as_str(), pair.as_str()]),
                (None, false) => texts.push(&input.text),
                (None, true) => bail!("a text without its `text_pair` reached a pair encoder"),
                (Some(_), false) => bail!("a `text_pair` reached a single-text encoder"),
            }
        }
        let (vectors, mut report) = self.vectors(&texts)?;
        report.records = inputs.len();
        let dim = self.encoder.dim();
        let features = if self.pairs {
            let mut features = Vec::with_capacity(inputs.len() * 4 * dim);
            for pair in vectors.chunks_exact(2 * dim) {
                let (u, v) = pair.split_at(dim);
                features.extend_from_slice(u);
                features.extend_from_slice(v);
                features.extend(u.iter().zip(v).map(|(a, b)| (a - b).abs()));
                features.extend(u.iter().zip(v).map(|(a, b)| a * b));
            }
            features
        } else {
            vectors
        };
        report.seconds = started.elapsed().as_secs_f64();
        Ok((features, report))
    }

    /// One vector per text, from the cache where it has them; the rest in one encoder run.
    fn vectors(&mut self, texts: &[&str]) -> Result<(Vec<f32>, EmbeddingReport)> {
        let dim = self.encoder.dim();
        let mut report = EmbeddingReport::default();
        let mut out = vec![0.0; texts.len() * dim];
        let keys: Vec<cache::ContentHash> = texts.iter().map(|t| cache::content_hash(t)).collect();
        // Texts to encode, each distinct text once, and the rows that wait for each.
        let mut missing: Vec<usize> = Vec::new();
        let mut waiting: std::collections::HashMap<cache::ContentHash, Vec<usize>> = Default::default();
        for (row, key) in keys.iter().enumerate() {
            if let Some(v) = self.cache.get(key) {
                out[row * dim..(row + 1) * dim].copy_from_slice(v);
                report.cache.hits += 1;
                continue;
            }
            let rows = waiting.entry(*key).or_default();
            if rows.is_empty() {
                missing.push(row);
                report.cache.misses += 1;
            } else {
                // A repeat within this call: embedded once, as a cache hit would be.
                report.cache.hits += 1;
            }
            rows.push(row);
        }
        let batch: Vec<&str> = missing.iter().map(|&row| texts[row]).collect();
        let embedded = self.encoder.embed(&batch)?;
        report.truncated = embedded.truncated;
        for (i, &first) in missing.iter().enumerate() {
            let vector = &embedded.vectors[i * dim..(i + 1) * dim];
            for &row in &waiting[&keys[first]] {
                out[row * dim..(row + 1) * dim].copy_from_slice(vector);
            }
            self.cache.put(keys[first], vector);
        }
        Ok((out, report))
    }
}

#[cfg(test)]
pub(crate) mod image_tests;
#[cfg(test)]
mod tests;
