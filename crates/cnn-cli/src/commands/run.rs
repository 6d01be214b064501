//! `cnn run`: a model on raw tensors (NumPy `.npy`), no preprocessing, to compare its outputs
//! with other runtimes'.

use crate::npy;
use anyhow::Result;
use clap::Args;
use cnn::{model_file, onnx, Workspace};
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    /// Model file (safetensors or ONNX).
    #[arg(long)]
    model: PathBuf,
    /// Input tensor, float32 `.npy`: `[N, C, H, W]` (or `[N, F]` for a network of features).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the output tensor, float32 `.npy`.
    #[arg(long)]
    output: PathBuf,
}

pub fn run(args: RunArgs, _global: crate::Global) -> Result<()> {
    let (network, output_is_maps, softmax) = if model_file::is_onnx(&args.model) {
        let imported = onnx::import::load_network(&args.model)?;
        (
            imported.network,
            imported.output_is_maps,
            imported.ends_in_softmax,
        )
    } else {
        (model_file::load(&args.model)?.network, false, false)
    };
    let input = npy::read(&args.input, network.input_shape())?;
    let mut workspace = Workspace::new();
    let output = network.infer(&input, &mut workspace)?;
    let shape = network.output_shape();
    let batch = output.batch();
    let mut values = output.data().to_vec();
    if softmax {
        for row in values.chunks_mut(shape.len()) {
            let logits = row.to_vec();
            cnn::loss::softmax(&logits, row);
        }
    }
    let dims: Vec<u64> = if output_is_maps {
        vec![batch, shape.channels, shape.height, shape.width]
    } else {
        vec![batch, shape.len()]
    }
    .into_iter()
    .map(|d| d as u64)
    .collect();
    npy::write(&args.output, &dims, &values)
}
