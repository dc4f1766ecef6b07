//! The thread that trains and scores windows, so the loop keeps consuming (and the consumer
//! stays in its group) while a window trains: jobs go in, (job, scores) come back. At a text gate
//! it first embeds each window's new texts with the encoder it owns; at a gate with an image
//! encoder, each window's images.

use std::{sync::mpsc, thread};

use anyhow::{bail, Context as _, Result};

use super::{EpochHook, Hooks};
use crate::{
    config::Config,
    device,
    encoder::{Embedder, EmbeddingReport, ImageEncoder, ImageInput, TextEmbedder},
    gate::{
        window::{self, WindowScores},
        WindowJob,
    },
    o2u::{EpochReport, TrainingObserver, WindowError},
};

/// A finished job: the job back (its data taken) and the window's scores or why it failed.
pub type Finished = (WindowJob, Result<WindowScores, WindowError>);

pub struct WindowThread {
    jobs: mpsc::Sender<WindowJob>,
    results: mpsc::Receiver<Finished>,
}

/// Forwards each epoch's report to the hook, if there is one.
struct EpochForwarder(Option<EpochHook>);

impl TrainingObserver for EpochForwarder {
    fn on_epoch(&mut self, r: &EpochReport) {
        if let Some(f) = &self.0 {
            f(r)
        }
    }
}

impl WindowThread {
    /// `embedder`: the sentence encoder of a text gate, or the image encoder of `[encoder.image]`
    /// (the thread embeds each window's records before training, so the consumer loop never
    /// waits on the encoder).
    pub fn start(config: &Config, hooks: &Hooks, mut embedder: Option<Embedder>) -> Self {
        let (job_tx, job_rx) = mpsc::channel::<WindowJob>();
        let (res_tx, res_rx) = mpsc::channel();
        let engine = config.engine.clone();
        let policy = window::WindowPolicy::from_config(&config.gate);
        let choice = config.runtime.device;
        let on_epoch = hooks.on_epoch.clone();
        thread::Builder::new()
            .name("labelgate-window".into())
            .spawn(move || {
                // Kernel threads are set once at start-up (`device::set_cpu_threads` writes the
                // environment, which must not happen while other threads run).
                let mut dev = device::select(choice);
                while let Ok(mut job) = job_rx.recv() {
                    let mut data = job.take_data();
                    let embedded = match embedder.as_mut() {
                        _ if data.texts.is_empty() && data.images.is_empty() => Ok(()),
                        Some(Embedder::Image(encoder)) if data.texts.is_empty() => embed_images(encoder, &mut job, &mut data),
                        Some(Embedder::Text(embedder)) if data.images.is_empty() => embed_texts(embedder, &mut job, &mut data).map(|report| job.embedding = Some(report)),
                        _ => Err(anyhow::anyhow!("records of a kind this gate has no encoder for")),
                    };
                    if let Err(e) = embedded {
                        // Its records go to people (`window_failed`); the gate goes on.
                        let why = format!("embedding the window's records: {e:#}");
                        if res_tx.send((job, Err(WindowError::Data(why)))).is_err() {
                            break;
                        }
                        continue;
                    }
                    // A copy to retry on the CPU if the GPU fails (none is kept on the CPU).
                    let spare = (!dev.is_cpu()).then(|| data.clone());
                    let mut result = window::score_window(data, &engine, &policy, &dev, &mut EpochForwarder(on_epoch.clone()));
                    if let (Err(WindowError::Device(e)), Some(data)) = (&result, spare) {
                        // Documented fallback: a lost or failing GPU moves training to the CPU for
                        // the rest of the process (slower, same results); the window is retried.
                        tracing::error!(window = %job.id, error = %e, "the GPU failed; training on the CPU from now on");
                        dev = candle_core::Device::Cpu;
                        result = window::score_window(data, &engine, &policy, &dev, &mut EpochForwarder(on_epoch.clone()));
                    }
                    if res_tx.send((job, result)).is_err() {
                        break;
                    }
                }
            })
            .expect("window thread");
        Self { jobs: job_tx, results: res_rx }
    }

    pub fn submit(&self, job: WindowJob) -> Result<()> {
        self.jobs.send(job).ok().context("window thread gone")
    }

    /// The finished window, if one is ready.
    pub fn try_finished(&self) -> Result<Option<Finished>> {
        match self.results.try_recv() {
            Ok(f) => Ok(Some(f)),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => bail!("window thread stopped"),
        }
    }
}

/// The encoder of the gate's records, loaded before anything is consumed so that a missing
/// model stops start-up with what to do: the sentence encoder of a text gate (`gate.input` =
/// `text` or `text_pair`), the image encoder of `[encoder.image]`, or none.
pub fn load_embedder(config: &Config) -> Result<Option<Embedder>> {
    if let Some(image) = &config.encoder.image {
        // The image encoder runs on the CPU, as the text encoder does: embedding is not training.
        let encoder = ImageEncoder::load(&image.model_dir, image.batch_size, &candle_core::Device::Cpu).map_err(|e| anyhow::anyhow!("encoder.image.model_dir: {e:#}"))?;
        tracing::info!(model = %encoder.dir().display(), features = encoder.dim(), image_size = encoder.image_size(), "image encoder loaded");
        return Ok(Some(Embedder::Image(encoder)));
    }
    if !config.gate.input.is_text() {
        return Ok(None);
    }
    let t = &config.encoder.text;
    let embedder = TextEmbedder::load(t.model_dir.as_deref(), t.batch_size, t.cache_entries, config.gate.input == crate::config::GatedInput::TextPair)?;
    tracing::info!(model = %embedder.encoder().dir().display(), features = embedder.feature_dim(), "text encoder loaded");
    Ok(Some(Embedder::Text(embedder)))
}

/// Embeds the window's images into its training rows and its records (whose pixels stay, for
/// re-review).
fn embed_images(encoder: &ImageEncoder, job: &mut WindowJob, data: &mut window::WindowData) -> Result<()> {
    let started = std::time::Instant::now();
    let rows: Vec<usize> = data.images.iter().map(|(row, _)| *row).collect();
    let pixels = job.pixels(&rows);
    let inputs: Vec<ImageInput> = pixels.iter().zip(&data.images).map(|(pixels, (_, shape))| ImageInput { pixels, shape: *shape }).collect();
    let features = encoder.embed(&inputs)?;
    data.set_embedded_images(&features);
    job.set_embedded(&rows, &features);
    tracing::info!(window = %job.id, records = rows.len(), seconds = started.elapsed().as_secs_f64(), "images embedded");
    Ok(())
}

/// Embeds the window's texts into its training rows and its records.
fn embed_texts(embedder: &mut TextEmbedder, job: &mut WindowJob, data: &mut window::WindowData) -> anyhow::Result<EmbeddingReport> {
    let inputs: Vec<_> = data.texts.iter().map(|(_, t)| t.clone()).collect();
    let (features, report) = embedder.embed(&inputs)?;
    data.set_embedded(&features);
    let rows: Vec<usize> = data.texts.iter().map(|(row, _)| *row).collect();
    job.set_embedded(&rows, &features);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        encoder::image_tests::{tiny_clip, PROJECTION},
        gate::{Gate, InputMessage, SourcePos},
    };

    #[test]
    fn a_windows_images_are_embedded_in_row_order_into_its_rows_and_records() {
        let dir = tiny_clip("clip-window-thread", true);
        let encoder = ImageEncoder::load(&dir, 2, &candle_core::Device::Cpu).unwrap();
        let mut config = Config::defaults().gate;
        (config.classes, config.image_shape, config.feature_dim, config.min_window_records) = (vec!["a".into(), "b".into()], Some([2, 2, 1]), PROJECTION, 1);
        let mut gate = Gate::new(config, 10_000, "m".into(), "t".into()).embedding_images(true);
        let records = [r#""image":{"shape":[2,2,1],"data_b64":"AEB/wA=="}"#, r#""features":[1.0,0.0,0.0,1.0]"#, r#""image":{"shape":[2,2,1],"data_b64":"/4AAIA=="}"#];
        for (i, payload) in records.iter().enumerate() {
            let body = format!(r#"{{"sample_id":"s{i}","batch_id":"b","vendor_id":"v","label":"a",{payload}}}"#);
            gate.ingest(InputMessage { key: None, payload: body.into_bytes(), headers: vec![], pos: SourcePos { partition: 0, offset: i as i64 } }, Instant::now());
        }
        let end = br#"{"type":"batch_end","batch_id":"b","vendor_id":"v","count":3}"#.to_vec();
        gate.ingest(InputMessage { key: None, payload: end, headers: vec![], pos: SourcePos { partition: 0, offset: 3 } }, Instant::now());
        let mut job = gate.take_window().expect("a closed delivery");
        let mut data = job.take_data();
        embed_images(&encoder, &mut job, &mut data).unwrap();
        // Each row as the encoder embeds that record's pixels on their own.
        let pixels: [(Vec<f32>, [usize; 3]); 3] =
            [([0, 64, 127, 192].map(|b| b as f32 / 255.0).to_vec(), [2, 2, 1]), (vec![1.0, 0.0, 0.0, 1.0], [2, 2, 1]), ([255, 128, 0, 32].map(|b| b as f32 / 255.0).to_vec(), [2, 2, 1])];
        for (row, (p, shape)) in pixels.iter().enumerate() {
            let alone = encoder.embed(&[ImageInput { pixels: p, shape: *shape }]).unwrap();
            let got = &data.features[row * PROJECTION..(row + 1) * PROJECTION];
            assert!(alone.iter().zip(got).all(|(a, b)| (a - b).abs() < 1e-5), "row {row}: {got:?} vs {alone:?}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
