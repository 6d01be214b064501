use crate::printable::escaped;
use crate::printable::one_line;
use crate::progress::ProgressReporter;
use crate::record::{EpochSummary, TestResult, TrainingRecord};
use crate::usage::{usage_error, UsageError};
use crate::Global;
use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, ValueEnum};
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
use cnn::{fsutil, model_file, Model, Shape};
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
    #[arg(long, default_value = "xo", help = crate::arch_arg::help())]
    arch: String,
    /// Passes over the training data (default 6; the presets: their own). With --resume: the
    /// number of epochs to reach, extending a finished or interrupted run.
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
    /// Momentum for sgd (default 0.9).
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f32>,
    /// Nesterov momentum for sgd.
    #[arg(long)]
    nesterov: bool,
    /// Weight decay: an L2 penalty for sgd and adam, decoupled for adamw (default 0).
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f32>,
    /// Label smoothing ε, as in PyTorch's CrossEntropyLoss: the target is 1 - ε on the label
    /// plus ε / classes on every class (default 0).
    #[arg(long, allow_negative_numbers = true)]
    label_smoothing: Option<f32>,
    /// Learning-rate schedule (default constant).
    #[arg(long, value_enum)]
    schedule: Option<ScheduleName>,
    /// For `--schedule step`: multiply the rate by --step-gamma every this many epochs
    /// (default 10).
    #[arg(long)]
    step_every: Option<usize>,
    /// For `--schedule step`: the factor (default 0.1).
    #[arg(long)]
    step_gamma: Option<f32>,
    /// Epochs of linear learning-rate warm-up: step s of the n warm-up steps runs at
    /// lr * (s + 1) / n (default 0).
    #[arg(long)]
    warmup: Option<usize>,
    /// Augmentation: shift images by up to this many pixels each way (default 0).
    #[arg(long)]
    shift: Option<usize>,
    /// Augmentation: mirror images left-right half of the time (refused for digits).
    #[arg(long)]
    flip: bool,
    /// Augmentation: rotate by up to this many degrees either way.
    #[arg(long, value_name = "DEG")]
    rotate: Option<f32>,
    /// Augmentation: zoom by a factor drawn from [1 - F, 1 + F].
    #[arg(long, value_name = "F")]
    scale: Option<f32>,
    /// Augmentation: add normal noise of standard deviation S (1 = the full pixel range).
    #[arg(long, value_name = "S")]
    noise: Option<f32>,
    /// Augmentation: blank an N x N square at a random place.
    #[arg(long, value_name = "N")]
    cutout: Option<usize>,
    /// No augmentation at all, whatever the preset says.
    #[arg(long, conflicts_with_all = ["shift", "flip", "rotate", "scale", "noise", "cutout"])]
    no_augment: bool,
    /// Hold out this fraction of the training images for validation after each epoch
    /// (default 0: none; the X/O data has its own validation split).
    #[arg(long, default_value_t = 0.0)]
    val_split: f32,
    /// Train on the first N training images only.
    #[arg(long)]
    limit: Option<usize>,
    /// For folder: data, convert every image to this size (HxW, or one number for a square)
    /// instead of the first image's.
    #[arg(long, value_name = "HxW")]
    #[serde(default)]
    size: Option<String>,
    /// For folder: data, convert every image to grey.
    #[arg(long, conflicts_with = "rgb")]
    #[serde(default)]
    grey: bool,
    /// For folder: data, convert every image to RGB.
    #[arg(long)]
    #[serde(default)]
    rgb: bool,
    /// Keep the network of the epoch with the best held-out accuracy (ties: the lower
    /// held-out loss), not the last one's.
    #[arg(long)]
    #[serde(default)]
    save_best: bool,
    /// Stop when the held-out result (as for --save-best) has not improved for N epochs.
    #[arg(long, value_name = "N")]
    patience: Option<usize>,
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
    /// Start from this model's network and weights (safetensors or ONNX) instead of --arch:
    /// fine-tuning. Its input shape is the images' shape.
    #[arg(long, value_name = "MODEL", conflicts_with_all = ["arch", "resume"])]
    #[serde(default)]
    init: Option<PathBuf>,
    /// With --init: a new last dense layer, with one output per class of --data, initialised
    /// afresh (needed when the data has other classes than the model).
    #[arg(long, requires = "init")]
    #[serde(default)]
    replace_head: bool,
    /// Keep the parameters of these modules as they are (a module path, e.g. `conv1`,
    /// `layer1`, or `0` for a plain stack's first layer; everything below it too).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    #[serde(default)]
    freeze: Vec<String>,
    /// Continue the run saved in this checkpoint with its own settings (checked as flags
    /// are); only --epochs (to extend it), --out, --log, --plot and --no-plot may be given
    /// with it, and it writes where they say, never where the checkpoint says.
    #[arg(long)]
    resume: Option<PathBuf>,
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

/// The flags a resumed run may take: where things go, and how far to go.
const RESUMABLE: &[&str] = &[
    "epochs",
    "out",
    "log",
    "plot",
    "no_plot",
    "resume",
    "stop_after",
];
/// Global options, which every subcommand's matches also hold.
const GLOBAL: &[&str] = &["threads", "quiet", "color"];

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
    cutout: usize,
    label_smoothing: f32,
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
            cutout: 0,
            label_smoothing: 0.0,
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
            cutout: 0,
            label_smoothing: 0.0,
        }),
        // The settings of `fashion`, over fewer epochs, with cutout and label smoothing.
        "fashion-resnet" => preset_settings("fashion").map(|fashion| PresetSettings {
            epochs: 16,
            cutout: 8,
            label_smoothing: 0.1,
            ..fashion
        }),
        _ => None,
    }
}

impl TrainArgs {
    /// The training loop's settings, refusing flags that do not apply (usage errors).
    fn config(&self, data: &DataSpec) -> Result<TrainConfig> {
        // A network from --init brings no preset's settings.
        let preset = match self.init {
            Some(_) => None,
            None => preset_settings(&self.arch),
        };
        let optimizer_name = self
            .optimizer
            .or(preset.as_ref().map(|p| p.optimizer))
            .unwrap_or(OptimizerName::Adam);
        if optimizer_name != OptimizerName::Sgd && (self.momentum.is_some() || self.nesterov) {
            let flag = if self.nesterov {
                "--nesterov"
            } else {
                "--momentum"
            };
            return usage_error(format!(
                "{flag} applies to --optimizer sgd only; {} has moments of its own",
                optimizer_name.label()
            ));
        }
        let momentum = self.momentum.unwrap_or(0.9);
        if !(0.0..1.0).contains(&momentum) {
            return usage_error(format!("--momentum must be in [0, 1), not {momentum}"));
        }
        let (optimizer, default_lr) = match optimizer_name {
            OptimizerName::Sgd => (
                OptimizerConfig::Sgd {
                    momentum,
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
        let schedule_name = self
            .schedule
            .or(preset.as_ref().map(|p| p.schedule))
            .unwrap_or(ScheduleName::Constant);
        if schedule_name != ScheduleName::Step
            && (self.step_every.is_some() || self.step_gamma.is_some())
        {
            return usage_error(format!(
                "--step-every and --step-gamma apply to --schedule step only (the schedule is {})",
                schedule_name.label()
            ));
        }
        let schedule = match schedule_name {
            ScheduleName::Constant => Schedule::Constant,
            ScheduleName::Cosine => Schedule::Cosine,
            ScheduleName::Step => Schedule::Step {
                every: self.step_every.unwrap_or(10),
                gamma: self.step_gamma.unwrap_or(0.1),
            },
        };
        let augment = if self.no_augment {
            Augment::default()
        } else {
            Augment {
                shift: self.shift.or(preset.as_ref().map(|p| p.shift)).unwrap_or(0),
                flip: self.flip || (preset.as_ref().is_some_and(|p| p.flip) && data.allows_flip()),
                rotate: self.rotate.unwrap_or(0.0),
                scale: self.scale.unwrap_or(0.0),
                noise: self.noise.unwrap_or(0.0),
                cutout: self
                    .cutout
                    .or(preset.as_ref().map(|p| p.cutout))
                    .unwrap_or(0),
            }
        };
        if augment.flip && !data.allows_flip() {
            return usage_error(format!(
                "--flip: mirrored images of {} change their class",
                data.to_arg()
            ));
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
            save_best: self.save_best,
            patience: self.patience,
            freeze: self.freeze.clone(),
            label_smoothing: self
                .label_smoothing
                .or(preset.as_ref().map(|p| p.label_smoothing))
                .unwrap_or(0.0),
        };
        config.validate().map_err(|e| UsageError(e.to_string()))?;
        check_warmup(&config)?;
        if !(0.0..1.0).contains(&self.val_split) {
            return usage_error(format!(
                "--val-split must be at least 0 and below 1, not {}",
                self.val_split
            ));
        }
        let held_out = match data {
            DataSpec::Xo { .. } if self.val_split > 0.0 => {
                return usage_error(
                    "--val-split: the X/O data has a validation split of its own (1000 images)",
                )
            }
            DataSpec::Xo { .. } => true,
            _ => self.val_split > 0.0,
        };
        if (self.save_best || self.patience.is_some()) && !held_out {
            return usage_error(format!(
                "--save-best and --patience compare epochs on held-out data: give --val-split \
                 (e.g. 0.1) for {}",
                data.to_arg()
            ));
        }
        let folder = matches!(data, DataSpec::Folder { .. });
        if !folder && (self.size.is_some() || self.grey || self.rgb) {
            return usage_error(format!(
                "--size, --grey and --rgb apply to folder: data only; {} has one image shape",
                data.to_arg()
            ));
        }
        if self.limit == Some(0) {
            return usage_error("--limit must be at least 1");
        }
        Ok(config)
    }

    /// The shape folder images are converted to: `--size`, `--grey`/`--rgb`, and the first
    /// training image for whatever they leave open. `None` for other data.
    fn image_shape(&self, data: &DataSpec) -> Result<Option<Shape>> {
        let DataSpec::Folder { dir } = data else {
            return Ok(None);
        };
        let size = self.size.as_deref().map(parse_size).transpose()?;
        let channels = match (self.grey, self.rgb) {
            (true, _) => Some(1),
            (_, true) => Some(3),
            _ => None,
        };
        if let (Some([height, width]), Some(channels)) = (size, channels) {
            return Ok(Some(Shape::new(channels, height, width)));
        }
        let first = cnn::data::folder::probe_shape(dir)?;
        let [height, width] = size.unwrap_or([first.height, first.width]);
        Ok(Some(Shape::new(
            channels.unwrap_or(first.channels),
            height,
            width,
        )))
    }

    /// The model file to write.
    fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("xo.safetensors"))
    }
}

/// `HxW` or one number (a square), each side 1 to 4096.
fn parse_size(text: &str) -> Result<[usize; 2]> {
    let sides: Option<Vec<usize>> = text.split('x').map(|s| s.trim().parse().ok()).collect();
    match sides.as_deref() {
        Some(&[side]) if (1..=4096).contains(&side) => Ok([side, side]),
        Some(&[height, width]) if (1..=4096).contains(&height) && (1..=4096).contains(&width) => {
            Ok([height, width])
        }
        _ => usage_error(format!(
            "--size {text}: give HxW (e.g. 28x28) or one side, each 1 to 4096 pixels"
        )),
    }
}

fn check_warmup(config: &TrainConfig) -> Result<()> {
    if config.warmup_epochs > config.epochs {
        return usage_error(format!(
            "--warmup {} is longer than the {} epochs",
            config.warmup_epochs, config.epochs
        ));
    }
    Ok(())
}

impl OptimizerName {
    fn label(self) -> &'static str {
        match self {
            OptimizerName::Sgd => "sgd",
            OptimizerName::Adam => "adam",
            OptimizerName::Adamw => "adamw",
        }
    }
}

impl ScheduleName {
    fn label(self) -> &'static str {
        match self {
            ScheduleName::Constant => "constant",
            ScheduleName::Step => "step",
            ScheduleName::Cosine => "cosine",
        }
    }
}

/// What a checkpoint stores as its settings: the arguments (to load the same data), the
/// resolved configuration, and the epochs so far (for the model's training record).
#[derive(Serialize, Deserialize)]
struct Settings {
    args: TrainArgs,
    config: TrainConfig,
    #[serde(default)]
    history: Vec<EpochSummary>,
}

/// The flags given on the command line, by their ids (arguments only: the matches also hold
/// the group clap makes of the struct).
fn given(matches: &ArgMatches) -> impl Iterator<Item = &str> {
    let command = crate::Cli::command();
    let arguments: Vec<String> = command
        .find_subcommand("train")
        .into_iter()
        .flat_map(|train| train.get_arguments())
        .map(|argument| argument.get_id().to_string())
        .collect();
    matches
        .ids()
        .map(|id| id.as_str())
        .filter(move |id| arguments.iter().any(|a| a == id))
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
}

/// The arguments and configuration of a resumed run: the checkpoint's, with the flags a resume
/// may change applied. Flags it cannot change are refused, by name.
fn resumed_settings(
    args: &TrainArgs,
    matches: &ArgMatches,
    path: &Path,
    settings: Settings,
    state: &TrainState,
) -> Result<(TrainArgs, TrainConfig, Vec<EpochSummary>)> {
    let refused: Vec<String> = given(matches)
        .filter(|id| !RESUMABLE.contains(id) && !GLOBAL.contains(id))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    if !refused.is_empty() {
        return usage_error(format!(
            "--resume continues a run with the settings it started with, so it cannot take {} \
             (it takes --epochs to extend the run, --out, --log, --plot and --no-plot)",
            refused.join(", ")
        ));
    }
    let Settings {
        args: mut stored,
        mut config,
        history,
    } = settings;
    stored.resume = None;
    // The checkpoint holds the network: the model it started from is not read again.
    stored.init = None;
    stored.stop_after = args.stop_after;
    // Where the run writes is the user's choice, never the checkpoint's: a checkpoint from
    // someone else could otherwise write and append anywhere.
    stored.out = Some(args.out.clone().unwrap_or_else(|| model_beside(path)));
    stored.log = args.log.clone();
    stored.plot = args.plot.clone();
    stored.no_plot = args.no_plot;
    let done = state.epoch;
    match args.epochs {
        Some(epochs) if epochs <= done => bail!(
            "--epochs {epochs}: the run in {} has done {done} epochs; give more to extend it",
            path.display()
        ),
        Some(epochs) => {
            config.epochs = epochs;
            stored.epochs = Some(epochs);
            check_warmup(&config)?;
        }
        None if done >= config.epochs => bail!(
            "the run in {} has finished its {} epochs; give --epochs N (more than {done}) to \
             extend it",
            path.display(),
            config.epochs
        ),
        None => {}
    }
    if let (Some(patience), Some(best)) = (config.patience, &state.best) {
        if done - best.epoch >= patience {
            bail!(
                "the run in {} stopped early after epoch {done}: the held-out accuracy had not \
                 improved for {patience} epochs (since epoch {})",
                path.display(),
                best.epoch
            );
        }
    }
    Ok((stored, config, history))
}

pub fn run(args: TrainArgs, matches: &ArgMatches, global: Global) -> Result<()> {
    let quiet = global.quiet;
    let (args, config, history, resumed) = match &args.resume {
        Some(path) => {
            let checkpoint = checkpoint::load(path)?;
            let settings = stored_settings(path, &checkpoint.settings)?;
            let (stored, config, history) =
                resumed_settings(&args, matches, path, settings, &checkpoint.state)?;
            (stored, config, history, Some(checkpoint))
        }
        None => {
            let data = DataSpec::parse(&args.data).map_err(|e| UsageError(e.to_string()))?;
            let config = args.config(&data)?;
            (args, config, Vec::new(), None)
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
    let init = args.init.as_deref().map(model_file::load).transpose()?;
    let shape = match (&resumed, &init) {
        (Some(checkpoint), _) => Some(checkpoint.model.network.input_shape()),
        (None, Some(model)) => Some(model.network.input_shape()),
        (None, None) => args.image_shape(&data)?,
    };
    let (train_set, validation_set, available) =
        data.load_training_as(args.seed, args.val_split, args.limit, shape)?;
    if let Some(limit) = args.limit {
        if limit > available {
            eprintln!(
                "warning: --limit {limit}: {} has only {available} training images; training on \
                 all of them",
                data.to_arg()
            );
        }
    }
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
        None if init.is_some() => {
            let model = init.expect("checked");
            let network = initial_network(model, &args, train_set.classes())?;
            let notation = crate::arch_arg::describe(&network.architecture(), None);
            (notation, network, data.preprocessing(&train_set), None)
        }
        None => {
            let (notation, layers) =
                crate::arch_arg::resolve(&args.arch, train_set.classes().len())?;
            let mut network = Network::new(&layers, train_set.shape())?;
            network.init_kaiming(&mut seeded(args.seed, Stream::WeightInit));
            (notation, network, data.preprocessing(&train_set), None)
        }
    };
    let held_out = validation_set.as_ref().map_or(0, Dataset::len);
    let train_images = train_set.len();
    if !quiet {
        println!(
            "training {notation} on {}: {}, {} threads",
            data.to_arg(),
            describe_split(&data, &args, available, train_set.len(), held_out),
            global.threads
        );
        println!("settings: {}", describe(&config));
        if let Some(state) = &state {
            println!("resuming after epoch {} of {}", state.epoch, config.epochs);
        }
        super::print_summary(&network.summary(), network.input_shape());
    }

    let data_arg = data.to_arg();
    let mut observer = Observer {
        progress: ProgressReporter::new(config.epochs, quiet),
        log: args.log.clone(),
        checkpoint: checkpoint_path.clone(),
        classes: train_set.classes().to_vec(),
        preprocessing: preprocessing.clone(),
        data: data_arg.clone(),
        settings: Settings {
            args: args.clone(),
            config: config.clone(),
            history,
        },
        stop_after: args.stop_after,
        last_state: state.clone(),
        stopped_early: false,
        quiet,
    };
    train_from(
        &mut network,
        &preprocessing,
        &train_set,
        validation_set.as_ref(),
        &config,
        state,
        &mut observer,
    )?;
    let history = observer.settings.history.clone();
    let last_epoch = history.last().map_or(0, |e| e.epoch);
    let kept_epoch = match (&observer.last_state, config.save_best) {
        (
            Some(TrainState {
                best: Some(best), ..
            }),
            true,
        ) => best.epoch,
        _ => last_epoch,
    };
    if config.save_best && !quiet {
        println!("kept the network of epoch {kept_epoch}, the best on the held-out images");
    }
    let mut model = Model::new(network, train_set.classes().to_vec(), preprocessing)?;
    drop(train_set);
    // The test split is measured before the model is written, so that the file records it;
    // a data set without one (a folder with no test/) is no reason to lose the model.
    // A test split of other classes is an error, reported once the model is saved.
    let mut test_problem = None;
    let test = match data.load_test_as(args.seed, Some(model.network.input_shape())) {
        Ok(test) => match super::check_same_classes(&model.classes, test.classes()) {
            Err(e) => {
                test_problem = Some(e);
                None
            }
            Ok(()) => match evaluate(&model.network, &model.preprocessing, &test, 256) {
                Ok(result) => Some(result),
                Err(e) => {
                    eprintln!("warning: no test evaluation: {}", one_line(&e.to_string()));
                    None
                }
            },
        },
        Err(e) => {
            if !quiet {
                println!("no test evaluation: {}", one_line(&e.to_string()));
            }
            None
        }
    };
    let record = TrainingRecord {
        cnn_version: env!("CARGO_PKG_VERSION").to_string(),
        data: data_arg.clone(),
        limit: args.limit,
        val_split: args.val_split,
        train_images,
        held_out_images: held_out,
        arch: notation,
        settings: config.clone(),
        threads: global.threads,
        kept_epoch,
        last_epoch,
        stopped_early: observer.stopped_early,
        epochs: history.clone(),
        test: test.as_ref().map(|t| TestResult {
            images: t.images,
            accuracy: t.accuracy,
            loss: t.loss,
        }),
    };
    model.data = Some(data_arg);
    model.training = Some(serde_json::to_value(&record)?);
    model_file::save(&model, &out)
        .with_context(|| format!("cannot save the model to {}", out.display()))?;
    if !quiet {
        println!(
            "saved {} (checkpoint {})",
            out.display(),
            checkpoint_path.display()
        );
    }
    // After the model is saved: a plot that cannot be written does not lose the model.
    if !args.no_plot {
        let base = args
            .plot
            .clone()
            .unwrap_or_else(|| out.with_extension("training"));
        let (png, svg) = crate::plot::training_curves(&base, &history)
            .context("cannot draw the training curves")?;
        if !quiet {
            println!("training curves: {png}, {svg}");
        }
    }
    if let (Some(result), false) = (&test, quiet) {
        print_evaluation(
            result,
            &model.classes,
            &format!("test split of {}", data.to_arg()),
        );
    }
    match test_problem {
        Some(e) => Err(e.context("the final evaluation")),
        None => Ok(()),
    }
}

/// The training and held-out images in words whose numbers add up.
fn describe_split(
    data: &DataSpec,
    args: &TrainArgs,
    available: usize,
    training: usize,
    held_out: usize,
) -> String {
    let training_part = if training < available {
        format!("the first {training} of {available} training images (--limit)")
    } else {
        format!("{training} training images")
    };
    let held_out_part = match data {
        DataSpec::Xo { .. } => format!("{held_out} validation images generated apart"),
        _ if held_out > 0 => format!(
            "{held_out} held out for validation (--val-split {} of {} images)",
            args.val_split,
            available + held_out
        ),
        _ => "none held out".to_string(),
    };
    format!("{training_part}, {held_out_part}")
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
    // Not usage errors: the command line is fine, the file is not.
    let invalid = |e: anyhow::Error| {
        anyhow::anyhow!(
            "{}: the checkpoint's settings: {}",
            path.display(),
            crate::printable::one_line(&e.to_string())
        )
    };
    let data = DataSpec::parse(&settings.args.data).map_err(|e| invalid(e.into()))?;
    let config = settings.args.config(&data).map_err(invalid)?;
    if config != settings.config {
        bail!(
            "{}: the checkpoint's training settings are not those its arguments give",
            path.display()
        );
    }
    Ok(settings)
}

/// The network a run with --init starts from: the model's, or with --replace-head the model's
/// with its last dense layer made anew for `classes` (Kaiming-initialised from --seed).
fn initial_network(model: cnn::Model, args: &TrainArgs, classes: &[String]) -> Result<Network> {
    let path = args.init.as_deref().expect("--init given").display();
    if !args.replace_head {
        if model.classes.len() != classes.len() {
            bail!(
                "{path} has {} classes, the data {}: give --replace-head to train a new last \
                 layer for them",
                model.classes.len(),
                classes.len()
            );
        }
        return Ok(model.network);
    }
    let old = model.network;
    let mut architecture = old.architecture();
    let Some(head) = architecture
        .nodes
        .iter()
        .rposition(|n| matches!(n.op, cnn::LayerSpec::Dense(_)))
    else {
        bail!("--replace-head: {path} has no dense layer to replace");
    };
    if let cnn::LayerSpec::Dense(config) = &mut architecture.nodes[head].op {
        config.out_features = classes.len();
    }
    let mut network = Network::new(&architecture, old.input_shape())?;
    network.init_kaiming(&mut seeded(args.seed, Stream::WeightInit));
    for (index, (new, old)) in network.nodes_mut().iter_mut().zip(old.nodes()).enumerate() {
        if index == head {
            continue;
        }
        let layer = new.layer_mut();
        for (to, from) in layer.params_mut().iter_mut().zip(old.layer().params()) {
            to.value.clone_from(&from.value);
        }
        for (to, from) in layer.buffers_mut().iter_mut().zip(old.layer().buffers()) {
            to.value.clone_from(&from.value);
        }
    }
    Ok(network)
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

/// The optimizer in words: `Adam (beta1 0.9, beta2 0.999, epsilon 1e-8)`.
pub fn describe_optimizer(optimizer: &OptimizerConfig) -> String {
    match *optimizer {
        OptimizerConfig::Sgd {
            momentum,
            nesterov: false,
        } => format!("SGD (momentum {momentum})"),
        OptimizerConfig::Sgd { momentum, .. } => format!("SGD (Nesterov momentum {momentum})"),
        OptimizerConfig::Adam {
            beta1,
            beta2,
            epsilon,
        } => format!("Adam (beta1 {beta1}, beta2 {beta2}, epsilon {epsilon:e})"),
        OptimizerConfig::AdamW {
            beta1,
            beta2,
            epsilon,
        } => format!("AdamW (beta1 {beta1}, beta2 {beta2}, epsilon {epsilon:e})"),
    }
}

/// The schedule in words: `constant rate`, `cosine to 0`, `x0.1 every 10 epochs`.
pub fn describe_schedule(schedule: &Schedule) -> String {
    match *schedule {
        Schedule::Constant => "constant rate".into(),
        Schedule::Step { every, gamma } => format!("rate x{gamma} every {every} epochs"),
        Schedule::Cosine => "cosine schedule to 0".into(),
    }
}

/// The augmentation in words: `shift 2, flip, rotate 10 degrees` or `none`.
pub fn describe_augment(augment: &Augment) -> String {
    let mut parts = Vec::new();
    if augment.shift > 0 {
        parts.push(format!("shift up to {} px", augment.shift));
    }
    if augment.flip {
        parts.push("left-right flips".to_string());
    }
    if augment.rotate > 0.0 {
        parts.push(format!("rotation up to {} degrees", augment.rotate));
    }
    if augment.scale > 0.0 {
        parts.push(format!("zoom by up to {}", augment.scale));
    }
    if augment.noise > 0.0 {
        parts.push(format!("noise {}", augment.noise));
    }
    if augment.cutout > 0 {
        parts.push(format!("cutout {0}x{0}", augment.cutout));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

pub fn describe(config: &TrainConfig) -> String {
    let warmup = match config.warmup_epochs {
        0 => "no warm-up".to_string(),
        n => format!("{n} epochs of linear warm-up"),
    };
    let mut text = format!(
        "{} epochs, batch {}, {}, lr {}, weight decay {}, {}, {warmup}, augmentation: {}, seed {}",
        config.epochs,
        config.batch_size,
        describe_optimizer(&config.optimizer),
        config.learning_rate,
        config.weight_decay,
        describe_schedule(&config.schedule),
        describe_augment(&config.augment),
        config.seed
    );
    if config.label_smoothing > 0.0 {
        text.push_str(&format!(", label smoothing {}", config.label_smoothing));
    }
    if config.save_best {
        text.push_str(", keeping the best epoch");
    }
    if let Some(patience) = config.patience {
        text.push_str(&format!(
            ", stopping after {patience} epochs without progress"
        ));
    }
    text
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
    settings: Settings,
    stop_after: Option<usize>,
    /// The state of the last checkpoint (the best epoch, for --save-best).
    last_state: Option<TrainState>,
    stopped_early: bool,
    quiet: bool,
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
        self.settings.history.push(EpochSummary::from(report));
        if let Err(e) = self.append_log(report) {
            eprintln!("warning: {e:#}");
        }
    }

    fn stopped_early(&mut self, next_epoch: usize, best_epoch: usize) {
        self.stopped_early = true;
        if !self.quiet {
            println!(
                "stopped early before epoch {next_epoch}: no progress on the held-out images since \
                 epoch {best_epoch}"
            );
        }
    }

    fn checkpoint(&mut self, network: &Network, state: &TrainState) -> cnn::Result<()> {
        let parts = ModelParts {
            classes: &self.classes,
            preprocessing: &self.preprocessing,
            data: Some(&self.data),
        };
        let settings = serde_json::to_value(&self.settings)
            .map_err(|e| cnn::Error::Invalid(format!("cannot describe the settings: {e}")))?;
        checkpoint::save(&self.checkpoint, network, &parts, state, &settings)?;
        self.last_state = Some(state.clone());
        if self.stop_after == Some(state.epoch) {
            if !self.quiet {
                println!("stopped after epoch {}", state.epoch);
            }
            std::process::exit(0);
        }
        Ok(())
    }
}
