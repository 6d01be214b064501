use crate::progress::ProgressReporter;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use cnn::data::DataSpec;
use cnn::optim::OptimizerConfig;
use cnn::rng::{seeded, Stream};
use cnn::train::{train, TrainConfig};
use cnn::{model_file, Model, Network};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OptimizerName {
    Sgd,
    Adam,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Data set: `xo` (built-in X/O letters, 28x28) or `xo:SIZE`.
    #[arg(long, default_value = "xo")]
    data: String,
    /// Architecture: a preset (xo, lenet5, cnn4), a file, or layers in the text notation.
    #[arg(long, default_value = "xo")]
    arch: String,
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Images per mini-batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Learning rate (default: 0.001 for adam, 0.01 for sgd).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerName,
    /// Momentum for sgd.
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    momentum: f32,
    /// Fixes the data, the initial weights and the order of the data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the model.
    #[arg(long, default_value = "xo.safetensors")]
    out: PathBuf,
    /// No progress bar or per-epoch lines.
    #[arg(long)]
    quiet: bool,
    /// Where to draw the loss and accuracy curves: PATH.png and PATH.svg (default: beside the
    /// model, `<out>.training.png` and `.svg` with the model's extension dropped).
    #[arg(long, conflicts_with = "no_plot")]
    plot: Option<PathBuf>,
    /// Do not draw the training curves.
    #[arg(long)]
    no_plot: bool,
}

pub fn run(args: TrainArgs, threads: usize) -> Result<()> {
    let data = DataSpec::parse(&args.data)?;
    let (optimizer, default_lr) = match args.optimizer {
        OptimizerName::Sgd => (
            OptimizerConfig::Sgd {
                momentum: args.momentum,
            },
            0.01,
        ),
        OptimizerName::Adam => (OptimizerConfig::adam(), 0.001),
    };
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch,
        learning_rate: args.lr.unwrap_or(default_lr),
        optimizer,
        seed: args.seed,
    };
    config.validate()?;
    if !(0.0..1.0).contains(&args.momentum) {
        anyhow::bail!("--momentum must be in [0, 1), not {}", args.momentum);
    }
    let (train_set, validation_set) = data.load_training(args.seed)?;
    let (notation, layers) = crate::arch_arg::resolve(&args.arch, train_set.classes().len())?;
    let mut network = Network::new(&layers, train_set.shape())?;
    println!(
        "training {notation} on {} ({} images, {} held out), {threads} threads",
        data.to_arg(),
        train_set.len(),
        validation_set.len()
    );
    super::print_summary(&network.summary(), network.input_shape());
    network.init_kaiming(&mut seeded(args.seed, Stream::WeightInit));

    let preprocessing = data.preprocessing();
    let mut reporter = ProgressReporter::new(config.epochs, args.quiet);
    let reports = train(
        &mut network,
        &preprocessing,
        &train_set,
        Some(&validation_set),
        &config,
        &mut reporter,
    )?;
    let mut model = Model::new(network, train_set.classes().to_vec(), preprocessing)?;
    model.data = Some(data.to_arg());
    model_file::save(&model, &args.out)
        .with_context(|| format!("cannot save the model to {}", args.out.display()))?;
    let last = reports.last().and_then(|r| r.validation.as_ref());
    println!(
        "saved {}{}",
        args.out.display(),
        last.map_or(String::new(), |v| format!(
            " (validation accuracy {:.2}%)",
            100.0 * v.accuracy
        ))
    );
    // After the model is saved: a plot that cannot be written does not lose the model.
    if !args.no_plot {
        let base = args
            .plot
            .clone()
            .unwrap_or_else(|| args.out.with_extension("training"));
        let (png, svg) = crate::plot::training_curves(&base, &reports)
            .context("cannot draw the training curves")?;
        if !args.quiet {
            println!("training curves: {png}, {svg}");
        }
    }
    Ok(())
}
