//! The options of the commands that train on files and built-in data sets (`score`, `eval`),
//! and the engine flags they share.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::{
    data::{self, Builtin},
    device::{self, DeviceChoice},
    noise::NoiseModel,
    o2u::{self, suspects::NoiseRate, ModelConfig, O2uConfig},
};

#[derive(Args)]
pub struct ScoreArgs {
    /// JSONL (`sample_id`, `label`, and `features`, `text` [+ `text_pair`] or `image`) or CSV
    /// (`id,label,feature...`) file.
    #[arg(long, conflicts_with = "dataset", required_unless_present = "dataset")]
    pub input: Option<PathBuf>,
    /// A host whose http(s) `image.uri` files may be fetched (name or address, `:port` for one
    /// port; repeat for more); as the gate's image_fetch.allowed_hosts.
    #[arg(long = "image-host", value_name = "HOST")]
    pub image_hosts: Vec<String>,
    /// `file://` `image.uri` files are read only under this directory.
    #[arg(long, value_name = "DIR")]
    pub image_root: Option<PathBuf>,
    /// Input format; by default from the extension (.csv is CSV, else JSONL).
    #[arg(long, value_parser = ["jsonl", "csv"])]
    pub format: Option<String>,
    /// Comma-separated class list; a label outside it is an error. Default: the labels seen.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// A built-in data set read from the data directory instead of --input.
    #[arg(long, value_enum)]
    pub dataset: Option<Builtin>,
    /// Where to write suspects (JSONL); `-` for standard output.
    #[arg(long, short, default_value = "-")]
    pub output: PathBuf,
    /// Write every sample in rank order (with `suspect: true/false`), not only the suspects.
    #[arg(long)]
    pub all: bool,
    /// Write the evidence for how many labels are wrong (status, share, interval, readings) as
    /// JSON here.
    #[arg(long)]
    pub evidence: Option<PathBuf>,
    /// `auto` reads how many labels are wrong from the evidence (out-of-fold confident learning,
    /// the score mixture); a fraction flags that share.
    #[arg(long, default_value = "auto")]
    pub noise_rate: NoiseRate,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long, value_enum)]
    pub dataset: Builtin,
    /// Injected noise: symmetric:RATE or pairflip:RATE (MNIST). Music-genre uses its real crowd labels.
    #[arg(long)]
    pub noise: Option<NoiseModel>,
    /// Seed of the label flips (separate from the training seed).
    #[arg(long, default_value_t = 0)]
    pub noise_seed: u64,
    /// Use only the first N training samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Stage 3: retrain on the kept samples and report clean-test accuracy before and after.
    #[arg(long)]
    pub retrain: bool,
    /// Draw the precision–recall curve to this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write every sample's `index,sample_id,true_label,given_label,score,loss_variance` as CSV.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Write `index,true_label,given_label` of the training samples (for peer benchmarks).
    #[arg(long)]
    pub export_labels: Option<PathBuf>,
    /// Treat each annotator as a vendor: estimated vs true label accuracy, MAE and Spearman
    /// (music-genre).
    #[arg(long)]
    pub vendors: bool,
    /// With --vendors: compare annotators with at least this many labels.
    #[arg(long, default_value_t = 20)]
    pub min_labels: usize,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options shared by every command that trains.
#[derive(Args)]
pub struct CommonArgs {
    /// cpu or cuda (falls back to cpu with a warning when no GPU is usable).
    #[arg(long, default_value = "cpu", env = "LABELGATE_DEVICE")]
    pub device: DeviceChoice,
    /// CPU threads for the matrix kernels.
    #[arg(long, default_value_t = 1, env = "LABELGATE_THREADS")]
    pub threads: usize,
    /// Seed of weights, shuffling and dropout: the same seed gives the same scores on the CPU.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data directory holding mnist/, music_genre_crowd/ and sentence_polarity/.
    #[arg(long, env = "LABELGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Engine settings; each flag overrides the engine's default.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The sentence encoder, for records that carry `text`.
    #[command(flatten)]
    pub text: super::embed::TextModelArgs,
    /// A pretrained image encoder, for records that carry `image`.
    #[command(flatten)]
    pub image: super::embed::ImageModelArgs,
}

#[derive(Args)]
pub struct EngineArgs {
    /// mlp (feature vectors, default) or cnn9 (images).
    #[arg(long, default_value = "mlp", value_parser = ["mlp", "cnn9"])]
    pub model: String,
    /// Hidden layer widths of the MLP.
    #[arg(long, value_delimiter = ',', default_value = "256,256")]
    pub hidden: Vec<usize>,
    #[arg(long, default_value_t = O2uConfig::default().batch_size)]
    pub batch_size: usize,
    /// E1: stage-1 epochs at --stage1-lr [default: 5; 20 for --dataset music-genre; 1 for texts]
    #[arg(long)]
    pub stage1_epochs: Option<usize>,
    #[arg(long, default_value_t = O2uConfig::default().stage1_lr)]
    pub stage1_lr: f64,
    /// k: stage-2 cycles.
    #[arg(long, default_value_t = O2uConfig::default().cycles)]
    pub cycles: usize,
    /// c: epochs per cycle.
    /// [default: 10; 5 for texts]
    #[arg(long)]
    pub cycle_len: Option<usize>,
    /// r1: the cycle's highest rate.
    #[arg(long, default_value_t = O2uConfig::default().schedule.lr_max)]
    pub lr_max: f64,
    /// r2: the cycle's lowest rate.
    #[arg(long, default_value_t = O2uConfig::default().schedule.lr_min)]
    pub lr_min: f64,
    #[arg(long, default_value_t = O2uConfig::default().momentum)]
    pub momentum: f64,
    #[arg(long, default_value_t = O2uConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Stage-3 epochs (eval --retrain); default: stage 1 + stage 2 epochs.
    #[arg(long)]
    pub retrain_epochs: Option<usize>,
}

impl CommonArgs {
    /// `dataset`, and whether the samples are `texts` (sentence embeddings), pick the defaults
    /// of the flags not given.
    pub fn o2u_config(&self, dataset: Option<Builtin>, texts: bool) -> Result<O2uConfig> {
        use o2u::SentenceEmbeddingDefaults as Text;
        let e = &self.engine;
        if e.model == "cnn9" && self.image.image_model.is_some() {
            bail!("--model cnn9 trains on the pixels; with --image-model the MLP trains on the embeddings (drop one)");
        }
        let mut config = O2uConfig {
            model: match e.model.as_str() {
                "cnn9" => ModelConfig::Cnn9 { dropout: 0.25 },
                _ => ModelConfig::Mlp { hidden: e.hidden.clone() },
            },
            batch_size: e.batch_size,
            stage1_epochs: e.stage1_epochs.unwrap_or_else(|| if texts { Text::STAGE1_EPOCHS } else { dataset.map_or(O2uConfig::default().stage1_epochs, Builtin::default_stage1_epochs) }),
            stage1_lr: e.stage1_lr,
            cycles: e.cycles,
            schedule: o2u::CyclicalSchedule { lr_max: e.lr_max, lr_min: e.lr_min, cycle_len: e.cycle_len.unwrap_or(if texts { Text::CYCLE_LEN } else { O2uConfig::default().schedule.cycle_len }) },
            momentum: e.momentum,
            weight_decay: e.weight_decay,
            seed: self.seed,
            retrain_epochs: 0,
            min_stage1_steps: 0,
        };
        config.retrain_epochs = e.retrain_epochs.unwrap_or(config.stage1_epochs + config.stage2_epochs());
        let errors = config.validate();
        if !errors.is_empty() {
            bail!("invalid engine settings:\n  {}", errors.join("\n  "));
        }
        Ok(config)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(data::default_data_dir)
    }

    pub fn device(&self) -> candle_core::Device {
        device::set_cpu_threads(self.threads);
        device::select(self.device)
    }
}
