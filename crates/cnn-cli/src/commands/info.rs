//! `cnn info MODEL`: what a model file holds and how it was made, from its metadata alone.

use crate::record::TrainingRecord;
use anyhow::{Context, Result};
use clap::Args;
use cnn::model_file;
use cnn::preprocess::{Background, Fit, Inversion, Preprocessing};
use std::path::PathBuf;

#[derive(Args)]
pub struct InfoArgs {
    /// Model file (safetensors) written by `cnn train`.
    model: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let bytes = std::fs::metadata(&args.model)
        .map_err(|e| cnn::Error::io(&args.model, e))?
        .len();
    let model = model_file::load(&args.model)?;
    let network = &model.network;
    let params = network.param_count();
    let shape = network.input_shape();
    let record: Option<TrainingRecord> = model
        .training
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .with_context(|| {
            format!(
                "{}: its training record is not one this version reads",
                args.model.display()
            )
        })?;
    if args.json {
        let json = serde_json::json!({
            "file": args.model,
            "bytes": bytes,
            "format": model_file::FORMAT,
            "input_shape": [shape.channels, shape.height, shape.width],
            "classes": model.classes,
            "notation": cnn::arch::to_notation(&network.architecture()),
            "architecture": model_file::architecture_to_json(&network.architecture())?,
            "layers": network.summary(),
            "params": params,
            "param_bytes": 4 * params,
            "flops_per_image": network.flops_per_image(),
            "preprocessing": model.preprocessing,
            "data": model.data,
            "training": model.training,
        });
        println!("{json}");
        return Ok(());
    }
    let colour = match shape.channels {
        1 => " (grey)",
        3 => " (RGB)",
        _ => "",
    };
    println!(
        "{} ({bytes} bytes, {})",
        args.model.display(),
        model_file::FORMAT
    );
    println!("input: {shape}{colour}");
    println!(
        "classes ({}): {}",
        model.classes.len(),
        model.classes.join(", ")
    );
    super::print_summary(&network.summary(), shape);
    println!(
        "parameters: {params} ({:.1} KiB as f32), {} FLOPs per image",
        4.0 * params as f64 / 1024.0,
        network.flops_per_image()
    );
    println!(
        "preprocessing: {}",
        describe_preprocessing(&model.preprocessing)
    );
    match (&record, &model.data) {
        (Some(record), _) => print_record(record),
        (None, Some(data)) => println!("trained on: {data} (no training record: an older file)"),
        (None, None) => println!("trained on: not recorded"),
    }
    Ok(())
}

fn print_record(record: &TrainingRecord) {
    let limit = record
        .limit
        .map_or(String::new(), |n| format!(", --limit {n}"));
    println!(
        "trained on: {} ({} training images, {} held out{limit})",
        record.data, record.train_images, record.held_out_images
    );
    println!("settings: {}", super::train::describe(&record.settings));
    let stopped = if record.stopped_early {
        " (stopped early)"
    } else {
        ""
    };
    println!(
        "epochs: {} of {} trained{stopped}; the file holds epoch {}",
        record.last_epoch, record.settings.epochs, record.kept_epoch
    );
    if let Some(kept) = record.kept() {
        let held_out = match (kept.validation_accuracy, kept.validation_loss) {
            (Some(accuracy), Some(loss)) => {
                format!(", held out {:.2}% (loss {loss:.4})", 100.0 * accuracy)
            }
            _ => String::new(),
        };
        println!(
            "results of epoch {}: training {:.2}% (loss {:.4}){held_out}",
            kept.epoch,
            100.0 * kept.train_accuracy,
            kept.train_loss
        );
    }
    if let Some(test) = &record.test {
        println!(
            "test split: {:.2}% of {} images (loss {:.4})",
            100.0 * test.accuracy,
            test.images,
            test.loss
        );
    }
    println!(
        "seed {}, {} threads, cnn {}",
        record.settings.seed, record.threads, record.cnn_version
    );
}

/// The preprocessing in words, every rule named.
fn describe_preprocessing(p: &Preprocessing) -> String {
    let normalise: Vec<String> = p
        .mean
        .iter()
        .zip(&p.std)
        .map(|(m, s)| format!("(x/255 - {m:.4}) / {s:.4}"))
        .collect();
    let inversion = match p.inversion {
        Inversion::BorderMean => "the border's mean grey level",
        Inversion::MedianVsExtremes => "the median against the 0.5th and 99.5th percentiles",
    };
    let polarity = match p.background {
        Background::Dark => {
            format!("dark background: a light one is inverted (judged by {inversion})")
        }
        Background::Light => {
            format!("light background: a dark one is inverted (judged by {inversion})")
        }
        Background::Any => "taken as it is (no inversion)".into(),
    };
    let contrast = if p.autocontrast {
        format!(
            "autocontrast ignoring {}% at each end",
            100.0 * p.autocontrast_cutoff
        )
    } else {
        "no autocontrast".into()
    };
    let fit = match p.fit {
        Fit::Stretch => "stretched",
        Fit::Letterbox => "letterboxed",
    };
    format!(
        "{polarity}; resized ({fit}, triangle filter); {contrast}; {}; grey = (2126 R + 7152 G + \
         722 B) / 10000; transparency composited onto white or black, whichever contrasts",
        normalise.join(", ")
    )
}
