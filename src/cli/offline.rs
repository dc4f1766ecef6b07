//! The commands that work on files and print reports: `score` writes ranked suspects, `eval`
//! measures detection against known truth.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::args::{EvalArgs, ScoreArgs};
use crate::{
    accuracy::offline,
    data::{self, records, Builtin, LabelledSet},
    device, eval,
    image_fetch::{Fetched, ImageFetcher},
    o2u,
    progress::ProgressReporter,
};

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

/// The fetcher of `score --input`'s `image.uri` files: the gate's rules, with `--image-host` as
/// the allow-list and `--image-root` as the file root.
fn image_fetcher(args: &ScoreArgs) -> Result<ImageFetcher> {
    let mut config = crate::config::Config::defaults().image_fetch;
    config.allowed_hosts = args.image_hosts.clone();
    config.file_root = match &args.image_root {
        Some(root) => Some(std::path::absolute(root).with_context(|| format!("--image-root {}", root.display()))?),
        None => None,
    };
    crate::image_fetch::AllowList::parse(&config.allowed_hosts).map_err(|e| anyhow::anyhow!(e.replace("image_fetch.allowed_hosts", "--image-host")))?;
    ImageFetcher::new(&config)
}

/// Fetches every URI; files whose host is away are tried again, five times over half a minute,
/// before the command gives up (nothing is scored on part of a file).
fn fetch_waiting(fetcher: &ImageFetcher, uris: &[String]) -> Vec<Result<Vec<u8>, String>> {
    let mut answers: Vec<Result<Vec<u8>, String>> = vec![Err("not fetched".into()); uris.len()];
    let mut waiting: Vec<usize> = (0..uris.len()).collect();
    for wait in [1, 2, 4, 8, 16, 0] {
        let names: Vec<String> = waiting.iter().map(|&i| uris[i].clone()).collect();
        let mut still = Vec::new();
        for (&i, answer) in waiting.iter().zip(fetcher.fetch_all(&names, &|| (), &|f| f)) {
            answers[i] = match answer {
                Fetched::Bytes(bytes) => Ok(bytes),
                // The gate's messages name its settings; here the flags set them.
                Fetched::Refused { reason, message } => {
                    Err(format!("{} ({})", reason.as_str(), message.replace("image_fetch.file_root", "--image-root").replace("image_fetch.allowed_hosts", "--image-host")))
                }
                Fetched::Unavailable(why) => {
                    still.push(i);
                    Err(format!("the host is away ({why}); try again when it answers"))
                }
            };
        }
        waiting = still;
        if waiting.is_empty() || wait == 0 {
            break;
        }
        tracing::warn!(images = waiting.len(), retry_in_s = wait, "image hosts are away; trying again");
        std::thread::sleep(std::time::Duration::from_secs(wait));
    }
    answers
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let device = args.common.device();
    let set: LabelledSet = match (&args.input, args.dataset) {
        (Some(path), _) => {
            let format = match args.format.as_deref() {
                Some("csv") => records::Format::Csv,
                Some(_) => records::Format::Jsonl,
                None => records::Format::from_path(path),
            };
            // Built only for a file that names images (it starts a runtime of its own).
            let fetch = |uris: &[String]| match image_fetcher(&args) {
                Ok(fetcher) => fetch_waiting(&fetcher, uris),
                Err(e) => vec![Err(format!("{e:#}")); uris.len()],
            };
            let mut set = records::read_fetching(path, format, args.classes.as_deref(), Some(&fetch))?;
            args.common.text.embed_sets(&mut [&mut set])?;
            args.common.image.embed_set(&mut set)?;
            data::Standardizer::standardize_in_place(&mut set.features, set.shape);
            set
        }
        (None, Some(which)) => {
            let (mut set, mut test) = args.common.image.load_builtin(which, &args.common.data_dir(), None)?;
            args.common.text.embed_split(&mut set, &mut test)?;
            set
        }
        (None, None) => bail!("give --input FILE or --dataset NAME"),
    };
    let config = args.common.o2u_config(args.dataset, set.texts.is_some())?;
    if set.classes.len() < 2 {
        bail!("all {} samples carry the same label `{}`: there is nothing to learn", set.len(), set.classes[0]);
    }
    tracing::info!(samples = set.len(), classes = set.classes.len(), device = device::describe(&device), "scoring");
    let mut progress = ProgressReporter::new(set.len(), config.stage1_epochs + config.stage2_epochs());
    let outcome = o2u::score(set.samples(), None, &config, &device, &mut progress)?;
    progress.finish();
    let judgement = offline::judge(set.samples(), &outcome, args.noise_rate, &config, &crate::config::Config::defaults_for(set.texts.is_some()).gate.judge_settings(), &device);
    let flagged: std::collections::HashSet<usize> = judgement.flagged.iter().copied().collect();
    let rows: Vec<usize> = if args.all { o2u::suspects::rank_descending(&outcome.scores) } else { judgement.flagged.clone() };
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
    log_judgement(&judgement, set.len());
    tracing::info!(samples_per_second = outcome.samples_per_second.round(), "done");
    if let Some(path) = &args.evidence {
        std::fs::write(path, serde_json::to_string_pretty(&judgement)?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn log_judgement(j: &offline::SetJudgement, samples: usize) {
    let e = &j.evidence;
    let readings: Vec<String> = e.readings.iter().map(|r| format!("{} {:.4} [{:.4}, {:.4}]", r.estimator.name(), r.wrong_share, r.ci_low, r.ci_high)).collect();
    tracing::info!(
        evidence = e.status.name(),
        wrong_share = e.wrong_share,
        ci_low = e.wrong_share_ci_low,
        ci_high = e.wrong_share_ci_high,
        heldout_lift = e.model_fit.map(|f| f.lift),
        readings = readings.join("; "),
        flagged = j.flagged.len(),
        samples,
        "how many labels are wrong"
    );
    if let Some(reason) = j.not_flagged_because {
        tracing::warn!(reason, "nothing flagged automatically: the evidence cannot say how many labels are wrong; the ranking is still written (give --noise-rate R to flag the top share R)");
    }
}

pub fn run_eval(args: EvalArgs) -> Result<()> {
    let device = args.common.device();
    let (mut train, mut test) = args.common.image.load_builtin(args.dataset, &args.common.data_dir(), args.limit)?;
    let config = args.common.o2u_config(Some(args.dataset), train.texts.is_some())?;
    if let Some(limit) = args.limit {
        train.truncate(limit);
    }
    args.common.text.embed_split(&mut train, &mut test)?;
    match (args.dataset, args.noise) {
        (Builtin::MusicGenre, Some(_)) => bail!("--noise: music-genre carries real crowd noise; drop --noise"),
        (Builtin::Mnist | Builtin::SentencePolarity, None) => bail!("--noise: this set's labels are clean; inject noise, e.g. --noise symmetric:0.2"),
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
    let judge = crate::config::Config::defaults_for(train.texts.is_some()).gate.judge_settings();
    let mut report = eval::evaluate(&train, &test, args.noise, &config, &judge, args.retrain, &device, args.common.threads, &mut progress)?;
    progress.finish();
    report.dataset = clap::ValueEnum::to_possible_value(&args.dataset).expect("named").get_name().to_string();
    if args.vendors {
        let groups = train.items.as_ref().map(|items| crate::accuracy::agreement::index_of(items.iter().map(String::as_str)).0);
        // Grouped by item: no network predicts a song whose other labels it saw.
        let heldout = o2u::heldout_probabilities(train.samples(), &config, offline::CROSSFIT_FOLDS, judge.crossfit_min_steps, groups.as_deref(), &device)?;
        let vendors = eval::vendors::vendor_report(&train, &report.scores, &report.predicted, Some(&heldout), judge.evidence.min_model_lift, args.min_labels)?;
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

fn print_report(r: &eval::EvalReport) {
    println!("dataset                {} ({} samples, noise {})", r.dataset, r.samples, r.noise.as_deref().unwrap_or("real crowd labels"));
    println!("noisy labels           {} ({:.4} of samples)", r.noisy_samples, r.true_noise_rate);
    println!("label precision @k     {:.4}  (k = {})", r.label_precision, r.noisy_samples);
    println!("average precision      {:.4}", r.average_precision);
    println!("auto threshold         precision {:.4}  recall {:.4}  F1 {:.4}  ({} flagged)", r.precision_auto, r.recall_auto, r.f1_auto, r.flagged_auto);
    println!("noise rate estimate    {:.4}  (95% CI {:.4}–{:.4}, evidence {})", r.noise_rate_estimate, r.noise_rate_ci_low, r.noise_rate_ci_high, r.evidence.status.name());
    for reading in &r.evidence.readings {
        let left_out = if r.evidence.outliers.contains(&reading.estimator) { "  (outlier, left out)" } else { "" };
        println!("  {:<20} {:.4}  ({:.4}–{:.4}){left_out}", reading.estimator.name(), reading.wrong_share, reading.ci_low, reading.ci_high);
    }
    if let (false, Some(reason)) = (r.evidence.status.sets_the_flag_count(), r.evidence.status.review_reason()) {
        println!("  nothing flagged automatically: {reason}");
    }
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
            println!("  {:<38} {:>6}  {:.3}   {:.3}    ({:.3}–{:.3})   {:.3}", row.vendor, row.labels, row.true_accuracy, row.estimated_accuracy, row.ci_low, row.ci_high, row.argmax_agreement);
        }
        println!(
            "vendor accuracy        MAE {:.4}  Spearman {:.4}  (argmax baseline: MAE {:.4}  Spearman {:.4})",
            v.vendor_accuracy_mae, v.vendor_accuracy_spearman, v.baseline_argmax_mae, v.baseline_argmax_spearman
        );
        println!("wrong-label share      estimated {:.4}  true {:.4}  (overlap {:.2} of labels, network weight {})", v.noise_share_estimate, v.true_noise_share, v.overlap_share, v.network_weight);
    }
}
