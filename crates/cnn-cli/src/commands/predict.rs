use crate::printable::{escaped, one_line};
use anyhow::Result;
use clap::Args;
use cnn::model_file;
use cnn::network::Workspace;
use cnn::preprocess::read_picture;
use std::path::PathBuf;

#[derive(Args)]
pub struct PredictArgs {
    /// Model file (safetensors) written by `cnn train`.
    #[arg(long)]
    model: PathBuf,
    /// One JSON object per image and line.
    #[arg(long)]
    json: bool,
    /// Image files (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM), any size.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let model = model_file::load(&args.model)?;
    let mut workspace = Workspace::new();
    let mut failures = 0;
    for path in &args.images {
        let prediction =
            read_picture(path).and_then(|picture| model.classify_picture(&picture, &mut workspace));
        match prediction {
            Ok(p) if args.json => {
                let probabilities: serde_json::Map<String, serde_json::Value> = model
                    .classes
                    .iter()
                    .zip(&p.probabilities)
                    .map(|(c, &v)| (c.clone(), v.into()))
                    .collect();
                let line = serde_json::json!({
                    "file": path,
                    "class": p.class,
                    "probability": p.probability,
                    "probabilities": probabilities,
                    "logits": p.logits,
                });
                println!("{line}");
            }
            Ok(p) => println!(
                "{}: {} ({:.1}%)",
                escaped(&path.display().to_string()),
                escaped(&p.class),
                100.0 * p.probability
            ),
            Err(e) => {
                eprintln!("error: {}", one_line(&e.to_string()));
                failures += 1;
            }
        }
    }
    if failures > 0 {
        // Each failure has been reported on its own line; the exit code says some failed.
        std::process::exit(1);
    }
    Ok(())
}
