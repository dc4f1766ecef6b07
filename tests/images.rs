//! Images sent as PNG files score as the same images sent as raw pixels, through `score` and
//! through the gate's state machine and window engine (same seed, same scores).

mod common;

use std::{io::Write, path::PathBuf, process::Command};

use base64::Engine;
use candle_core::Device;
use labelgate::{
    config::Config,
    data::mnist,
    gate::{window, Gate, InputMessage, SourcePos},
    noise::NoiseModel,
    o2u::Silent,
};

const IMAGES: usize = 1000;

fn png_b64(pixels: &[u8]) -> String {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 28, 28);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(pixels).unwrap();
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// MNIST records with 20 % of labels flipped, each with its image as raw pixels or as a PNG.
fn records(as_png: bool) -> Vec<serde_json::Value> {
    let mut set = mnist::load(&common::data_dir(), "train").unwrap();
    set.truncate(IMAGES);
    let labels = NoiseModel::Symmetric(0.2).apply(set.truth.as_ref().unwrap(), 10, 7);
    (0..IMAGES)
        .map(|i| {
            let pixels: Vec<u8> = set.features[i * 784..(i + 1) * 784].iter().map(|v| (v * 255.0).round() as u8).collect();
            let image = if as_png {
                serde_json::json!({"format": "png", "data_b64": png_b64(&pixels)})
            } else {
                serde_json::json!({"shape": [28, 28, 1], "data_b64": base64::engine::general_purpose::STANDARD.encode(&pixels)})
            };
            serde_json::json!({"sample_id": format!("m{i}"), "batch_id": "d1", "vendor_id": "v", "label": labels[i].to_string(), "image": image})
        })
        .collect()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("labelgate-images-{}-{name}", std::process::id()))
}

#[test]
fn png_files_score_as_raw_pixels_through_score() {
    let mut outputs = Vec::new();
    for as_png in [false, true] {
        let input = temp_path(&format!("png-{as_png}.jsonl"));
        let mut f = std::fs::File::create(&input).unwrap();
        for r in records(as_png) {
            writeln!(f, "{r}").unwrap();
        }
        let output = temp_path(&format!("scores-{as_png}.jsonl"));
        let run = Command::new(env!("CARGO_BIN_EXE_labelgate")).args(["score", "--all", "--classes", "0,1,2,3,4,5,6,7,8,9", "--input"]).arg(&input).arg("--output").arg(&output).output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        outputs.push(std::fs::read_to_string(&output).unwrap());
    }
    assert_eq!(outputs[0].lines().count(), IMAGES);
    assert_eq!(outputs[0], outputs[1], "same ranking and scores, line for line");
}

/// The same PNG files named by `file://` URI under `--image-root`: the same scores; without a
/// root the command says which flag to give.
#[test]
fn png_files_by_uri_score_as_inline_files_through_score() {
    let root = temp_path("root");
    std::fs::create_dir_all(&root).unwrap();
    let (inline, by_uri) = (temp_path("inline.jsonl"), temp_path("by-uri.jsonl"));
    let (mut inline_file, mut uri_file) = (std::fs::File::create(&inline).unwrap(), std::fs::File::create(&by_uri).unwrap());
    for mut r in records(true) {
        writeln!(inline_file, "{r}").unwrap();
        let png = base64::engine::general_purpose::STANDARD.decode(r["image"]["data_b64"].as_str().unwrap()).unwrap();
        let path = root.join(format!("{}.png", r["sample_id"].as_str().unwrap()));
        std::fs::write(&path, png).unwrap();
        r["image"] = serde_json::json!({"uri": format!("file://{}", path.display())});
        writeln!(uri_file, "{r}").unwrap();
    }
    let score = |input: &PathBuf, extra: &[&str]| {
        let output = temp_path("uri-scores.jsonl");
        let run =
            Command::new(env!("CARGO_BIN_EXE_labelgate")).args(["score", "--all", "--classes", "0,1,2,3,4,5,6,7,8,9", "--input"]).arg(input).arg("--output").arg(&output).args(extra).output().unwrap();
        (run.status.success(), String::from_utf8_lossy(&run.stderr).into_owned(), std::fs::read_to_string(&output).unwrap_or_default())
    };
    let (ok, stderr, want) = score(&inline, &[]);
    assert!(ok, "{stderr}");
    let (ok, stderr, got) = score(&by_uri, &["--image-root", root.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(got, want, "same ranking and scores, line for line");
    let (ok, stderr, _) = score(&by_uri, &[]);
    assert!(!ok && stderr.contains("--image-root"), "{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn png_files_score_as_raw_pixels_through_the_gate() {
    let mut gate_config = Config::defaults().gate;
    gate_config.image_shape = Some([28, 28, 1]);
    gate_config.min_window_records = IMAGES;
    let engine = Config::defaults().engine;
    let policy = window::WindowPolicy::from_config(&gate_config);
    let mut scored = Vec::new();
    for as_png in [false, true] {
        let mut gate = Gate::new(gate_config.clone(), usize::MAX / 2, "m".into(), "t".into());
        let now = std::time::Instant::now();
        let mut records: Vec<String> = records(as_png).iter().map(|r| r.to_string()).collect();
        records.push(serde_json::json!({"type": "batch_end", "batch_id": "d1", "vendor_id": "v", "count": IMAGES}).to_string());
        for (offset, r) in records.into_iter().enumerate() {
            gate.ingest(InputMessage { key: None, payload: r.into_bytes(), headers: Vec::new(), pos: SourcePos { partition: 0, offset: offset as i64 } }, now);
        }
        let mut job = gate.take_window().expect("the delivery closed");
        let data = job.take_data();
        assert_eq!(data.pending, IMAGES, "no image dead-lettered");
        let features = data.features.clone();
        let scores = window::score_window(data, &engine, &policy, &Device::Cpu, &mut Silent).unwrap();
        scored.push((features, scores.scores, scores.flagged));
    }
    assert_eq!(scored[0].0, scored[1].0, "the same pixels");
    assert_eq!(scored[0].1, scored[1].1, "the same scores");
    assert_eq!(scored[0].2, scored[1].2, "the same suspects");
}
