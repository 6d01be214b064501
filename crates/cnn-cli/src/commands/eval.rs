use anyhow::{bail, Context, Result};
use clap::Args;
use cnn::data::DataSpec;
use cnn::model_file;
use cnn::train::evaluate;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// Model file (safetensors) written by `cnn train`.
    #[arg(long)]
    model: PathBuf,
    /// Data set whose test split to use (default: the one the model was trained on).
    #[arg(long)]
    data: Option<String>,
    /// Seed of the generated test set (built-in X/O data).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw the confusion matrix with class names into FILE (.svg for SVG, else PNG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub fn run(args: EvalArgs, global: crate::Global) -> Result<()> {
    let model = model_file::load(&args.model)?;
    let spec = match (&args.data, &model.data) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => bail!("the model does not say what it was trained on: give --data"),
    };
    let data = DataSpec::parse(&spec)?;
    let test = data.load_test_as(args.seed, Some(model.network.input_shape()))?;
    super::check_same_classes(&model.classes, test.classes())?;
    if test.shape() != model.network.input_shape() {
        bail!(
            "the model takes {} images, {} has {}",
            model.network.input_shape(),
            spec,
            test.shape()
        );
    }
    let result = evaluate(&model.network, &model.preprocessing, &test, 256)?;
    if let Some(path) = &args.plot {
        crate::plot::confusion_matrix(path, &model.classes, &result.confusion)
            .context("cannot draw the confusion matrix")?;
    }
    if args.json {
        let json = serde_json::json!({
            "model": args.model,
            "data": spec,
            "images": result.images,
            "accuracy": result.accuracy,
            "loss": result.loss,
            "classes": model.classes,
            "per_class_accuracy": result.per_class_accuracy(),
            "confusion": result.confusion,
        });
        println!("{json}");
        return Ok(());
    }
    print!("{}: ", args.model.display());
    super::train::print_evaluation(&result, &model.classes, &format!("test split of {spec}"));
    if let (Some(path), false) = (&args.plot, global.quiet) {
        println!("confusion matrix drawn in {}", path.display());
    }
    Ok(())
}
