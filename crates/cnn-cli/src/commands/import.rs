//! `cnn import`: an ONNX model, or weights trained elsewhere (`save_for_cnn` of `cnn export
//! --pytorch`), as a checked model file of this engine.

use anyhow::{bail, Result};
use clap::Args;
use cnn::onnx::ImportOptions;
use cnn::preprocess::Preprocessing;
use cnn::{model_file, onnx};
use std::path::PathBuf;

#[derive(Args)]
pub struct ImportArgs {
    /// ONNX file of an image classifier (one input, [N, C, H, W] float32; one output, a score
    /// per class), or a safetensors model file (as `save_for_cnn` writes them).
    model: PathBuf,
    /// Model file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// The class names, comma-separated (default: those the file records, else 0, 1, 2...).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// How pictures become the network's input: `none` (pixel / 255), `imagenet`
    /// (torchvision's means and deviations), or `MEAN,...:STD,...` per channel (default: what
    /// the file records, else `none`).
    #[arg(long, value_name = "SPEC")]
    preprocessing: Option<String>,
}

pub fn run(args: ImportArgs, global: crate::Global) -> Result<()> {
    let model = if model_file::is_onnx(&args.model) {
        let imported = onnx::import::load_network(&args.model)?;
        let channels = imported.network.input_shape().channels;
        let options = ImportOptions {
            classes: args.classes.clone(),
            preprocessing: args
                .preprocessing
                .as_deref()
                .map(|spec| parse_preprocessing(spec, channels))
                .transpose()?,
        };
        imported
            .into_model(&options)
            .map_err(|message| cnn::Error::file(&args.model, message))?
    } else {
        let mut model = model_file::load(&args.model)?;
        if let Some(classes) = &args.classes {
            model = cnn::Model::new(model.network, classes.clone(), model.preprocessing)?;
        }
        if let Some(spec) = &args.preprocessing {
            let channels = model.network.input_shape().channels;
            model.preprocessing = parse_preprocessing(spec, channels)?;
        }
        model
    };
    model_file::save(&model, &args.out)?;
    if !global.quiet {
        eprintln!(
            "wrote {} ({} nodes, {} parameters, {} classes)",
            args.out.display(),
            model.network.nodes().len(),
            model.network.param_count(),
            model.classes.len()
        );
    }
    Ok(())
}

fn parse_preprocessing(spec: &str, channels: usize) -> Result<Preprocessing> {
    let numbers = |text: &str| -> Result<Vec<f32>> {
        text.split(',')
            .map(|n| {
                n.trim()
                    .parse::<f32>()
                    .map_err(|_| anyhow::anyhow!("--preprocessing: `{n}` is not a number"))
            })
            .collect()
    };
    let (mean, std) = match spec {
        "none" => (vec![0.0; channels], vec![1.0; channels]),
        "imagenet" => (vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225]),
        _ => match spec.split_once(':') {
            Some((mean, std)) => (numbers(mean)?, numbers(std)?),
            None => {
                bail!("--preprocessing: expected none, imagenet or MEAN,...:STD,..., got `{spec}`")
            }
        },
    };
    let mut preprocessing = Preprocessing::identity(channels);
    preprocessing.mean = mean;
    preprocessing.std = std;
    preprocessing.validate(cnn::Shape::new(channels, 1, 1))?;
    Ok(preprocessing)
}
