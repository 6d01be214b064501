use crate::printable::escaped;
use crate::progress::ProgressReporter;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use cnn::checkpoint::{self, ModelParts};
use cnn::data::folder::{self, FolderSplit};
use cnn::data::{DataSpec, Dataset};
use cnn::network::Network;
use cnn::optim::OptimizerConfig;
use cnn::preprocess::Preprocessing;
use cnn::rng::{seeded, Stream};
use cnn::train::{
    evaluate, train_from, Augment, EpochReport, Evaluation, Schedule, TrainConfig, TrainObserver,
    TrainState,
};
use cnn::{fsutil, model_file, Model};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum OptimizerName {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum ScheduleName {
    Constant,
    Step,
    Cosine,
}

#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Data set: xo, xo:SIZE, fashion-mnist, idx:DIR, folder:DIR, cifar10:DIR.
    #[arg(long, default_value = "xo")]
    data: String,
    /// Architecture: a preset (xo, lenet5, cnn4, fashion), a file, or layers in the notation.
    #[arg(long, default_value = "xo")]
    arch: String,
    /// Passes over the training data (default 6; the fashion preset: its own).
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per mini-batch (default 64).
    #[arg(long)]
    batch: Option<usize>,
    /// Learning rate (default: 0.001 for adam and adamw, 0.01 for sgd).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Optimizer (default adam).
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerName>,
    /// Momentum for sgd.
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    momentum: f32,
    /// Nesterov momentum for sgd.
    #[arg(long)]
    nesterov: bool,
    /// Weight decay: an L2 penalty for sgd and adam, decoupled for adamw (default 0).
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f32>,
    /// Learning-rate schedule (default constant).
    #[arg(long, value_enum)]
    schedule: Option<ScheduleName>,
    /// For `--schedule step`: multiply the rate by --step-gamma every this many epochs.
    #[arg(long, default_value_t = 10)]
    step_every: usize,
    #[arg(long, default_value_t = 0.1)]
    step_gamma: f32,
    /// Epochs of linear learning-rate warm-up (default 0).
    #[arg(long)]
    warmup: Option<usize>,
    /// Augmentation: shift images by up to this many pixels each way (default 0).
    #[arg(long)]
    shift: Option<usize>,
    /// Augmentation: mirror images left-right half of the time (refused for digits).
    #[arg(long)]
    flip: bool,
    /// No augmentation at all, whatever the preset says.
    #[arg(long)]
    no_augment: bool,
    /// Hold out this fraction of the training images for validation after each epoch
    /// (default 0: none; the X/O data has its own validation split).
    #[arg(long, default_value_t = 0.0)]
    val_split: f32,
    /// Train on the first N training images only.
    #[arg(long)]
    limit: Option<usize>,
    /// Append one line of metrics per epoch to this file: JSON lines when it ends in .jsonl
    /// or .json, CSV otherwise.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Fixes the data, the initial weights, the order of the data, augmentation and dropout.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the model (default xo.safetensors; with --resume, beside the checkpoint:
    /// OUT.ckpt gives OUT); a checkpoint goes to OUT.ckpt after every epoch.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (its settings are used, checked as flags are;
    /// other flags are ignored, except --out, --log, --plot, --no-plot and --quiet).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bar or per-epoch lines.
    #[arg(long)]
    quiet: bool,
    /// Where to draw the loss and accuracy curves: PATH.png and PATH.svg (default: beside the
    /// model, `<out>.training.png` and `.svg` with the model's extension dropped).
    #[arg(long, conflicts_with = "no_plot")]
    #[serde(default)]
    plot: Option<PathBuf>,
    /// Do not draw the training curves.
    #[arg(long)]
    #[serde(default)]
    no_plot: bool,
    /// Exit after the checkpoint of this epoch, as if the run were killed there (for tests of
    /// --resume).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
}

/// Training settings a preset brings; flags override each.
struct PresetSettings {
    epochs: usize,
    batch: usize,
    optimizer: OptimizerName,
    lr: f32,
    weight_decay: f32,
    schedule: ScheduleName,
    warmup: usize,
    shift: usize,
    flip: bool,
}

fn preset_settings(arch: &str) -> Option<PresetSettings> {
    match arch {
        "lenet5" => Some(PresetSettings {
            epochs: 8,
            batch: 64,
            optimizer: OptimizerName::Adam,
            lr: 0.002,
            weight_decay: 0.0,
            schedule: ScheduleName::Cosine,
            warmup: 0,
            shift: 0,
            flip: false,
        }),
        "fashion" => Some(PresetSettings {
            epochs: 20,
            batch: 64,
            optimizer: OptimizerName::Adamw,
            lr: 0.002,
            weight_decay: 0.05,
            schedule: ScheduleName::Cosine,
            warmup: 0,
            shift: 0,
            flip: true,
        }),
        _ => None,
    }
}

impl TrainArgs {
    fn config(&self, data: &DataSpec) -> Result<TrainConfig> {
        let preset = preset_settings(&self.arch);
        let optimizer_name = self
            .optimizer
            .or(preset.as_ref().map(|p| p.optimizer))
            .unwrap_or(OptimizerName::Adam);
        let (optimizer, default_lr) = match optimizer_name {
            OptimizerName::Sgd => (
                OptimizerConfig::Sgd {
                    momentum: self.momentum,
                    nesterov: self.nesterov,
                },
                0.01,
            ),
            OptimizerName::Adam => (OptimizerConfig::adam(), 0.001),
            OptimizerName::Adamw => (OptimizerConfig::adamw(), 0.001),
        };
        // A preset's learning rate goes with its optimizer.
        let preset_lr = preset
            .as_ref()
            .filter(|p| p.optimizer == optimizer_name)
            .map(|p| p.lr);
        let schedule = match self
            .schedule
            .or(preset.as_ref().map(|p| p.schedule))
            .unwrap_or(ScheduleName::Constant)
        {
            ScheduleName::Constant => Schedule::Constant,
            ScheduleName::Cosine => Schedule::Cosine,
            ScheduleName::Step => Schedule::Step {
                every: self.step_every,
                gamma: self.step_gamma,
            },
        };
        let augment = if self.no_augment {
            Augment::default()
        } else {
            Augment {
                shift: self.shift.or(preset.as_ref().map(|p| p.shift)).unwrap_or(0),
                flip: self.flip || (preset.as_ref().is_some_and(|p| p.flip) && data.allows_flip()),
            }
        };
        if augment.flip && !data.allows_flip() {
            bail!(
                "--flip: mirrored images of {} change their class",
                data.to_arg()
            );
        }
        let config = TrainConfig {
            epochs: self
                .epochs
                .or(preset.as_ref().map(|p| p.epochs))
                .unwrap_or(6),
            batch_size: self
                .batch
                .or(preset.as_ref().map(|p| p.batch))
                .unwrap_or(64),
            learning_rate: self.lr.or(preset_lr).unwrap_or(default_lr),
            optimizer,
            seed: self.seed,
            weight_decay: self
                .weight_decay
                .or(preset.as_ref().map(|p| p.weight_decay))
                .unwrap_or(0.0),
            schedule,
            warmup_epochs: self
                .warmup
                .or(preset.as_ref().map(|p| p.warmup))
                .unwrap_or(0),
            augment,
        };
        config.validate()?;
        Ok(config)
    }

    /// The model file to write.
    fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("xo.safetensors"))
    }
}

/// What a checkpoint stores as its settings: the arguments (to load the same data) and the
/// resolved configuration.
#[derive(Serialize, Deserialize)]
struct Settings {
    args: TrainArgs,
    config: TrainConfig,
}

pub fn run(args: TrainArgs, threads: usize) -> Result<()> {
    let quiet = args.quiet;
    let (args, config, resumed) = match &args.resume {
        Some(path) => {
            let checkpoint = checkpoint::load(path)?;
            let settings = stored_settings(path, &checkpoint.settings)?;
            let mut stored = settings.args;
            stored.quiet = quiet;
            stored.resume = None;
            stored.stop_after = None;
            // Where the run writes is the user's choice, never the checkpoint's: a checkpoint
            // from someone else could otherwise write and append anywhere.
            stored.out = Some(args.out.clone().unwrap_or_else(|| model_beside(path)));
            stored.log = args.log.clone();
            stored.plot = args.plot.clone();
            stored.no_plot = args.no_plot;
            (stored, settings.config, Some(checkpoint))
        }
        None => {
            let data = DataSpec::parse(&args.data)?;
            let config = args.config(&data)?;
            (args, config, None)
        }
    };
    let data = DataSpec::parse(&args.data)?;
    let out = args.out();
    let checkpoint_path = checkpoint_path(&out);
    // Checked before the run, not after it: what is there must be a file the run may replace.
    for path in [&out, &checkpoint_path].into_iter().chain(&args.log) {
        fsutil::check_replaceable(path)?;
    }
    if let Some(log) = &args.log {
        if resumed.is_none() && log.exists() {
            // A fresh run starts a fresh log; a resumed one appends.
            std::fs::remove_file(log)
                .with_context(|| format!("cannot replace {}", log.display()))?;
        }
    }
    let (train_set, validation_set) = data.load_training(args.seed, args.val_split, args.limit)?;
    check_test_classes(&data, train_set.classes())?;
    let (notation, mut network, preprocessing, state) = match resumed {
        Some(checkpoint) => {
            let model = checkpoint.model;
            if model.network.input_shape() != train_set.shape() {
                bail!(
                    "the checkpoint's network does not take {} images",
                    train_set.shape()
                );
            }
            let notation = crate::arch_arg::describe(&model.network.architecture(), None);
            (
                notation,
                model.network,
                model.preprocessing,
                Some(checkpoint.state),
            )
        }
        None => {
            let (notation, layers) =
                crate::arch_arg::resolve(&args.arch, train_set.classes().len())?;
            let mut network = Network::new(&layers, train_set.shape())?;
            network.init_kaiming(&mut seeded(args.seed, Stream::WeightInit));
            (notation, network, data.preprocessing(&train_set), None)
        }
    };
    println!(
        "training {notation} on {} ({} images, {} held out), {threads} threads",
        data.to_arg(),
        train_set.len(),
        validation_set.as_ref().map_or(0, Dataset::len)
    );
    println!("settings: {}", describe(&config));
    if let Some(state) = &state {
        println!("resuming after epoch {} of {}", state.epoch, config.epochs);
    }
    super::print_summary(&network.summary(), network.input_shape());

    let settings = serde_json::to_value(Settings {
        args: args.clone(),
        config: config.clone(),
    })?;
    let data_arg = data.to_arg();
    let mut observer = Observer {
        progress: ProgressReporter::new(config.epochs, args.quiet),
        log: args.log.clone(),
        checkpoint: checkpoint_path.clone(),
        classes: train_set.classes().to_vec(),
        preprocessing: preprocessing.clone(),
        data: data_arg.clone(),
        settings,
        stop_after: args.stop_after,
    };
    let reports = train_from(
        &mut network,
        &preprocessing,
        &train_set,
        validation_set.as_ref(),
        &config,
        state,
        &mut observer,
    )?;
    let mut model = Model::new(network, train_set.classes().to_vec(), preprocessing)?;
    model.data = Some(data_arg);
    model_file::save(&model, &out)
        .with_context(|| format!("cannot save the model to {}", out.display()))?;
    println!(
        "saved {} (checkpoint {})",
        out.display(),
        checkpoint_path.display()
    );
    // After the model is saved: a plot that cannot be written does not lose the model.
    if !args.no_plot {
        let base = args
            .plot
            .clone()
            .unwrap_or_else(|| out.with_extension("training"));
        let (png, svg) = crate::plot::training_curves(&base, &reports)
            .context("cannot draw the training curves")?;
        if !args.quiet {
            println!("training curves: {png}, {svg}");
        }
    }
    drop(train_set);
    match data.load_test(args.seed) {
        Ok(test) => {
            super::check_same_classes(&model.classes, test.classes())?;
            let result = evaluate(&model.network, &model.preprocessing, &test, 256)?;
            print_evaluation(
                &result,
                &model.classes,
                &format!("test split of {}", data.to_arg()),
            );
        }
        Err(e) => println!(
            "no test evaluation: {}",
            crate::printable::one_line(&e.to_string())
        ),
    }
    Ok(())
}

/// Refuses, before training, an image folder whose test split has other classes than its
/// training split: the final evaluation would score them against the wrong classes.
fn check_test_classes(data: &DataSpec, classes: &[String]) -> Result<()> {
    if let DataSpec::Folder { dir } = data {
        if dir.join("test").is_dir() {
            let test = folder::class_names(dir, FolderSplit::Test)?;
            if test != classes {
                bail!(
                    "{}: its classes ({}) are not the training split's ({})",
                    escaped(&dir.join("test").display().to_string()),
                    escaped(&test.join(", ")),
                    escaped(&classes.join(", "))
                );
            }
        }
    }
    Ok(())
}

/// The settings a checkpoint stores, checked as the flags are: the configuration must be the
/// one its arguments give, through the same validation as a fresh run's.
fn stored_settings(path: &Path, stored: &serde_json::Value) -> Result<Settings> {
    let settings: Settings = serde_json::from_value(stored.clone()).with_context(|| {
        format!(
            "{}: the checkpoint's settings are malformed",
            path.display()
        )
    })?;
    let data = DataSpec::parse(&settings.args.data)
        .with_context(|| format!("{}: the checkpoint's settings", path.display()))?;
    let config = settings
        .args
        .config(&data)
        .with_context(|| format!("{}: the checkpoint's settings", path.display()))?;
    if config != settings.config {
        bail!(
            "{}: the checkpoint's training settings are not those its arguments give",
            path.display()
        );
    }
    Ok(settings)
}

/// The model file a resumed run writes by default: beside the checkpoint, `OUT` for
/// `OUT.ckpt` (`CKPT.safetensors` for a checkpoint named otherwise).
fn model_beside(checkpoint: &Path) -> PathBuf {
    match checkpoint.extension() {
        Some(e) if e == "ckpt" => checkpoint.with_extension(""),
        _ => {
            let mut name = checkpoint.as_os_str().to_owned();
            name.push(".safetensors");
            PathBuf::from(name)
        }
    }
}

/// `OUT.ckpt` beside the model file `OUT`.
fn checkpoint_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".ckpt");
    PathBuf::from(name)
}

fn describe(config: &TrainConfig) -> String {
    format!(
        "{} epochs, batch {}, {:?}, lr {}, weight decay {}, schedule {:?}, warm-up {} epochs, \
         shift {}, flip {}, seed {}",
        config.epochs,
        config.batch_size,
        config.optimizer,
        config.learning_rate,
        config.weight_decay,
        config.schedule,
        config.warmup_epochs,
        config.augment.shift,
        config.augment.flip,
        config.seed
    )
}

/// Accuracy, per-class accuracy with names, and the confusion matrix.
pub fn print_evaluation(result: &Evaluation, classes: &[String], what: &str) {
    println!(
        "{} images of the {what}: accuracy {:.2}%, loss {:.4}",
        result.images,
        100.0 * result.accuracy,
        result.loss
    );
    println!("per class:");
    for (class, accuracy) in classes.iter().zip(result.per_class_accuracy()) {
        println!("  {:<16} {:6.2}%", escaped(class), 100.0 * accuracy);
    }
    super::print_confusion(classes, &result.confusion);
}

struct Observer {
    progress: ProgressReporter,
    log: Option<PathBuf>,
    checkpoint: PathBuf,
    classes: Vec<String>,
    preprocessing: Preprocessing,
    data: String,
    settings: serde_json::Value,
    stop_after: Option<usize>,
}

impl Observer {
    fn append_log(&self, report: &EpochReport) -> Result<()> {
        let Some(path) = &self.log else {
            return Ok(());
        };
        let json = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "json")
        );
        let is_new = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot write the log {}", path.display()))?;
        let (val_loss, val_accuracy) = report
            .validation
            .as_ref()
            .map_or((f64::NAN, f64::NAN), |v| (v.loss, v.accuracy));
        let line = if json {
            let mut value = serde_json::to_value(report)?;
            if let Some(object) = value.as_object_mut() {
                if let Some(v) = &report.validation {
                    object.insert(
                        "validation".into(),
                        serde_json::json!({"loss": v.loss, "accuracy": v.accuracy, "images": v.images}),
                    );
                }
            }
            format!("{value}\n")
        } else {
            let header = if is_new {
                "epoch,train_loss,train_accuracy,validation_loss,validation_accuracy,learning_rate,seconds,images_per_second\n"
            } else {
                ""
            };
            format!(
                "{header}{},{},{},{},{},{},{:.3},{:.1}\n",
                report.epoch,
                report.train_loss,
                report.train_accuracy,
                val_loss,
                val_accuracy,
                report.learning_rate,
                report.seconds,
                report.images_per_second
            )
        };
        file.write_all(line.as_bytes())
            .with_context(|| format!("cannot write the log {}", path.display()))
    }
}

impl TrainObserver for Observer {
    fn epoch_started(&mut self, epoch: usize, images: usize) {
        self.progress.epoch_started(epoch, images);
    }

    fn batch_done(&mut self, images_done: usize, mean_loss: f64, accuracy: f64) {
        self.progress.batch_done(images_done, mean_loss, accuracy);
    }

    fn epoch_done(&mut self, report: &EpochReport) {
        self.progress.epoch_done(report);
        if let Err(e) = self.append_log(report) {
            eprintln!("warning: {e:#}");
        }
    }

    fn checkpoint(&mut self, network: &Network, state: &TrainState) -> cnn::Result<()> {
        let parts = ModelParts {
            classes: &self.classes,
            preprocessing: &self.preprocessing,
            data: Some(&self.data),
        };
        checkpoint::save(&self.checkpoint, network, &parts, state, &self.settings)?;
        if self.stop_after == Some(state.epoch) {
            println!("stopped after epoch {}", state.epoch);
            std::process::exit(0);
        }
        Ok(())
    }
}
