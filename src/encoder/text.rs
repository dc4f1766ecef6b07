//! A sentence encoder: a BERT-family model of a sentence-transformers directory, run in candle,
//! pooled and normalised as sentence-transformers does. Loading reads the model files; embedding
//! is pure computation.

use std::path::{Path, PathBuf};

/// A batch's embeddings (row-major) and how many of its texts were truncated.
type BatchEmbedding = (Vec<f32>, usize);

use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams, TruncationStrategy};

/// The files a model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Which of [`MODEL_FILES`] `dir` lacks (none: a model is there to load).
pub fn missing_files(dir: &Path) -> Vec<&'static str> {
    MODEL_FILES.iter().copied().filter(|f| !dir.join(f).is_file()).collect()
}

/// How token vectors become one sentence vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The attention-masked mean of the token vectors (all-MiniLM-L6-v2 and most models).
    Mean,
    /// The first token's vector.
    Cls,
}

/// Vectors of a batch of texts, and how many of the texts were cut at the token limit.
#[derive(Debug, Clone, Default)]
pub struct Embedded {
    /// `texts × dim`, row-major.
    pub vectors: Vec<f32>,
    pub truncated: usize,
}

pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    dim: usize,
    max_tokens: usize,
    batch_size: usize,
    device: Device,
    dir: PathBuf,
}

impl SentenceEncoder {
    /// Loads `dir`: `config.json`, `tokenizer.json`, `model.safetensors`, and where present the
    /// sentence-transformers files that set the token limit (`sentence_bert_config.json`), the
    /// pooling (`1_Pooling/config.json`) and normalisation (`modules.json`).
    pub fn load(dir: &Path, batch_size: usize, device: &Device) -> Result<Self> {
        let missing = missing_files(dir);
        if !missing.is_empty() {
            bail!("no sentence encoder at {}: {} missing", dir.display(), missing.join(", "));
        }
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let max_tokens = read_json::<serde_json::Value>(&dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|c| c["max_seq_length"].as_u64())
            .map_or(config.max_position_embeddings, |n| n as usize)
            .min(config.max_position_embeddings);
        let pooling = match read_json::<serde_json::Value>(&dir.join("1_Pooling/config.json")) {
            Ok(p) if p["pooling_mode_cls_token"].as_bool() == Some(true) => Pooling::Cls,
            Ok(p) if p["pooling_mode_mean_tokens"].as_bool() == Some(false) => bail!("{}: only mean and CLS pooling are supported", dir.join("1_Pooling/config.json").display()),
            _ => Pooling::Mean,
        };
        let normalize = std::fs::read_to_string(dir.join("modules.json")).is_ok_and(|m| m.contains("Normalize"));
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, strategy: TruncationStrategy::LongestFirst, stride: 0, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
        let pad_token = tokenizer.id_to_token(config.pad_token_id as u32).unwrap_or_else(|| "[PAD]".into());
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, pad_id: config.pad_token_id as u32, pad_token, ..Default::default() }));
        // SAFETY: the weights file is memory-mapped read-only; nothing in this process writes it.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, device) }.with_context(|| format!("{}", dir.join("model.safetensors").display()))?;
        let model = BertModel::load(vb, &config).with_context(|| format!("{}: not a BERT-family model", dir.display()))?;
        Ok(Self { model, tokenizer, pooling, normalize, dim: config.hidden_size, max_tokens, batch_size: batch_size.max(1), device: device.clone(), dir: dir.to_path_buf() })
    }

    /// Length of one text's vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens beyond this are cut.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Embeds `texts`, `batch_size` at a time. Texts of similar length share a batch (sorted by
    /// length), so little of each batch is padding.
    pub fn embed(&self, texts: &[&str]) -> Result<Embedded> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut out = Embedded { vectors: vec![0.0; texts.len() * self.dim], truncated: 0 };
        let chunks: Vec<&[usize]> = order.chunks(self.batch_size).collect();
        let embedded = self.embed_batches_side_by_side(texts, &chunks)?;
        for (chunk, (vectors, truncated)) in chunks.iter().zip(embedded) {
            out.truncated += truncated;
            for (row, &i) in chunk.iter().enumerate() {
                out.vectors[i * self.dim..(i + 1) * self.dim].copy_from_slice(&vectors[row * self.dim..(row + 1) * self.dim]);
            }
        }
        Ok(out)
    }

    /// One batch per worker thread at a time, as many workers as the kernels have threads,
    /// each with serial kernels. On two cores that embeds 1.9× as fast as one, where one batch
    /// at a time with two-thread matrix products gains 1.4× (docs/benchmarks.md §11): the
    /// products of a sentence batch are small, and the kernels between them run on one thread.
    fn embed_batches_side_by_side(&self, texts: &[&str], chunks: &[&[usize]]) -> Result<Vec<(Vec<f32>, usize)>> {
        let workers = candle_core::utils::get_num_threads().clamp(1, chunks.len().max(1));
        let batch = |chunk: &[usize]| self.embed_batch(&chunk.iter().map(|&i| texts[i]).collect::<Vec<_>>());
        if workers == 1 {
            return chunks.iter().map(|c| batch(c)).collect();
        }
        // Each worker's kernels on a pool of its own single thread, the matrix products serial.
        let _serial = crate::device::SerialKernels::enter();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Result<Vec<(usize, BatchEmbedding)>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| -> Result<Vec<(usize, BatchEmbedding)>> {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(chunk) = chunks.get(i) else { return Ok(done) };
                            done.push((i, pool.install(|| batch(chunk))?));
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("an encoder worker panicked")))).collect()
        });
        let mut out: Vec<Option<(Vec<f32>, usize)>> = vec![None; chunks.len()];
        for worker in results {
            for (i, r) in worker? {
                out[i] = Some(r);
            }
        }
        Ok(out.into_iter().map(|r| r.expect("every batch ran")).collect())
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<(Vec<f32>, usize)> {
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let truncated = encodings.iter().filter(|e| !e.get_overflowing().is_empty()).count();
        let (rows, len) = (encodings.len(), encodings.first().map_or(0, |e| e.len()));
        let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> { encodings.iter().flat_map(|e| f(e).iter().copied()).collect() };
        let ids = Tensor::from_vec(flat(&|e| e.get_ids()), (rows, len), &self.device)?;
        let type_ids = ids.zeros_like()?;
        let mask = Tensor::from_vec(flat(&|e| e.get_attention_mask()), (rows, len), &self.device)?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                summed.broadcast_div(&mask.sum(1)?.clamp(1e-9, f64::MAX)?)?
            }
        };
        let pooled = if self.normalize { pooled.broadcast_div(&pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?)? } else { pooled };
        Ok((pooled.flatten_all()?.to_vec1::<f32>()?, truncated))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
