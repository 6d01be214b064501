//! `cnn run`: a model on raw tensors (NumPy `.npy`), no preprocessing, to compare its outputs
//! with other runtimes'.

use crate::npy;
use anyhow::Result;
use clap::Args;
use cnn::onnx::import::Layout;
use cnn::{model_file, onnx, Workspace};
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    /// Model file (safetensors or ONNX).
    #[arg(long)]
    model: PathBuf,
    /// Input tensor, float32 `.npy`: `[N, C, H, W]` (`[N, F]` for a network of features, and
    /// for an ONNX file the rank its input has: `[N, C, L]` too).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the output tensor, float32 `.npy`.
    #[arg(long)]
    output: PathBuf,
}

pub fn run(args: RunArgs, _global: crate::Global) -> Result<()> {
    let (network, input_layout, output_layout, softmax) = if model_file::is_onnx(&args.model) {
        let imported = onnx::import::load_network(&args.model)?;
        (
            imported.network,
            Some(imported.input_layout),
            imported.output_layout,
            imported.ends_in_softmax,
        )
    } else {
        let network = model_file::load(&args.model)?.network;
        (network, None, Layout::Features, false)
    };
    let shape = network.input_shape();
    // A `cnn` model takes `[N, C, H, W]`, or `[N, F]` when its input is features.
    let accepted = match input_layout {
        Some(layout) => vec![layout.dims(shape)],
        None if shape.is_flat() => vec![Layout::Features.dims(shape), Layout::Maps.dims(shape)],
        None => vec![Layout::Maps.dims(shape)],
    };
    let input = npy::read(&args.input, shape, &accepted)?;
    let mut workspace = Workspace::new();
    let output = network.infer(&input, &mut workspace)?;
    let shape = network.output_shape();
    let mut values = output.data().to_vec();
    if softmax {
        for row in values.chunks_mut(shape.len()) {
            let logits = row.to_vec();
            cnn::loss::softmax(&logits, row);
        }
    }
    let dims: Vec<u64> = std::iter::once(output.batch())
        .chain(output_layout.dims(shape))
        .map(|d| d as u64)
        .collect();
    npy::write(&args.output, &dims, &values)
}
