//! Shows training progress: a bar over samples × epochs on a terminal, one log line per epoch.

use indicatif::{ProgressBar, ProgressStyle};

use crate::o2u::{EpochReport, Stage, TrainingObserver};

pub struct ProgressReporter {
    bar: ProgressBar,
    samples: usize,
    epochs_done: u64,
}

impl ProgressReporter {
    /// `samples` per epoch, `epochs` in all stages that will run.
    pub fn new(samples: usize, epochs: usize) -> Self {
        let bar = ProgressBar::new((samples * epochs) as u64);
        bar.set_style(ProgressStyle::with_template("{spinner} {msg:32} [{bar:30}] {percent:>3}% eta {eta}").expect("valid template").progress_chars("=> "));
        Self { bar, samples, epochs_done: 0 }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl TrainingObserver for ProgressReporter {
    fn on_batch(&mut self, samples_done: usize) {
        self.bar.set_position(self.epochs_done * self.samples as u64 + samples_done as u64);
    }

    fn on_epoch(&mut self, r: &EpochReport) {
        self.epochs_done += 1;
        let stage = match r.stage {
            Stage::Warmup => "stage 1 (warm-up)",
            Stage::Cyclical => "stage 2 (cyclical)",
            Stage::Retrain => "stage 3 (retrain)",
        };
        self.bar.set_message(format!("{stage} {}/{}", r.epoch + 1, r.epochs_in_stage));
        self.bar.suspend(|| tracing::info!(stage, epoch = r.epoch + 1, of = r.epochs_in_stage, lr = r.lr, loss = r.mean_loss, seconds = r.seconds, "epoch done"));
    }
}
