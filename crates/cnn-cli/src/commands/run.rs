//! `cnn run`: a model on raw tensors (NumPy `.npy`), no preprocessing, to compare its outputs
//! with other runtimes'.

use crate::npy;
use anyhow::{Context, Result};
use clap::Args;
use cnn::onnx::import::{Layout, Output};
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
    /// Where to write the output tensor, float32 `.npy`; for a model of several outputs, a
    /// folder, which gets one `<output name>.npy` per output.
    #[arg(long)]
    output: PathBuf,
}

pub fn run(args: RunArgs, _global: crate::Global) -> Result<()> {
    let (network, input_layout, outputs) = if model_file::is_onnx(&args.model) {
        let imported = onnx::import::load_network(&args.model)?;
        (
            imported.network,
            Some(imported.input_layout),
            imported.outputs,
        )
    } else {
        let network = model_file::load(&args.model)?.network;
        let outputs = network
            .output_names()
            .into_iter()
            .map(|name| {
                let node = network.find_node(name).expect("an output is a node");
                let flat = network.nodes()[node].layer().output_shape().is_flat();
                Output {
                    name: name.to_string(),
                    node: name.to_string(),
                    layout: if flat { Layout::Features } else { Layout::Maps },
                    softmax: false,
                }
            })
            .collect();
        (network, None, outputs)
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
    let tensors = network.infer_outputs(&input, &mut workspace)?;
    let names = network.output_names();
    let files = match outputs.as_slice() {
        [_] => vec![args.output.clone()],
        _ => {
            std::fs::create_dir_all(&args.output)
                .with_context(|| format!("cannot create the folder {}", args.output.display()))?;
            file_names(&outputs)
                .into_iter()
                .map(|name| args.output.join(name))
                .collect()
        }
    };
    for (output, file) in outputs.iter().zip(&files) {
        let k = names
            .iter()
            .position(|n| *n == output.node)
            .expect("an output");
        let tensor = tensors[k];
        let mut values = tensor.data().to_vec();
        if output.softmax {
            for row in values.chunks_mut(tensor.shape().len()) {
                let logits = row.to_vec();
                cnn::loss::softmax(&logits, row);
            }
        }
        let dims: Vec<u64> = std::iter::once(tensor.batch())
            .chain(output.layout.dims(tensor.shape()))
            .map(|d| d as u64)
            .collect();
        npy::write(file, &dims, &values)?;
        if files.len() > 1 {
            println!("{}: {dims:?} -> {}", output.name, file.display());
        }
    }
    Ok(())
}

/// A file name for each output: its name with what a file name cannot hold replaced, made
/// unique.
fn file_names(outputs: &[Output]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(outputs.len());
    for output in outputs {
        let mut base: String = output
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if base.is_empty() || base.starts_with('.') {
            base.insert(0, '_');
        }
        let mut name = format!("{base}.npy");
        let mut k = 1;
        while names.contains(&name) {
            name = format!("{base}_{k}.npy");
            k += 1;
        }
        names.push(name);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_files_are_named_after_the_outputs_and_never_collide() {
        let output = |name: &str| Output {
            name: name.into(),
            node: "n".into(),
            layout: Layout::Features,
            softmax: false,
        };
        let outputs = [
            output("logits"),
            output("aux/out:0"),
            output("aux_out_0"),
            output(".."),
        ];
        assert_eq!(
            file_names(&outputs),
            ["logits.npy", "aux_out_0.npy", "aux_out_0_1.npy", "_...npy"]
        );
    }
}
