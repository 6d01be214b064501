//! Training progress on the terminal: a bar per epoch with images/s, and a line per epoch.

use cnn::train::{EpochReport, TrainObserver};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// A bar over `len` items on stderr (drawn only on a terminal) with `template`, whose
/// `{rate}` is whole items per second in the terminal's own colour. (`{per_sec:.0}` would ask
/// indicatif for colour 0, black, and print four decimals.)
pub fn bar(len: usize, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid template")
            .with_key(
                "rate",
                |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = write!(out, "{:.0}/s", state.per_sec());
                },
            )
            .progress_chars("=> "),
    );
    bar
}

pub struct ProgressReporter {
    bar: Option<ProgressBar>,
    epochs: usize,
    quiet: bool,
}

impl ProgressReporter {
    pub fn new(epochs: usize, quiet: bool) -> Self {
        ProgressReporter {
            bar: None,
            epochs,
            quiet,
        }
    }
}

impl TrainObserver for ProgressReporter {
    fn epoch_started(&mut self, epoch: usize, images: usize) {
        if self.quiet {
            return;
        }
        let bar = bar(
            images,
            "epoch {prefix} [{bar:30}] {pos}/{len} images  {rate}  epoch ends in {eta}  {msg}",
        );
        bar.set_prefix(format!("{epoch}/{}", self.epochs));
        self.bar = Some(bar);
    }

    fn batch_done(&mut self, images_done: usize, mean_loss: f64, accuracy: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(images_done as u64);
            bar.set_message(format!(
                "loss {mean_loss:.4}  accuracy {:.2}%",
                100.0 * accuracy
            ));
        }
    }

    fn epoch_done(&mut self, report: &EpochReport) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.quiet {
            return;
        }
        let validation = report.validation.as_ref().map_or(String::new(), |v| {
            format!(
                "  validation loss {:.4} accuracy {:.2}%",
                v.loss,
                100.0 * v.accuracy
            )
        });
        eprintln!(
            "epoch {}/{}  train loss {:.4} accuracy {:.2}%{validation}  lr {:.2e}  {:.1}s ({:.0} images/s, about {:.0}s left)",
            report.epoch,
            self.epochs,
            report.train_loss,
            100.0 * report.train_accuracy,
            report.learning_rate,
            report.seconds,
            report.images_per_second,
            report.seconds * self.epochs.saturating_sub(report.epoch) as f64
        );
    }
}
