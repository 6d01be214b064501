//! `cnn export`: a model for other runtimes, as an ONNX file.

use anyhow::{bail, Result};
use clap::Args;
use cnn::{model_file, onnx};
use std::path::PathBuf;

#[derive(Args)]
pub struct ExportArgs {
    /// Model file (safetensors, or ONNX) to export.
    #[arg(long)]
    model: PathBuf,
    /// Write an ONNX file (opset 17, any batch size, parameters named as the state dict
    /// names them); the input is the prepared image, as `cnn run` takes it.
    #[arg(long, value_name = "OUT.onnx")]
    onnx: Option<PathBuf>,
    /// Give the class probabilities as a second output, `probabilities`, beside `logits`.
    #[arg(long, requires = "onnx")]
    softmax: bool,
    /// Write PyTorch source: an `nn.Module` whose state_dict loads the model file with
    /// `strict=True`, and `save_for_cnn` to bring trained weights back.
    #[arg(long, value_name = "OUT.py")]
    pytorch: Option<PathBuf>,
}

pub fn run(args: ExportArgs, global: crate::Global) -> Result<()> {
    if args.onnx.is_none() && args.pytorch.is_none() {
        bail!("nothing to export to: give --onnx OUT.onnx, --pytorch OUT.py or both");
    }
    let model = model_file::load(&args.model)?;
    if let Some(out) = &args.pytorch {
        cnn::pytorch::save(&model, out)?;
        if !global.quiet {
            eprintln!("wrote {} (PyTorch module `Net`)", out.display());
        }
    }
    let Some(out) = &args.onnx else {
        return Ok(());
    };
    let options = onnx::ExportOptions {
        softmax: args.softmax,
    };
    onnx::save(&model, out, options)?;
    if !global.quiet {
        eprintln!(
            "wrote {} (ONNX opset {}, input `input` [batch, {}], output `{}`{})",
            out.display(),
            onnx::OPSET,
            model.network.input_shape().to_string().replace('x', ", "),
            onnx::LOGITS,
            if args.softmax {
                format!(" and `{}`", onnx::PROBABILITIES)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
