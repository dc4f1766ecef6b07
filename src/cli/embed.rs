//! Texts and images to features for the offline commands: `score` and `eval` embed a set of
//! texts (or, given `--image-model`, of images) before they train, and `embed` writes text
//! vectors (for comparing with other encoders) and how fast they came.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    data::{self, records, Builtin, LabelledSet},
    encoder::{ImageEncoder, TextEmbedder},
};

/// Where the text model is and how it runs, for every command that may meet texts.
#[derive(Args, Clone)]
pub struct TextModelArgs {
    /// A sentence-transformers directory (BERT family) for `text` records; default:
    /// all-MiniLM-L6-v2 in the model cache (`bash scripts/models.sh` installs it).
    #[arg(long, env = "LABELGATE_TEXT_MODEL")]
    pub text_model: Option<PathBuf>,
    /// Texts per encoder run (16 was fastest for short sentences, docs/benchmarks.md §11).
    #[arg(long, default_value_t = 16)]
    pub text_batch_size: usize,
}

impl TextModelArgs {
    fn embedder(&self, pairs: bool) -> Result<TextEmbedder> {
        // Offline sets are embedded once: no cache beyond one call's duplicates.
        TextEmbedder::load(self.text_model.as_deref(), self.text_batch_size, 0, pairs)
    }

    /// Gives a set of texts its features (nothing to do for a set of features).
    pub fn embed_sets(&self, sets: &mut [&mut LabelledSet]) -> Result<()> {
        let Some(first) = sets.iter().find(|s| s.needs_embedding()) else { return Ok(()) };
        let pairs = first.texts.as_ref().is_some_and(|t| t.first().is_some_and(|t| t.pair.is_some()));
        let mut embedder = self.embedder(pairs)?;
        for set in sets.iter_mut().filter(|s| s.needs_embedding()) {
            tracing::info!(texts = set.len(), model = %embedder.encoder().dir().display(), "embedding texts");
            let report = set.embed(&mut embedder)?;
            if report.truncated > 0 {
                tracing::warn!(truncated = report.truncated, max_tokens = embedder.encoder().max_tokens(), "texts longer than the encoder's token limit were truncated");
            }
            tracing::info!(seconds = report.seconds, texts_per_second = (report.records as f64 / report.seconds).round(), "texts embedded");
        }
        Ok(())
    }

    /// A built-in set's train and test splits of texts, embedded and standardised on the train
    /// split (sets of features come standardised already).
    pub fn embed_split(&self, train: &mut LabelledSet, test: &mut LabelledSet) -> Result<()> {
        if train.needs_embedding() {
            self.embed_sets(&mut [&mut *train, &mut *test])?;
            data::standardize_split(train, test);
        }
        Ok(())
    }
}

/// A pretrained image encoder for sets of images, whose embeddings the MLP trains on instead of
/// the pixels.
#[derive(Args, Clone)]
pub struct ImageModelArgs {
    /// A Hugging Face CLIP directory (config.json, model.safetensors, optional
    /// preprocessor_config.json) to embed `image` records with; default: train on the pixels.
    #[arg(long, env = "LABELGATE_IMAGE_MODEL")]
    pub image_model: Option<PathBuf>,
    /// Images per encoder run.
    #[arg(long, default_value_t = 16)]
    pub image_batch_size: usize,
}

impl ImageModelArgs {
    fn encoder(&self, dir: &Path) -> Result<ImageEncoder> {
        ImageEncoder::load(dir, self.image_batch_size, &candle_core::Device::Cpu).with_context(|| "--image-model")
    }

    /// Gives a set of images its embeddings (nothing to do without `--image-model`).
    pub fn embed_set(&self, set: &mut LabelledSet) -> Result<()> {
        let Some(dir) = &self.image_model else { return Ok(()) };
        let encoder = self.encoder(dir)?;
        embed_images(&encoder, set)
    }

    /// A built-in set's train and test splits: with `--image-model`, its images embedded (the
    /// train split cut to `limit` first, so that only what trains is embedded) and standardised
    /// on the train split; without, as [`data::load_builtin`] gives them.
    pub fn load_builtin(&self, which: Builtin, dir: &Path, limit: Option<usize>) -> Result<(LabelledSet, LabelledSet)> {
        let Some(model) = &self.image_model else { return data::load_builtin(which, dir) };
        let encoder = self.encoder(model)?;
        let (mut train, mut test) = data::load_builtin_unscaled(which, dir)?;
        if let Some(limit) = limit {
            train.truncate(limit);
        }
        embed_images(&encoder, &mut train).with_context(|| format!("--image-model with --dataset {which:?}"))?;
        embed_images(&encoder, &mut test)?;
        data::standardize_split(&mut train, &mut test);
        Ok((train, test))
    }
}

fn embed_images(encoder: &ImageEncoder, set: &mut LabelledSet) -> Result<()> {
    tracing::info!(images = set.len(), model = %encoder.dir().display(), "embedding images");
    let started = Instant::now();
    set.embed_images(encoder)?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(seconds, images_per_second = (set.len() as f64 / seconds).round(), features = encoder.dim(), "images embedded");
    Ok(())
}

#[derive(Args)]
pub struct EmbedArgs {
    /// JSONL records with `text` (and `text_pair`).
    #[arg(long, conflicts_with = "dataset", required_unless_present = "dataset")]
    pub input: Option<PathBuf>,
    /// A built-in set of texts instead of --input.
    #[arg(long, value_enum)]
    pub dataset: Option<Builtin>,
    /// Embed only the first N texts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write `{"sample_id", "embedding": [...]}` per line here.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// CPU threads for the encoder's matrix kernels.
    #[arg(long, default_value_t = 1, env = "LABELGATE_THREADS")]
    pub threads: usize,
    /// Embed the texts this many times and report the best (the first run warms caches).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[arg(long, env = "LABELGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub model: TextModelArgs,
}

/// `labelgate embed`: the vectors, and texts per second, as a benchmark compares them.
pub fn embed(args: EmbedArgs) -> Result<()> {
    crate::device::set_cpu_threads(args.threads);
    let mut set = match (&args.input, args.dataset) {
        (Some(path), _) => records::read(path, records::Format::Jsonl, None)?,
        (None, Some(which)) => data::load_builtin(which, &args.data_dir.clone().unwrap_or_else(data::default_data_dir))?.0,
        (None, None) => bail!("give --input FILE or --dataset NAME"),
    };
    if let Some(limit) = args.limit {
        set.truncate(limit);
    }
    let Some(texts) = set.texts.clone() else { bail!("the records carry features, not texts: nothing to embed") };
    let pairs = texts.first().is_some_and(|t| t.pair.is_some());
    let mut best: Option<(Vec<f32>, f64)> = None;
    for _ in 0..args.repeat.max(1) {
        // A new embedder each run: no run reads another's cache.
        let mut embedder = args.model.embedder(pairs)?;
        let started = Instant::now();
        let (features, _) = embedder.embed(&texts)?;
        let seconds = started.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|(_, s)| seconds < *s) {
            best = Some((features, seconds));
        }
    }
    let (features, seconds) = best.expect("at least one run");
    let dim = features.len() / texts.len().max(1);
    println!(
        "{{\"texts\": {}, \"dim\": {dim}, \"threads\": {}, \"batch_size\": {}, \"seconds\": {seconds:.4}, \"texts_per_second\": {:.1}}}",
        texts.len(),
        args.threads,
        args.model.text_batch_size,
        texts.len() as f64 / seconds
    );
    if let Some(path) = &args.output {
        let mut w = BufWriter::new(File::create(path).with_context(|| format!("cannot create {}", path.display()))?);
        for (id, v) in set.sample_ids.iter().zip(features.chunks_exact(dim)) {
            serde_json::to_writer(&mut w, &serde_json::json!({"sample_id": id, "embedding": v}))?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    Ok(())
}
