use anyhow::{bail, Context, Result};
use clap::Args;
use cnn::data::DataSpec;
use cnn::model_file;
use cnn::train::evaluate;
use std::path::{Path, PathBuf};

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
    /// Also write the model's mistakes into DIR as web pages: the confusion matrix, each cell
    /// a link to its images sorted by loss with their probabilities and a Grad-CAM overlay,
    /// and the most confident mistakes (open DIR/index.html).
    #[arg(long, value_name = "DIR")]
    gallery: Option<PathBuf>,
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
    if let Some(dir) = &args.gallery {
        let files = crate::gallery::build(
            &model,
            &test,
            &format!("{} on the test split of {spec}", args.model.display()),
        )?;
        write_gallery(dir, &files)
            .with_context(|| format!("cannot write the gallery to {}", dir.display()))?;
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
    if let (Some(dir), false) = (&args.gallery, global.quiet) {
        println!("the mistakes are in {}", dir.join("index.html").display());
    }
    Ok(())
}

fn write_gallery(dir: &Path, files: &[crate::gallery::File]) -> Result<()> {
    std::fs::create_dir_all(dir.join("images"))?;
    for file in files {
        cnn::fsutil::write_atomically(&dir.join(&file.path), &file.bytes)?;
    }
    Ok(())
}
