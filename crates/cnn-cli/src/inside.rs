//! What a model computed for one picture, layer by layer: shared by `cnn explain --model` and
//! `cnn serve`.

use anyhow::Result;
use cnn::network::{LayerSummary, Workspace};
use cnn::{Model, Prediction, Shape, Tensor};
use image::DynamicImage;
use serde::Serialize;

/// One layer's summary line and its output for the picture: `maps[channel][row][column]`.
#[derive(Clone, Debug, Serialize)]
pub struct LayerView {
    #[serde(flatten)]
    pub summary: LayerSummary,
    pub maps: Vec<Vec<Vec<f32>>>,
}

/// A picture run through a model: the prepared input, the prediction, and every layer.
pub struct Inside {
    pub input: Tensor,
    pub prediction: Prediction,
    pub layers: Vec<LayerView>,
}

/// A tensor's first sample as `maps[channel][row][column]`.
pub fn maps_of(tensor: &Tensor) -> Vec<Vec<Vec<f32>>> {
    let Shape {
        channels, width, ..
    } = tensor.shape();
    (0..channels)
        .map(|c| {
            tensor
                .plane(0, c)
                .chunks(width.max(1))
                .map(<[f32]>::to_vec)
                .collect()
        })
        .collect()
}

/// Runs `picture` through `model`, keeping every layer's output.
pub fn look_inside(
    model: &Model,
    picture: &DynamicImage,
    workspace: &mut Workspace,
) -> Result<Inside> {
    let input = model.input_from_picture(picture)?;
    let prediction = model.predict_traced(&input, workspace)?.remove(0);
    let layers = model
        .network
        .summary()
        .into_iter()
        .zip(workspace.activations())
        .map(|(summary, output)| LayerView {
            summary,
            maps: maps_of(output),
        })
        .collect();
    Ok(Inside {
        input,
        prediction,
        layers,
    })
}

/// The summary line printed and shown for a layer: `3 maxpool 2  8x28x28 -> 8x14x14  0 params
/// 6272 FLOPs`.
pub fn summary_line(summary: &LayerSummary) -> String {
    format!(
        "{} {}  {} -> {}  {} params  {} FLOPs",
        summary.index, summary.layer, summary.input, summary.output, summary.params, summary.flops
    )
}

/// Classes by probability, highest first.
pub fn ranked(classes: &[String], probabilities: &[f32]) -> Vec<(String, f32)> {
    let mut ranked: Vec<(String, f32)> = classes
        .iter()
        .cloned()
        .zip(probabilities.iter().copied())
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
}
