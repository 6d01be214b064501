//! Training: mini-batches in a freshly shuffled order each epoch, forward, loss, backward,
//! optimizer step; then the held-out split. Progress goes to an observer, so the engine
//! prints nothing itself.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::layers::Mode;
use crate::loss::{argmax, cross_entropy, softmax_cross_entropy};
use crate::network::{Gradients, Network, Workspace};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::preprocess::Preprocessing;
use crate::rng::{seeded, Stream};
use crate::tensor::Tensor;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub optimizer: OptimizerConfig,
    /// Fixes the order of the data in every epoch (initial weights are seeded by the caller).
    pub seed: u64,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::Invalid("--epochs must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(Error::Invalid("--batch must be at least 1".into()));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::Invalid(format!(
                "--lr must be a positive number, not {}",
                self.learning_rate
            )));
        }
        Ok(())
    }
}

/// What one epoch achieved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub validation: Option<Evaluation>,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Receives progress as training goes; every method has a do-nothing default.
pub trait TrainObserver {
    fn epoch_started(&mut self, _epoch: usize, _images: usize) {}
    /// After each step: images done so far this epoch, and the running mean loss.
    fn batch_done(&mut self, _images_done: usize, _mean_loss: f64) {}
    fn epoch_done(&mut self, _report: &EpochReport) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl TrainObserver for Silent {}

/// Trains `network` on `data` for `config.epochs` epochs, evaluating on `validation` after each.
pub fn train(
    network: &mut Network,
    preprocessing: &Preprocessing,
    data: &Dataset,
    validation: Option<&Dataset>,
    config: &TrainConfig,
    observer: &mut dyn TrainObserver,
) -> Result<Vec<EpochReport>> {
    config.validate()?;
    check_fits(network, data)?;
    if let Some(v) = validation {
        check_fits(network, v)?;
    }
    if data.is_empty() {
        return Err(Error::Invalid("the training set is empty".into()));
    }
    let mut rng = seeded(config.seed, Stream::Shuffle);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut optimizer = Optimizer::new(config.optimizer, network);
    let mut workspace = Workspace::new();
    let mut grads = Gradients::new(network);
    let mut batch = Tensor::empty();
    let mut labels = Vec::with_capacity(config.batch_size);
    let mut reports = Vec::with_capacity(config.epochs);

    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        observer.epoch_started(epoch, data.len());
        let started = Instant::now();
        let (mut total_loss, mut correct, mut seen) = (0.0, 0, 0);
        for indices in order.chunks(config.batch_size) {
            data.fill_batch(indices, preprocessing, &mut batch, &mut labels);
            network.forward(&batch, &mut workspace, Mode::Train)?;
            let (logits, grad) = workspace.output_and_grad_mut();
            let stats = softmax_cross_entropy(logits, &labels, grad)?;
            grads.zero();
            network.backward(&batch, &mut workspace, &mut grads);
            optimizer.step(network, &grads, config.learning_rate);
            total_loss += stats.total_loss;
            correct += stats.correct;
            seen += indices.len();
            observer.batch_done(seen, total_loss / seen as f64);
        }
        let seconds = started.elapsed().as_secs_f64();
        let train_loss = total_loss / seen as f64;
        if !train_loss.is_finite() {
            return Err(Error::Invalid(format!(
                "training diverged at epoch {epoch} (the loss is {train_loss}): lower the learning rate"
            )));
        }
        let report = EpochReport {
            epoch,
            train_loss,
            train_accuracy: correct as f64 / seen as f64,
            validation: validation
                .map(|v| evaluate(network, preprocessing, v, config.batch_size))
                .transpose()?,
            seconds,
            images_per_second: seen as f64 / seconds.max(1e-9),
        };
        observer.epoch_done(&report);
        reports.push(report);
    }
    Ok(reports)
}

fn check_fits(network: &Network, data: &Dataset) -> Result<()> {
    if data.shape() != network.input_shape() {
        return Err(Error::Invalid(format!(
            "the network takes {} images, the data set has {}",
            network.input_shape(),
            data.shape()
        )));
    }
    let outputs = network.output_shape();
    if !outputs.is_flat() || outputs.channels != data.classes().len() {
        return Err(Error::Invalid(format!(
            "the network ends in {outputs} outputs, the data set has {} classes",
            data.classes().len()
        )));
    }
    Ok(())
}

/// Loss, accuracy and confusion matrix on a data set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    pub images: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// `confusion[true][predicted]`: how many images of class `true` were called `predicted`.
    pub confusion: Vec<Vec<usize>>,
}

pub fn evaluate(
    network: &Network,
    preprocessing: &Preprocessing,
    data: &Dataset,
    batch_size: usize,
) -> Result<Evaluation> {
    check_fits(network, data)?;
    let classes = data.classes().len();
    let mut confusion = vec![vec![0; classes]; classes];
    let mut workspace = Workspace::new();
    let (mut batch, mut labels) = (Tensor::empty(), Vec::new());
    let mut total_loss = 0.0;
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        data.fill_batch(chunk, preprocessing, &mut batch, &mut labels);
        let logits = network.forward(&batch, &mut workspace, Mode::Infer)?;
        for (n, &label) in labels.iter().enumerate() {
            let row = logits.sample(n);
            total_loss += f64::from(cross_entropy(row, label));
            confusion[label][argmax(row)] += 1;
        }
    }
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let images = data.len();
    Ok(Evaluation {
        images,
        loss: total_loss / images.max(1) as f64,
        accuracy: correct as f64 / images.max(1) as f64,
        confusion,
    })
}
