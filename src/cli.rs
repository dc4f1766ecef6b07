//! The `labelgate` command line: argument parsing and the file / terminal edges of each command.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tracing_subscriber::EnvFilter;

use crate::{
    data::{self, records, Builtin, LabelledSet},
    device::{self, DeviceChoice},
    eval,
    noise::NoiseModel,
    o2u::{self, suspects::NoiseRate, ModelConfig, O2uConfig},
    progress::ProgressReporter,
};

#[derive(Parser)]
#[command(name = "labelgate", version, about = "Finds mislabelled samples in annotation deliveries with O2U-Net")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score labelled samples and write the ranked suspects as JSONL.
    Score(ScoreArgs),
    /// Measure detection on real data with known truth (injected or real crowd noise).
    Eval(EvalArgs),
    /// The whole gate with no services: an in-process Kafka mock cluster, vendor deliveries made
    /// from the shared data, verdicts and suspects checked against the truth.
    Demo(DemoArgs),
    /// Replay vendor deliveries through the gate's state machine and engine (no Kafka) over a
    /// grid of data, window sizes, pool starts, vendor noise and seeds; compare every verdict
    /// with the truth.
    EvalStream(EvalStreamArgs),
    /// Run the gate against Kafka until SIGTERM / SIGINT.
    Run(RunArgs),
    /// Turn suspects on the re-review topic into Label Studio tasks and reviewers' answers into
    /// reviews, until SIGTERM / SIGINT (the `[review_bridge]` settings).
    ReviewBridge(ReviewBridgeArgs),
    /// Benchmark: consume N input records through the gate's consumer, parser and buffer with
    /// no window running; prints records per second.
    #[command(hide = true)]
    BenchIngest(BenchIngestArgs),
}

#[derive(Args)]
struct ReviewBridgeArgs {
    /// TOML file over the embedded defaults; LABELGATE__SECTION__KEY variables override both.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct BenchIngestArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    records: u64,
}

#[derive(Args)]
struct DemoArgs {
    /// Data directory holding mnist/ and music_genre_crowd/.
    #[arg(long, env = "LABELGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Records per MNIST delivery (3 vendors × 2 deliveries).
    #[arg(long, default_value_t = 1500)]
    per_delivery: usize,
    /// Write the full report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct EvalStreamArgs {
    #[arg(long, value_enum, value_delimiter = ',', default_value = "synthetic")]
    data: Vec<eval::stream::StreamData>,
    /// Also (or only) run each data set with its features replaced by noise: no, yes or no,yes.
    #[arg(long, value_delimiter = ',', default_value = "no")]
    unlearnable: Vec<YesNo>,
    /// Records per window (gate.min_window_records = gate.max_window_records).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    window: Vec<usize>,
    /// Whether the reference pool starts empty (cold start) or full of clean samples.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "empty,full")]
    pool: Vec<eval::stream::PoolStart>,
    /// Vendors' wrong-label rates, one vendor each.
    #[arg(long, value_delimiter = ',', default_value = "0,0.03,0.1,0.2,0.4")]
    noise: Vec<f64>,
    /// Engine seeds; each replays the same deliveries.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Gate and engine settings over the embedded defaults (as for `run`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory holding mnist/ and music_genre_crowd/.
    #[arg(long, env = "LABELGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Write every case, run, delivery and window as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum YesNo {
    No,
    Yes,
}

#[derive(Args)]
struct RunArgs {
    /// TOML file over the embedded defaults; LABELGATE__SECTION__KEY variables override both.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Create missing output and progress topics with this many partitions (0 = don't).
    #[arg(long, default_value_t = 0)]
    create_topics: i32,
}

#[derive(Args)]
struct ScoreArgs {
    /// JSONL (`sample_id`, `label`, `features`) or CSV (`id,label,feature...`) file.
    #[arg(long, conflicts_with = "dataset", required_unless_present = "dataset")]
    input: Option<PathBuf>,
    /// Input format; by default from the extension (.csv is CSV, else JSONL).
    #[arg(long, value_parser = ["jsonl", "csv"])]
    format: Option<String>,
    /// Comma-separated class list; a label outside it is an error. Default: the labels seen.
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// A built-in data set read from the data directory instead of --input.
    #[arg(long, value_enum)]
    dataset: Option<Builtin>,
    /// Where to write suspects (JSONL); `-` for standard output.
    #[arg(long, short, default_value = "-")]
    output: PathBuf,
    /// Write every sample in rank order (with `suspect: true/false`), not only the suspects.
    #[arg(long)]
    all: bool,
    /// `auto` estimates the share of wrong labels from the scores; a fraction flags that share.
    #[arg(long, default_value = "auto")]
    noise_rate: NoiseRate,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long, value_enum)]
    dataset: Builtin,
    /// Injected noise: symmetric:RATE or pairflip:RATE (MNIST). Music-genre uses its real crowd labels.
    #[arg(long)]
    noise: Option<NoiseModel>,
    /// Seed of the label flips (separate from the training seed).
    #[arg(long, default_value_t = 0)]
    noise_seed: u64,
    /// Use only the first N training samples.
    #[arg(long)]
    limit: Option<usize>,
    /// Stage 3: retrain on the kept samples and report clean-test accuracy before and after.
    #[arg(long)]
    retrain: bool,
    /// Draw the precision–recall curve to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write every sample's `index,sample_id,true_label,given_label,score,loss_variance` as CSV.
    #[arg(long)]
    scores: Option<PathBuf>,
    /// Write `index,true_label,given_label` of the training samples (for peer benchmarks).
    #[arg(long)]
    export_labels: Option<PathBuf>,
    /// Treat each annotator as a vendor: estimated vs true label accuracy, MAE and Spearman
    /// (music-genre).
    #[arg(long)]
    vendors: bool,
    /// With --vendors: compare annotators with at least this many labels.
    #[arg(long, default_value_t = 20)]
    min_labels: usize,
    #[command(flatten)]
    common: CommonArgs,
}

/// Options shared by every command that trains.
#[derive(Args)]
struct CommonArgs {
    /// cpu or cuda (falls back to cpu with a warning when no GPU is usable).
    #[arg(long, default_value = "cpu", env = "LABELGATE_DEVICE")]
    device: DeviceChoice,
    /// CPU threads for the matrix kernels.
    #[arg(long, default_value_t = 1, env = "LABELGATE_THREADS")]
    threads: usize,
    /// Seed of weights, shuffling and dropout: the same seed gives the same scores on the CPU.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Data directory holding mnist/ and music_genre_crowd/.
    #[arg(long, env = "LABELGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Engine settings as TOML-like JSON file is not needed for the CLI; flags below override defaults.
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct EngineArgs {
    /// mlp (feature vectors, default) or cnn9 (images).
    #[arg(long, default_value = "mlp", value_parser = ["mlp", "cnn9"])]
    model: String,
    /// Hidden layer widths of the MLP.
    #[arg(long, value_delimiter = ',', default_value = "256,256")]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = O2uConfig::default().batch_size)]
    batch_size: usize,
    /// E1: stage-1 epochs at --stage1-lr [default: 5; 20 for --dataset music-genre]
    #[arg(long)]
    stage1_epochs: Option<usize>,
    #[arg(long, default_value_t = O2uConfig::default().stage1_lr)]
    stage1_lr: f64,
    /// k: stage-2 cycles.
    #[arg(long, default_value_t = O2uConfig::default().cycles)]
    cycles: usize,
    /// c: epochs per cycle.
    #[arg(long, default_value_t = O2uConfig::default().schedule.cycle_len)]
    cycle_len: usize,
    /// r1: the cycle's highest rate.
    #[arg(long, default_value_t = O2uConfig::default().schedule.lr_max)]
    lr_max: f64,
    /// r2: the cycle's lowest rate.
    #[arg(long, default_value_t = O2uConfig::default().schedule.lr_min)]
    lr_min: f64,
    #[arg(long, default_value_t = O2uConfig::default().momentum)]
    momentum: f64,
    #[arg(long, default_value_t = O2uConfig::default().weight_decay)]
    weight_decay: f64,
    /// Stage-3 epochs (eval --retrain); default: stage 1 + stage 2 epochs.
    #[arg(long)]
    retrain_epochs: Option<usize>,
}

impl CommonArgs {
    /// `dataset` picks the stage-1 default when `--stage1-epochs` is not given.
    fn o2u_config(&self, dataset: Option<Builtin>) -> Result<O2uConfig> {
        let e = &self.engine;
        let mut config = O2uConfig {
            model: match e.model.as_str() {
                "cnn9" => ModelConfig::Cnn9 { dropout: 0.25 },
                _ => ModelConfig::Mlp { hidden: e.hidden.clone() },
            },
            batch_size: e.batch_size,
            stage1_epochs: e.stage1_epochs.unwrap_or_else(|| dataset.map_or(O2uConfig::default().stage1_epochs, Builtin::default_stage1_epochs)),
            stage1_lr: e.stage1_lr,
            cycles: e.cycles,
            schedule: o2u::CyclicalSchedule { lr_max: e.lr_max, lr_min: e.lr_min, cycle_len: e.cycle_len },
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

    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(data::default_data_dir)
    }

    fn device(&self) -> candle_core::Device {
        device::set_cpu_threads(self.threads);
        device::select(self.device)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("LABELGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Score(args) => score(args),
        Command::Eval(args) => run_eval(args),
        Command::Demo(args) => demo(args),
        Command::EvalStream(args) => eval_stream(args),
        Command::Run(args) => run_gate(args),
        Command::ReviewBridge(args) => review_bridge(args),
        Command::BenchIngest(args) => bench_ingest(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[derive(Serialize)]
struct SuspectLine<'a> {
    sample_id: &'a str,
    label: &'a str,
    predicted: &'a str,
    score: f32,
    loss_variance: f32,
    /// 1 = most suspect.
    rank: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotator: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    suspect: Option<bool>,
}

fn score(args: ScoreArgs) -> Result<()> {
    let config = args.common.o2u_config(args.dataset)?;
    let device = args.common.device();
    let set: LabelledSet = match (&args.input, args.dataset) {
        (Some(path), _) => {
            let format = match args.format.as_deref() {
                Some("csv") => records::Format::Csv,
                Some(_) => records::Format::Jsonl,
                None => records::Format::from_path(path),
            };
            let mut set = records::read(path, format, args.classes.as_deref())?;
            data::Standardizer::standardize_in_place(&mut set.features, set.shape);
            set
        }
        (None, Some(which)) => data::load_builtin(which, &args.common.data_dir())?.0,
        (None, None) => bail!("give --input FILE or --dataset NAME"),
    };
    if set.classes.len() < 2 {
        bail!("all {} samples carry the same label `{}`: there is nothing to learn", set.len(), set.classes[0]);
    }
    tracing::info!(samples = set.len(), classes = set.classes.len(), device = device::describe(&device), "scoring");
    let mut progress = ProgressReporter::new(set.len(), config.stage1_epochs + config.stage2_epochs());
    let outcome = o2u::score(set.samples(), None, &config, &device, &mut progress)?;
    progress.finish();
    let selection = o2u::suspects::select(&outcome.scores, args.noise_rate);
    let flagged: std::collections::HashSet<usize> = selection.flagged.iter().copied().collect();
    let rows: Vec<usize> = if args.all { o2u::suspects::rank_descending(&outcome.scores) } else { selection.flagged.clone() };
    let mut out: Box<dyn Write> = if args.output == Path::new("-") {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(BufWriter::new(File::create(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?))
    };
    for (rank, &i) in rows.iter().enumerate() {
        let line = SuspectLine {
            sample_id: &set.sample_ids[i],
            label: &set.classes[set.labels[i] as usize],
            predicted: &set.classes[outcome.predicted[i] as usize],
            score: outcome.scores[i],
            loss_variance: outcome.loss_variance[i],
            rank: rank + 1,
            annotator: set.annotators.as_ref().map(|a| a[i].as_str()),
            suspect: args.all.then(|| flagged.contains(&i)),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    tracing::info!(
        flagged = selection.flagged.len(),
        noise_rate = selection.noise_rate,
        samples_per_second = outcome.samples_per_second.round(),
        "done"
    );
    Ok(())
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let config = args.common.o2u_config(Some(args.dataset))?;
    let device = args.common.device();
    let (mut train, test) = data::load_builtin(args.dataset, &args.common.data_dir())?;
    if let Some(limit) = args.limit {
        train.truncate(limit);
    }
    match (args.dataset, args.noise) {
        (Builtin::MusicGenre, Some(_)) => bail!("--noise: music-genre carries real crowd noise; drop --noise"),
        (Builtin::Mnist, None) => bail!("--noise: MNIST needs injected noise, e.g. --noise symmetric:0.2"),
        (_, Some(noise)) => eval::inject_noise(&mut train, noise, args.noise_seed)?,
        _ => {}
    }
    if let Some(path) = &args.export_labels {
        let mut w = BufWriter::new(File::create(path).with_context(|| format!("cannot create {}", path.display()))?);
        writeln!(w, "index,true_label,given_label")?;
        for (i, (t, g)) in train.truth.as_ref().unwrap().iter().zip(&train.labels).enumerate() {
            writeln!(w, "{i},{t},{g}")?;
        }
        w.flush()?;
    }
    let epochs = config.stage1_epochs + config.stage2_epochs() + if args.retrain { config.retrain_epochs } else { 0 };
    tracing::info!(samples = train.len(), device = device::describe(&device), threads = args.common.threads, "evaluating");
    let mut progress = ProgressReporter::new(train.len(), epochs);
    let mut report = eval::evaluate(&train, &test, args.noise, &config, args.retrain, &device, args.common.threads, &mut progress)?;
    progress.finish();
    report.dataset = clap::ValueEnum::to_possible_value(&args.dataset).expect("named").get_name().to_string();
    if args.vendors {
        let vendors = eval::vendors::vendor_report(&train, &report.scores, &report.predicted, args.min_labels)?;
        report.vendor_accuracy_mae = Some(vendors.vendor_accuracy_mae);
        report.vendor_accuracy_spearman = Some(vendors.vendor_accuracy_spearman);
        report.vendor_report = Some(vendors);
    }
    print_report(&report);
    if let Some(path) = &args.plot {
        let title = format!("{} {}", report.dataset, report.noise.as_deref().unwrap_or("crowd labels"));
        eval::plot::pr_curve_png(path, &title, &report.pr_curve, report.average_precision)?;
    }
    if let Some(path) = &args.scores {
        let mut w = BufWriter::new(File::create(path).with_context(|| format!("cannot create {}", path.display()))?);
        writeln!(w, "index,sample_id,true_label,given_label,score,loss_variance")?;
        let truth = train.truth.as_ref().expect("evaluation data has truth");
        for i in 0..train.len() {
            writeln!(w, "{i},{},{},{},{},{}", train.sample_ids[i], truth[i], train.labels[i], report.scores[i], report.loss_variance[i])?;
        }
        w.flush()?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn demo(args: DemoArgs) -> Result<()> {
    let dir = args.data_dir.unwrap_or_else(data::default_data_dir);
    device::set_cpu_threads(crate::config::Config::load(None)?.runtime.threads);
    let reports = runtime()?.block_on(crate::demo::run(&dir, args.per_delivery))?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn eval_stream(args: EvalStreamArgs) -> Result<()> {
    let config = crate::config::Config::load(args.config.as_deref())?;
    device::set_cpu_threads(config.runtime.threads);
    let dev = device::select(if config.runtime.device == "cuda" { DeviceChoice::Cuda } else { DeviceChoice::Cpu });
    let dir = args.data_dir.unwrap_or_else(data::default_data_dir);
    let mut summaries = Vec::new();
    println!("{}", eval::stream::TABLE_HEADER);
    for &data in &args.data {
        for &unlearnable in &args.unlearnable {
            for &window in &args.window {
                for &pool in &args.pool {
                    let case = eval::stream::StreamCase { data, unlearnable: unlearnable == YesNo::Yes, window, pool, vendor_noise: args.noise.clone() };
                    let summary = eval::stream::evaluate_case(case, &dir, &config.gate, &config.engine, &args.seeds, &dev)?;
                    println!("{}", eval::stream::table_row(&summary));
                    summaries.push(summary);
                }
            }
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summaries)?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn run_gate(args: RunArgs) -> Result<()> {
    let config = crate::config::Config::load(args.config.as_deref())?;
    device::set_cpu_threads(config.runtime.threads);
    runtime()?.block_on(async move {
        if args.create_topics > 0 {
            crate::service::ensure_topics(&config, args.create_topics).await?;
        }
        let summary = crate::service::run(config, crate::service::Hooks::default(), crate::service::shutdown_signal()).await?;
        tracing::info!(?summary, "exiting");
        Ok(())
    })
}

fn review_bridge(args: ReviewBridgeArgs) -> Result<()> {
    let config = crate::config::Config::load(args.config.as_deref())?;
    runtime()?.block_on(crate::review_bridge::run(config, crate::service::shutdown_signal()))
}

fn bench_ingest(args: BenchIngestArgs) -> Result<()> {
    let config = crate::config::Config::load(args.config.as_deref())?;
    let seconds = crate::service::measure_ingest(&config, args.records)?;
    println!("{{\"records\": {}, \"seconds\": {seconds:.3}, \"records_per_second\": {:.0}}}", args.records, args.records as f64 / seconds.max(1e-9));
    Ok(())
}

fn print_report(r: &eval::EvalReport) {
    println!("dataset                {} ({} samples, noise {})", r.dataset, r.samples, r.noise.as_deref().unwrap_or("real crowd labels"));
    println!("noisy labels           {} ({:.4} of samples)", r.noisy_samples, r.true_noise_rate);
    println!("label precision @k     {:.4}  (k = {})", r.label_precision, r.noisy_samples);
    println!("average precision      {:.4}", r.average_precision);
    println!("auto threshold         precision {:.4}  recall {:.4}  F1 {:.4}  ({} flagged)", r.precision_auto, r.recall_auto, r.f1_auto, r.flagged_auto);
    println!("noise rate estimate    {:.4}", r.noise_rate_estimate);
    println!("training               {} epochs in {:.1} s, {:.0} samples/s ({}, {} threads)", r.epochs, r.training_seconds, r.samples_per_second, r.device, r.threads);
    if let Some(a) = r.test_accuracy_before {
        println!("clean-test accuracy    {:.4} trained on noisy labels", a);
    }
    if let Some(a) = r.test_accuracy_after {
        println!("                       {:.4} after retraining on kept samples", a);
    }
    if let Some(v) = &r.vendor_report {
        println!("vendors (annotators with ≥ {} labels)      labels   true   estimated  (95% CI)        argmax-agreement", v.min_labels);
        for row in &v.vendors {
            println!(
                "  {:<38} {:>6}  {:.3}   {:.3}    ({:.3}–{:.3})   {:.3}",
                row.vendor, row.labels, row.true_accuracy, row.estimated_accuracy, row.ci_low, row.ci_high, row.argmax_agreement
            );
        }
        println!("vendor accuracy        MAE {:.4}  Spearman {:.4}  (argmax baseline: MAE {:.4}  Spearman {:.4})", v.vendor_accuracy_mae, v.vendor_accuracy_spearman, v.baseline_argmax_mae, v.baseline_argmax_spearman);
        println!("wrong-label share      estimated {:.4}  true {:.4}  (overlap {:.2} of labels)", v.noise_share_estimate, v.true_noise_share, v.overlap_share);
    }
}
