//! What `cnn train` writes into a model's `training` metadata, and `cnn info` reads back: the
//! data, the settings, the epochs and their results. Nothing in it depends on the clock, so the
//! same run gives the same model file.

use cnn::train::{EpochReport, TrainConfig};
use serde::{Deserialize, Serialize};

/// One epoch's results, as kept in checkpoints (so a resumed run knows the epochs before it)
/// and in the model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochSummary {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub validation_loss: Option<f64>,
    pub validation_accuracy: Option<f64>,
    /// The rate of the epoch's last step.
    pub learning_rate: f32,
}

impl From<&EpochReport> for EpochSummary {
    fn from(report: &EpochReport) -> Self {
        EpochSummary {
            epoch: report.epoch,
            train_loss: report.train_loss,
            train_accuracy: report.train_accuracy,
            validation_loss: report.validation.as_ref().map(|v| v.loss),
            validation_accuracy: report.validation.as_ref().map(|v| v.accuracy),
            learning_rate: report.learning_rate,
        }
    }
}

/// Accuracy and loss on a data set's test split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub images: usize,
    pub accuracy: f64,
    pub loss: f64,
}

/// How a model was trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The version of `cnn` that trained it.
    pub cnn_version: String,
    /// `--data` as given, `--limit`, `--val-split`.
    pub data: String,
    pub limit: Option<usize>,
    pub val_split: f32,
    pub train_images: usize,
    pub held_out_images: usize,
    /// The layers in the notation.
    pub arch: String,
    /// Every setting of the training loop: epochs, batch, optimizer, rate, schedule, warm-up,
    /// augmentation, seed, `--save-best`, `--patience`.
    pub settings: TrainConfig,
    /// Worker threads (results are bit-identical for the same count).
    pub threads: usize,
    /// The epoch whose network the file holds: the last one trained, or the best by the
    /// held-out data with `--save-best`.
    pub kept_epoch: usize,
    /// The last epoch trained: below `settings.epochs` when `--patience` stopped the run.
    pub last_epoch: usize,
    pub stopped_early: bool,
    /// Every epoch trained, in order.
    pub epochs: Vec<EpochSummary>,
    /// The kept network on the test split, when the data set has one.
    pub test: Option<TestResult>,
}

impl TrainingRecord {
    /// The summary of the epoch whose network the file holds.
    pub fn kept(&self) -> Option<&EpochSummary> {
        self.epochs.iter().find(|e| e.epoch == self.kept_epoch)
    }
}
