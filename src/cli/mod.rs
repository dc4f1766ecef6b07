//! The `labelgate` command line: argument parsing and the file / terminal edges of each command.
//! [`args`] holds the training commands' options, [`offline`] the commands on files (`score`,
//! `eval`); the service commands (`run`, `demo`, `eval-stream`) are here.

mod args;
mod embed;
mod offline;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::{data, device, eval};
use args::{EvalArgs, ScoreArgs};

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
    /// Embed texts with the sentence encoder; prints texts per second and writes the vectors.
    Embed(embed::EmbedArgs),
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
    /// Also (or only) move the stream's features away from the reference pool's (every feature
    /// by 0.75 of its standard deviation): no, yes or no,yes. Needs `--pool full` to show.
    #[arg(long, value_delimiter = ',', default_value = "no")]
    shifted: Vec<YesNo>,
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
    /// Create the missing input, reviews, output and progress topics, with this many partitions
    /// (the progress topic has one); 0 = create none.
    #[arg(long, default_value_t = 0)]
    create_topics: i32,
}

/// Logs to stderr: `LABELGATE_LOG` filters (default `info`), `LABELGATE_LOG_FORMAT=json` writes
/// one JSON object per line (for log pipelines), and colour is used only on a terminal.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("LABELGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("LABELGATE_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().with_current_span(false).init(),
        _ => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Score(args) => offline::score(args),
        Command::Eval(args) => offline::run_eval(args),
        Command::Demo(args) => demo(args),
        Command::EvalStream(args) => eval_stream(args),
        Command::Run(args) => run_gate(args),
        Command::ReviewBridge(args) => review_bridge(args),
        Command::BenchIngest(args) => bench_ingest(args),
        Command::Embed(args) => embed::embed(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
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
    let dev = device::select(config.runtime.device);
    let dir = args.data_dir.unwrap_or_else(data::default_data_dir);
    // The harness embeds the sentences once and sends their vectors: a text gate's engine
    // settings, records of features.
    let mut text_config = crate::config::Config::text_defaults();
    text_config.gate.input = crate::config::GatedInput::Features;
    let mut summaries = Vec::new();
    println!("{}", eval::stream::TABLE_HEADER);
    for &data in &args.data {
        for &unlearnable in &args.unlearnable {
            for &shifted in &args.shifted {
                for &window in &args.window {
                    for &pool in &args.pool {
                        let case = eval::stream::StreamCase { data, unlearnable: unlearnable == YesNo::Yes, shifted: shifted == YesNo::Yes, window, pool, vendor_noise: args.noise.clone() };
                        // Texts with no file are judged with a text gate's defaults.
                        let config = if data.is_text() && args.config.is_none() { &text_config } else { &config };
                        let summary = eval::stream::evaluate_case(case, &dir, &config.gate, &config.engine, &args.seeds, &dev)?;
                        println!("{}", eval::stream::table_row(&summary));
                        summaries.push(summary);
                    }
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
    let m = crate::bench::measure_ingest(&config, args.records)?;
    let report = serde_json::json!({
        "records": args.records,
        "seconds": m.seconds,
        "records_per_second": args.records as f64 / m.seconds.max(1e-9),
        "rss_bytes": m.rss_bytes,
        "rss_before_bytes": m.rss_before_bytes,
        "buffered_bytes": m.buffered_bytes,
        "feature_bytes": m.feature_bytes,
    });
    println!("{report}");
    Ok(())
}
