//! Training: mini-batches in a freshly shuffled order each epoch, forward, loss, backward,
//! optimizer step; then the held-out split. Progress goes to an observer, so the engine
//! prints nothing itself.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::kernels::team::Team;
use crate::layers::Mode;
use crate::limits;
use crate::loss::{argmax, check_finite, cross_entropy, softmax_cross_entropy, LossStats};
use crate::network::{Gradients, Network, Workspace};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::preprocess::Preprocessing;
use crate::rng::{seeded, Stream};
use crate::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub optimizer: OptimizerConfig,
    /// Fixes the order of the data in every epoch, the augmentation and dropout (initial
    /// weights are seeded by the caller).
    pub seed: u64,
    /// L2 penalty (SGD, Adam: added to the gradient) or decoupled decay (AdamW).
    #[serde(default)]
    pub weight_decay: f32,
    #[serde(default)]
    pub schedule: Schedule,
    /// Epochs over which the learning rate rises linearly to `learning_rate` (see
    /// [`TrainConfig::learning_rate_at`]).
    #[serde(default)]
    pub warmup_epochs: usize,
    #[serde(default)]
    pub augment: Augment,
    /// Keep the network of the epoch with the best held-out result ([`BestEpoch`]), not the
    /// last one.
    #[serde(default)]
    pub save_best: bool,
    /// Stop once the held-out result has not improved for this many epochs.
    #[serde(default)]
    pub patience: Option<usize>,
    /// Modules whose parameters stay as they are (their own path, or one above them:
    /// `layer1` freezes `layer1.0.conv1`). Batch normalisation inside them still tracks its
    /// running statistics, as in PyTorch after `requires_grad_(False)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
    /// The `ε` of [`softmax_cross_entropy`]: 0 trains on the labels as they are.
    #[serde(default)]
    pub label_smoothing: f32,
}

/// For each parameter of `network`, whether it belongs to a module of `paths`; every path must
/// name at least one module with parameters.
pub fn frozen_parameters(network: &Network, paths: &[String]) -> Result<Vec<bool>> {
    let within = |node: &str, path: &str| {
        node == path
            || node
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    for path in paths {
        if !network.params().any(|(node, _)| within(node, path)) {
            return Err(Error::Invalid(format!(
                "--freeze {path}: no module of the network with parameters is named so \
                 (or below it)"
            )));
        }
    }
    Ok(network
        .params()
        .map(|(node, _)| paths.iter().any(|path| within(node, path)))
        .collect())
}

/// How the learning rate changes over training (after any warm-up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Constant,
    /// Multiplied by `gamma` every `every` epochs.
    Step { every: usize, gamma: f32 },
    /// Half a cosine from `learning_rate` down to 0 at the end of the last epoch.
    Cosine,
}

/// Random changes to each training image, drawn anew every step (see
/// [`Dataset::fill_batch_augmented`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Shift by up to this many pixels each way, filling with zero bytes (a random crop of the
    /// image padded by `shift`).
    pub shift: usize,
    /// Mirror left-right half of the time.
    pub flip: bool,
    /// Rotate about the centre by an angle drawn from `[-rotate, rotate]` degrees.
    #[serde(default)]
    pub rotate: f32,
    /// Zoom about the centre by a factor drawn from `[1 - scale, 1 + scale]`.
    #[serde(default)]
    pub scale: f32,
    /// Add normal noise of this standard deviation (in units of the full pixel range, so 0.05
    /// is about 13 grey levels) to each value, clipped to the range.
    #[serde(default)]
    pub noise: f32,
    /// Blank a square this many pixels a side, centred at a random pixel (cutout).
    #[serde(default)]
    pub cutout: usize,
}

impl Augment {
    /// Checks the shift against images of `shape`: a shift of a whole side or more leaves
    /// nothing of the image.
    pub fn check(&self, shape: crate::tensor::Shape) -> Result<()> {
        let side = shape.height.min(shape.width);
        if self.shift >= side {
            return Err(Error::Invalid(format!(
                "--shift {} must be smaller than the images' side ({side} pixels)",
                self.shift
            )));
        }
        Ok(())
    }
}

impl TrainConfig {
    /// The learning rate of step `step` (counted from 0 over the whole run) when an epoch has
    /// `steps_per_epoch` steps.
    ///
    /// Warm-up over the first `n = warmup_epochs * steps_per_epoch` steps is linear: step `s`
    /// runs at `learning_rate * (s + 1) / n`, so the first at `learning_rate / n` and step
    /// `n - 1` at the full rate (PyTorch's `LinearLR(start_factor=1/n, total_iters=n-1)`).
    /// Then the schedule, at `progress = step / steps_per_epoch` epochs: constant; step
    /// (`gamma` to the power `floor(progress / every)`); or cosine, half a cosine from the
    /// full rate at the end of warm-up to 0 at the end of the last epoch, which makes it the
    /// one schedule that depends on `epochs`.
    pub fn learning_rate_at(&self, step: u64, steps_per_epoch: usize) -> f32 {
        let base = f64::from(self.learning_rate);
        let steps_per_epoch = steps_per_epoch.max(1);
        let warmup_steps = (self.warmup_epochs * steps_per_epoch) as u64;
        if step < warmup_steps {
            return (base * (step + 1) as f64 / warmup_steps as f64) as f32;
        }
        let progress = step as f64 / steps_per_epoch as f64;
        let rate = match self.schedule {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => {
                base * f64::from(gamma).powi((progress / every.max(1) as f64).floor() as i32)
            }
            Schedule::Cosine => {
                let warmup = self.warmup_epochs as f64;
                let span = (self.epochs as f64 - warmup).max(1e-9);
                let t = ((progress - warmup) / span).clamp(0.0, 1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        };
        rate as f32
    }
}

impl Default for TrainConfig {
    /// `cnn train`'s defaults: 6 epochs of batches of 64, Adam at 0.001, constant rate, seed 1,
    /// no weight decay, warm-up or augmentation.
    fn default() -> Self {
        TrainConfig {
            epochs: 6,
            batch_size: 64,
            learning_rate: 0.001,
            optimizer: OptimizerConfig::adam(),
            seed: 1,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            warmup_epochs: 0,
            augment: Augment::default(),
            save_best: false,
            patience: None,
            freeze: Vec::new(),
            label_smoothing: 0.0,
        }
    }
}

impl TrainConfig {
    /// Checks every setting, whether it comes from the command line or from a checkpoint.
    pub fn validate(&self) -> Result<()> {
        limits::check_epochs(self.epochs)?;
        limits::check_batch_size("--batch", self.batch_size)?;
        self.optimizer.validate()?;
        if self.warmup_epochs > self.epochs {
            return Err(Error::Invalid(format!(
                "--warmup {} is longer than the {} epochs",
                self.warmup_epochs, self.epochs
            )));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::Invalid(format!(
                "--lr must be a positive number, not {}",
                self.learning_rate
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::Invalid(format!(
                "--weight-decay must be 0 or more, not {}",
                self.weight_decay
            )));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::Invalid(format!(
                "--label-smoothing must be at least 0 and below 1, not {}",
                self.label_smoothing
            )));
        }
        let augment = self.augment;
        if !(augment.rotate.is_finite() && (0.0..=180.0).contains(&augment.rotate)) {
            return Err(Error::Invalid(format!(
                "--rotate must be 0 to 180 degrees, not {}",
                augment.rotate
            )));
        }
        if !(augment.scale.is_finite() && (0.0..1.0).contains(&augment.scale)) {
            return Err(Error::Invalid(format!(
                "--scale must be in [0, 1), not {}",
                augment.scale
            )));
        }
        if !(augment.noise.is_finite() && (0.0..=1.0).contains(&augment.noise)) {
            return Err(Error::Invalid(format!(
                "--noise must be 0 to 1, not {}",
                augment.noise
            )));
        }
        if self.patience == Some(0) {
            return Err(Error::Invalid("--patience must be at least 1".into()));
        }
        if let Schedule::Step { every, gamma } = self.schedule {
            if every == 0 || !(gamma.is_finite() && gamma > 0.0) {
                return Err(Error::Invalid(
                    "a step schedule needs a period of at least 1 epoch and a positive factor"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// Where training stands after an epoch: what a checkpoint stores beside the network.
#[derive(Clone, Debug)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    pub optimizer: Optimizer,
    /// The best epoch by the held-out data so far, when there is held-out data.
    pub best: Option<BestEpoch>,
}

/// The epoch with the best held-out result: the highest accuracy, and of equal accuracies the
/// lowest loss (so that a plateau at 100% still counts a falling loss as progress).
#[derive(Clone, Debug, PartialEq)]
pub struct BestEpoch {
    pub epoch: usize,
    pub accuracy: f64,
    pub loss: f64,
    /// Every saved tensor of the network after that epoch, in the order of
    /// [`Network::tensors`], when [`TrainConfig::save_best`] keeps it.
    pub tensors: Option<Vec<Vec<f32>>>,
}

impl BestEpoch {
    /// Whether `result` beats this epoch.
    pub fn is_beaten_by(&self, result: &Evaluation) -> bool {
        result.accuracy > self.accuracy
            || (result.accuracy == self.accuracy && result.loss < self.loss)
    }
}

/// Every saved tensor of `network` (parameters and buffers, in the order of
/// [`Network::tensors`]).
pub fn snapshot(network: &Network) -> Vec<Vec<f32>> {
    network.tensors().map(|(_, p)| p.value.clone()).collect()
}

/// Writes a [`snapshot`] back into `network`; `false`, with nothing changed, when it does not
/// fit.
pub fn restore(network: &mut Network, tensors: &[Vec<f32>]) -> bool {
    let lengths: Vec<usize> = network.tensors().map(|(_, p)| p.value.len()).collect();
    if lengths.len() != tensors.len() || lengths.iter().zip(tensors).any(|(&l, t)| l != t.len()) {
        return false;
    }
    let mut source = tensors.iter();
    for node in network.nodes_mut() {
        let layer = node.layer_mut();
        for param in layer.params_mut() {
            param.value.copy_from_slice(source.next().expect("counted"));
        }
        for buffer in layer.buffers_mut() {
            buffer
                .value
                .copy_from_slice(source.next().expect("counted"));
        }
    }
    true
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
    /// The learning rate at the end of the epoch.
    pub learning_rate: f32,
}

/// Receives progress as training goes; every method has a do-nothing default.
pub trait TrainObserver {
    fn epoch_started(&mut self, _epoch: usize, _images: usize) {}
    /// After each step: images done so far this epoch, the running mean loss and accuracy.
    fn batch_done(&mut self, _images_done: usize, _mean_loss: f64, _accuracy: f64) {}
    /// Asked after every step: `true` ends training there (the network keeps the weights of
    /// that step; the epoch under way gets no report, `save_best` restores nothing).
    fn should_stop(&mut self) -> bool {
        false
    }
    fn epoch_done(&mut self, _report: &EpochReport) {}
    /// Training stops before epoch `next_epoch` because the held-out result has not improved
    /// since `best_epoch` ([`TrainConfig::patience`]).
    fn stopped_early(&mut self, _next_epoch: usize, _best_epoch: usize) {}
    /// After each epoch, with everything needed to continue from here (see
    /// [`train_from`]); an error stops training.
    fn checkpoint(&mut self, _network: &Network, _state: &TrainState) -> Result<()> {
        Ok(())
    }
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
    train_from(
        network,
        preprocessing,
        data,
        validation,
        config,
        None,
        observer,
    )
}

/// A seed for one training step's randomness (augmentation, dropout), from the run's seed and
/// the step's number: no generator state to carry, so a resumed run draws the same numbers.
fn step_seed(seed: u64, step: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(stream as u64);
    rng
}

/// [`train`], continuing from `resume` (a network and state saved by
/// [`TrainObserver::checkpoint`]) when given: the result is the same, bit for bit, as a run
/// that was never interrupted, for the same thread count.
pub fn train_from(
    network: &mut Network,
    preprocessing: &Preprocessing,
    data: &Dataset,
    validation: Option<&Dataset>,
    config: &TrainConfig,
    resume: Option<TrainState>,
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
    if (config.save_best || config.patience.is_some()) && validation.is_none() {
        return Err(Error::Invalid(
            "--save-best and --patience need held-out data (--val-split)".into(),
        ));
    }
    let smallest_batch = match data.len() % config.batch_size {
        0 => config.batch_size.min(data.len()),
        rest => rest,
    };
    check_batch_statistics(network, smallest_batch)?;
    limits::check_batch("--batch", config.batch_size, network)?;
    config.augment.check(data.shape())?;
    let steps_per_epoch = data.len().div_ceil(config.batch_size);
    let mut rng = seeded(config.seed, Stream::Shuffle);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let (first_epoch, mut optimizer, mut best) = match resume {
        Some(state) => {
            check_resumable(&state, config, steps_per_epoch)?;
            if !state.optimizer.fits(network) {
                return Err(Error::Invalid(
                    "the checkpoint's optimizer state does not fit the network".into(),
                ));
            }
            // Replay the shuffles of the epochs already done.
            for _ in 0..state.epoch {
                order.shuffle(&mut rng);
            }
            (state.epoch + 1, state.optimizer, state.best)
        }
        None => (1, Optimizer::new(config.optimizer, network), None),
    };
    optimizer.freeze(frozen_parameters(network, &config.freeze)?);
    let mut pixels = Vec::new();
    let mut workspace = Workspace::new();
    let mut grads = Gradients::new(network);
    let mut batch = Tensor::empty();
    let mut labels = Vec::with_capacity(config.batch_size);
    let mut reports = Vec::new();

    let mut learning_rate = config.learning_rate;
    for epoch in first_epoch..=config.epochs {
        // Checked before each epoch, so that a run resumed after it stopped early stays stopped.
        if let (Some(patience), Some(best)) = (config.patience, &best) {
            if epoch - 1 - best.epoch >= patience {
                observer.stopped_early(epoch, best.epoch);
                break;
            }
        }
        order.shuffle(&mut rng);
        observer.epoch_started(epoch, data.len());
        let started = Instant::now();
        let (mut total_loss, mut correct, mut seen) = (0.0, 0, 0);
        for (step_in_epoch, indices) in order.chunks(config.batch_size).enumerate() {
            let step = ((epoch - 1) * steps_per_epoch + step_in_epoch) as u64;
            if config.augment == Augment::default() {
                data.fill_batch(indices, preprocessing, &mut batch, &mut labels);
            } else {
                data.fill_batch_augmented(
                    indices,
                    preprocessing,
                    config.augment,
                    &mut step_seed(config.seed, step, Stream::Augment),
                    &mut pixels,
                    &mut batch,
                    &mut labels,
                );
            }
            workspace.set_step_seed(step_seed(config.seed, step, Stream::Dropout).next_u64());
            learning_rate = config.learning_rate_at(step, steps_per_epoch);
            let stats = train_step(
                network,
                (&mut workspace, &mut grads),
                &mut optimizer,
                (&batch, &labels),
                StepSettings {
                    learning_rate,
                    weight_decay: config.weight_decay,
                    label_smoothing: config.label_smoothing,
                },
            )?;
            total_loss += stats.total_loss;
            correct += stats.correct;
            seen += indices.len();
            observer.batch_done(seen, total_loss / seen as f64, correct as f64 / seen as f64);
            if observer.should_stop() {
                return Ok(reports);
            }
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
            learning_rate,
        };
        if let Some(result) = &report.validation {
            if best.as_ref().is_none_or(|b| b.is_beaten_by(result)) {
                best = Some(BestEpoch {
                    epoch,
                    accuracy: result.accuracy,
                    loss: result.loss,
                    tensors: config.save_best.then(|| snapshot(network)),
                });
            }
        }
        observer.epoch_done(&report);
        reports.push(report);
        observer.checkpoint(
            network,
            &TrainState {
                epoch,
                optimizer: optimizer.clone(),
                best: best.clone(),
            },
        )?;
    }
    if config.save_best {
        if let Some(tensors) = best.and_then(|b| b.tensors) {
            if !restore(network, &tensors) {
                return Err(Error::Invalid(
                    "the best epoch's tensors do not fit the network".into(),
                ));
            }
        }
    }
    Ok(reports)
}

/// Batch normalisation while training needs more than one value per channel, as in PyTorch
/// ("Expected more than 1 value per channel when training"): the variance of one value is 0
/// and its normalised output always 0. `batch` is the smallest batch the run will see.
fn check_batch_statistics(network: &Network, batch: usize) -> Result<()> {
    for node in network.nodes() {
        // Batch normalisation keeps its input's shape.
        let values = batch * node.layer().output_shape().plane();
        if node.layer().spec() == crate::layers::LayerSpec::BatchNorm2d && values <= 1 {
            return Err(Error::Invalid(format!(
                "node {} (batchnorm) would normalise a batch of {batch} image(s) with \
                 {values} value per channel; batch normalisation needs more than 1 (change \
                 --batch or --limit so that no batch holds a single image)",
                node.name()
            )));
        }
    }
    Ok(())
}

/// One optimisation step on a prepared batch (`[N, input_shape]` with its `N` labels): forward
/// in training mode, running statistics, loss, backward, then the optimizer with
/// `(learning rate, weight decay)`. `buffers` (the workspace and the gradients) are reused from
/// step to step. Returns the batch's summed loss and correct count.
///
/// The step runs in a [`Team`]: the pool's threads stay with it from the first kernel to the
/// last instead of being woken for each.
pub fn train_step(
    network: &mut Network,
    buffers: (&mut Workspace, &mut Gradients),
    optimizer: &mut Optimizer,
    (batch, labels): (&Tensor, &[usize]),
    settings: StepSettings,
) -> Result<LossStats> {
    let StepSettings {
        learning_rate,
        weight_decay,
        label_smoothing,
    } = settings;
    let (workspace, grads) = buffers;
    crate::kernels::on_pool(|| {
        Team::run(|| {
            network.forward(batch, workspace, Mode::Train)?;
            network.update_running_statistics(workspace);
            let (logits, grad) = workspace.output_and_grad_mut();
            let stats = softmax_cross_entropy(logits, labels, label_smoothing, grad)?;
            grads.zero();
            network.backward(batch, workspace, grads);
            optimizer.step(network, grads, learning_rate, weight_decay);
            Ok(stats)
        })
    })
}

/// What one [`train_step`] applies besides the gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepSettings {
    pub learning_rate: f32,
    pub weight_decay: f32,
    /// The `ε` of [`softmax_cross_entropy`].
    pub label_smoothing: f32,
}

/// Checks that `state` (from a checkpoint) continues a run of `config`: the same optimizer,
/// no more epochs done than the run has, and as many optimizer steps as those epochs take
/// (`steps_per_epoch` each).
fn check_resumable(state: &TrainState, config: &TrainConfig, steps_per_epoch: usize) -> Result<()> {
    let refuse = |reason: String| Err(Error::Invalid(format!("the checkpoint {reason}")));
    if state.optimizer.config() != config.optimizer {
        return refuse(format!(
            "holds the state of {:?}, but its settings say {:?}",
            state.optimizer.config(),
            config.optimizer
        ));
    }
    if state.epoch > config.epochs {
        return refuse(format!(
            "says {} epochs are done, of a run of {}",
            state.epoch, config.epochs
        ));
    }
    let (steps, _, _) = state.optimizer.state();
    let expected = state.epoch as u64 * steps_per_epoch as u64;
    if steps != expected {
        return refuse(format!(
            "says {steps} optimizer steps were taken, but {} epochs of {steps_per_epoch} \
             steps make {expected}",
            state.epoch
        ));
    }
    Ok(())
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
    for chunk in indices.chunks(limits::batch_that_fits(batch_size, network)) {
        data.fill_batch(chunk, preprocessing, &mut batch, &mut labels);
        let logits = network.infer(&batch, &mut workspace)?;
        for (n, &label) in labels.iter().enumerate() {
            let row = logits.sample(n);
            check_finite(row)?;
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

impl Evaluation {
    /// Per class, the share of its images that were called right (0 for a class with none).
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(class, row)| {
                let total: usize = row.iter().sum();
                row[class] as f64 / total.max(1) as f64
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(schedule: Schedule, warmup_epochs: usize) -> TrainConfig {
        TrainConfig {
            epochs: 10,
            batch_size: 1,
            learning_rate: 0.1,
            optimizer: OptimizerConfig::adam(),
            seed: 1,
            weight_decay: 0.0,
            schedule,
            warmup_epochs,
            augment: Augment::default(),
            save_best: false,
            patience: None,
            freeze: Vec::new(),
            label_smoothing: 0.0,
        }
    }

    #[test]
    fn schedules_follow_their_formulas() {
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        // Ten steps per epoch: step 73 is 7.3 epochs in.
        let at = |config: &TrainConfig, step: u64| config.learning_rate_at(step, 10);
        let constant = config(Schedule::Constant, 0);
        assert!(close(at(&constant, 73), 0.1));
        let step = config(
            Schedule::Step {
                every: 3,
                gamma: 0.5,
            },
            0,
        );
        assert!(close(at(&step, 29), 0.1));
        assert!(close(at(&step, 30), 0.05));
        assert!(close(at(&step, 65), 0.025));
        let cosine = config(Schedule::Cosine, 0);
        assert!(close(at(&cosine, 0), 0.1));
        assert!(close(at(&cosine, 50), 0.05));
        assert!(at(&cosine, 99) < 1e-3);
        // Warm-up over 2 epochs (20 steps): step s at 0.1 * (s + 1) / 20, then the cosine
        // over the other 8 epochs.
        let warm = config(Schedule::Cosine, 2);
        assert!(close(at(&warm, 0), 0.1 / 20.0));
        assert!(close(at(&warm, 9), 0.05));
        assert!(close(at(&warm, 19), 0.1));
        assert!(close(at(&warm, 20), 0.1));
        assert!(close(at(&warm, 60), 0.05));
    }

    #[test]
    fn best_epoch_prefers_accuracy_then_loss() {
        let best = BestEpoch {
            epoch: 3,
            accuracy: 0.9,
            loss: 0.3,
            tensors: None,
        };
        let result = |accuracy, loss| Evaluation {
            images: 10,
            loss,
            accuracy,
            confusion: vec![],
        };
        assert!(best.is_beaten_by(&result(0.91, 0.5)));
        assert!(best.is_beaten_by(&result(0.9, 0.2)));
        assert!(!best.is_beaten_by(&result(0.9, 0.3)));
        assert!(!best.is_beaten_by(&result(0.89, 0.1)));
    }
}
