//! Attributions: which pixels of a picture made a network's score for a class. Four methods,
//! each a map over the input's `height x width`:
//! - Grad-CAM (Selvaraju et al. 2017): a layer's maps weighted by the mean gradient of the
//!   class score over each map, summed, ReLU, scaled up to the input bilinearly.
//! - Saliency (Simonyan et al. 2014): the largest |d score / d pixel| over the channels.
//! - Integrated gradients (Sundararajan et al. 2017): `(x - x0) * mean of the gradients` along
//!   the straight path from a baseline `x0` to `x`, summed over the channels; the map adds up
//!   to `score(x) - score(x0)`.
//! - Occlusion (Zeiler and Fergus 2014): a patch of baseline slid over the picture like the
//!   article's feature; each pixel gets the mean drop of the class's log-probability `ln p`
//!   over the patches that covered it (a drop of 0.69 halves the probability).
//!
//! The score is the class's logit (before softmax) for the gradient methods, its
//! log-probability for occlusion (the probability itself is 1 to f32's precision when a model
//! is sure, and would show nothing). The baseline is the picture's background, not black: per channel, the median
//! of the input's border pixels, so that a dark X on a light page is compared with the empty
//! page (a black baseline would make the page itself the evidence).

use crate::error::{Error, Result};
use crate::layers::Mode;
use crate::network::{Gradients, Network, Workspace};
use crate::tensor::{Shape, Tensor};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    GradCam,
    Saliency,
    IntegratedGradients,
    Occlusion,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::GradCam,
        Method::Saliency,
        Method::IntegratedGradients,
        Method::Occlusion,
    ];

    /// The name on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::Saliency => "saliency",
            Method::IntegratedGradients => "integrated-gradients",
            Method::Occlusion => "occlusion",
        }
    }

    /// Whether the map has both signs (evidence for and against the class).
    pub fn is_signed(self) -> bool {
        matches!(self, Method::IntegratedGradients | Method::Occlusion)
    }
}

/// What the methods may be told; `Default` gives the usual choices.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Grad-CAM's node (by index); default [`default_gradcam_node`].
    pub target_node: Option<usize>,
    /// Integrated gradients' steps along the path (default 32).
    pub steps: Option<usize>,
    /// Occlusion's square patch side (default a seventh of the shorter side, at least 3) and
    /// stride (default half the patch).
    pub patch: Option<usize>,
    pub stride: Option<usize>,
}

const DEFAULT_STEPS: usize = 32;
/// Images per batch for integrated gradients' path and occlusion's patches.
const CHUNK: usize = 16;

/// One method's map for one class.
#[derive(Clone, Debug, Serialize)]
pub struct Attribution {
    pub method: Method,
    pub class: usize,
    /// What it was computed on: Grad-CAM's node, the steps, the patch.
    pub detail: String,
    pub height: usize,
    pub width: usize,
    /// `height * width` values, row-major.
    pub map: Vec<f32>,
}

impl Attribution {
    /// The map's values as rows, for JSON.
    pub fn rows(&self) -> Vec<&[f32]> {
        self.map.chunks(self.width.max(1)).collect()
    }
}

/// Computes `method`'s map of `class` for `input` (one image, `[1, input_shape]`).
pub fn attribute(
    network: &Network,
    input: &Tensor,
    class: usize,
    method: Method,
    options: &Options,
    workspace: &mut Workspace,
) -> Result<Attribution> {
    let shape = network.input_shape();
    if input.batch() != 1 || input.shape() != shape {
        return Err(Error::Invalid(format!(
            "attributions take one {shape} image, got {} of {}",
            input.batch(),
            input.shape()
        )));
    }
    let classes = network.output_shape().len();
    if class >= classes {
        return Err(Error::Invalid(format!(
            "class {class} does not exist: the network has {classes} outputs"
        )));
    }
    let (map, detail) = match method {
        Method::GradCam => {
            let node = match options.target_node {
                Some(node) => node,
                None => default_gradcam_node(network).ok_or_else(|| {
                    Error::Invalid(
                        "Grad-CAM needs a node with feature maps; this network has none".into(),
                    )
                })?,
            };
            (
                grad_cam(network, input, class, node, workspace)?,
                format!("node {}", network.nodes()[node].name()),
            )
        }
        Method::Saliency => (saliency(network, input, class, workspace)?, String::new()),
        Method::IntegratedGradients => {
            let steps = options.steps.unwrap_or(DEFAULT_STEPS).max(1);
            (
                integrated_gradients(network, input, class, steps, workspace)?,
                format!("{steps} steps from the background"),
            )
        }
        Method::Occlusion => {
            let side = shape.height.min(shape.width);
            let patch = options.patch.unwrap_or((side / 7).max(3)).clamp(1, side);
            let stride = options.stride.unwrap_or(patch.div_ceil(2)).max(1);
            let (map, worst) = occlusion(network, input, class, patch, stride, workspace)?;
            let detail = format!(
                "{patch}x{patch} patch, stride {stride}; covering rows {}-{}, columns {}-{} \
                 leaves p = {:.2}% of {:.2}%",
                worst.y,
                worst.y + patch - 1,
                worst.x,
                worst.x + patch - 1,
                100.0 * worst.covered.exp(),
                100.0 * worst.original.exp(),
            );
            (map, detail)
        }
    };
    Ok(Attribution {
        method,
        class,
        detail,
        height: shape.height,
        width: shape.width,
        map,
    })
}

/// Grad-CAM's usual layer, "the last convolutional layer": the last convolution's block, that
/// is the last node after it whose maps are as large as the convolution's (its batch norm,
/// activation, residual addition), before pooling shrinks them.
pub fn default_gradcam_node(network: &Network) -> Option<usize> {
    let nodes = network.nodes();
    let last_conv = nodes
        .iter()
        .rposition(|n| n.layer().spec().kind() == "conv2d")?;
    let size = |i: usize| {
        let s = nodes[i].layer().output_shape();
        (s.height, s.width)
    };
    let mut target = last_conv;
    while target + 1 < nodes.len() && size(target + 1) == size(last_conv) {
        target += 1;
    }
    Some(target)
}

/// Runs forward then backward with the one-hot gradient of `class` for every image of
/// `inputs`; returns the input gradient and calls `observe` with each node's output gradient.
fn class_gradient<'w>(
    network: &Network,
    inputs: &Tensor,
    class: usize,
    workspace: &'w mut Workspace,
    observe: impl FnMut(usize, &Tensor),
) -> Result<&'w Tensor> {
    network.forward(inputs, workspace, Mode::Infer)?;
    let (_, grad) = workspace.output_and_grad_mut();
    let outputs = grad.shape().len();
    for (i, g) in grad.data_mut().iter_mut().enumerate() {
        *g = f32::from(i % outputs == class);
    }
    let mut grads = Gradients::new(network);
    Ok(network.backward_to_input(inputs, workspace, &mut grads, observe))
}

fn grad_cam(
    network: &Network,
    input: &Tensor,
    class: usize,
    node: usize,
    workspace: &mut Workspace,
) -> Result<Vec<f32>> {
    let maps_shape = network.nodes()[node].layer().output_shape();
    if maps_shape.is_flat() {
        return Err(Error::Invalid(format!(
            "Grad-CAM needs feature maps: node {} outputs {maps_shape}",
            network.nodes()[node].name()
        )));
    }
    let mut maps_gradient = Vec::new();
    class_gradient(network, input, class, workspace, |value, gradient| {
        if value == node + 1 {
            maps_gradient = gradient.data().to_vec();
        }
    })?;
    let maps = workspace.activations()[node].data();
    let plane = maps_shape.plane();
    let mut cam = vec![0.0f32; plane];
    for (map, gradient) in maps.chunks(plane).zip(maps_gradient.chunks(plane)) {
        let weight = gradient.iter().sum::<f32>() / plane as f32;
        for (c, &a) in cam.iter_mut().zip(map) {
            *c += weight * a;
        }
    }
    cam.iter_mut().for_each(|c| *c = c.max(0.0));
    let shape = network.input_shape();
    Ok(resize_bilinear(
        &cam,
        (maps_shape.height, maps_shape.width),
        (shape.height, shape.width),
    ))
}

fn saliency(
    network: &Network,
    input: &Tensor,
    class: usize,
    workspace: &mut Workspace,
) -> Result<Vec<f32>> {
    let gradient = class_gradient(network, input, class, workspace, |_, _| {})?;
    let plane = network.input_shape().plane();
    let mut map = vec![0.0f32; plane];
    for channel in gradient.data().chunks(plane) {
        for (m, &g) in map.iter_mut().zip(channel) {
            *m = m.max(g.abs());
        }
    }
    Ok(map)
}

fn integrated_gradients(
    network: &Network,
    input: &Tensor,
    class: usize,
    steps: usize,
    workspace: &mut Workspace,
) -> Result<Vec<f32>> {
    let shape = network.input_shape();
    let baseline = background(input);
    let image = input.data();
    // The midpoints of `steps` equal segments of the path, a chunk of them per batch.
    let mut total = vec![0.0f64; shape.len()];
    let mut batch = Tensor::empty();
    for first in (0..steps).step_by(CHUNK) {
        let count = CHUNK.min(steps - first);
        batch.reshape(count, shape);
        for (k, sample) in batch.data_mut().chunks_mut(shape.len()).enumerate() {
            let alpha = (first + k) as f32 + 0.5;
            let alpha = alpha / steps as f32;
            for ((s, &x), &b) in sample.iter_mut().zip(image).zip(&baseline) {
                *s = b + alpha * (x - b);
            }
        }
        let gradients = class_gradient(network, &batch, class, workspace, |_, _| {})?;
        for sample in gradients.data().chunks(shape.len()) {
            for (t, &g) in total.iter_mut().zip(sample) {
                *t += f64::from(g);
            }
        }
    }
    let plane = shape.plane();
    let mut map = vec![0.0f32; plane];
    for (i, (&t, (&x, &b))) in total.iter().zip(image.iter().zip(&baseline)).enumerate() {
        map[i % plane] += ((x - b) as f64 * t / steps as f64) as f32;
    }
    Ok(map)
}

fn occlusion(
    network: &Network,
    input: &Tensor,
    class: usize,
    patch: usize,
    stride: usize,
    workspace: &mut Workspace,
) -> Result<(Vec<f32>, WorstPatch)> {
    let shape = network.input_shape();
    let (height, width, plane) = (shape.height, shape.width, shape.plane());
    let baseline = background(input);
    let original = log_probability(network.infer(input, workspace)?.sample(0), class);
    let starts = |len: usize| {
        let mut s: Vec<usize> = (0..=len - patch).step_by(stride).collect();
        if s.last() != Some(&(len - patch)) {
            s.push(len - patch);
        }
        s
    };
    let positions: Vec<(usize, usize)> = starts(height)
        .into_iter()
        .flat_map(|y| starts(width).into_iter().map(move |x| (y, x)))
        .collect();
    let mut drop = vec![0.0f32; plane];
    let mut covered = vec![0u32; plane];
    let mut worst = WorstPatch {
        y: 0,
        x: 0,
        original,
        covered: original,
    };
    let mut batch = Tensor::empty();
    for chunk in positions.chunks(CHUNK) {
        batch.reshape(chunk.len(), shape);
        for (sample, &(y0, x0)) in batch.data_mut().chunks_mut(shape.len()).zip(chunk) {
            sample.copy_from_slice(input.data());
            for (channel, b) in sample.chunks_mut(plane).zip(baseline.chunks(plane)) {
                for y in y0..y0 + patch {
                    channel[y * width + x0..y * width + x0 + patch]
                        .copy_from_slice(&b[y * width + x0..y * width + x0 + patch]);
                }
            }
        }
        let logits = network.infer(&batch, workspace)?;
        for (n, &(y0, x0)) in chunk.iter().enumerate() {
            let after = log_probability(logits.sample(n), class);
            if after < worst.covered {
                (worst.y, worst.x, worst.covered) = (y0, x0, after);
            }
            let fall = (original - after) as f32;
            for y in y0..y0 + patch {
                for x in x0..x0 + patch {
                    drop[y * width + x] += fall;
                    covered[y * width + x] += 1;
                }
            }
        }
    }
    let map = drop
        .iter()
        .zip(&covered)
        .map(|(&d, &c)| d / c.max(1) as f32)
        .collect();
    Ok((map, worst))
}

/// The patch whose covering lowers the class's probability most, and `ln p` before and after.
struct WorstPatch {
    y: usize,
    x: usize,
    original: f64,
    covered: f64,
}

/// `ln p(class)` from the logits, in f64: a confident model's probability is 1 in f32, and
/// the drops occlusion measures would all be 0.
pub fn log_probability(logits: &[f32], class: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&z| f64::from(z - max).exp()).sum();
    f64::from(logits[class] - max) - sum.ln()
}

/// The picture's background, as an input of the same shape: each channel filled with the
/// median of its border pixels.
pub fn background(input: &Tensor) -> Vec<f32> {
    let Shape {
        channels,
        height,
        width,
    } = input.shape();
    let mut out = Vec::with_capacity(input.shape().len());
    for c in 0..channels {
        let plane = input.plane(0, c);
        let mut border: Vec<f32> = (0..height)
            .flat_map(|y| (0..width).map(move |x| (y, x)))
            .filter(|&(y, x)| y == 0 || x == 0 || y + 1 == height || x + 1 == width)
            .map(|(y, x)| plane[y * width + x])
            .collect();
        border.sort_by(f32::total_cmp);
        let median = border.get(border.len() / 2).copied().unwrap_or(0.0);
        out.extend(std::iter::repeat_n(median, height * width));
    }
    out
}

/// Bilinear resizing with pixel centres aligned (`align_corners=False`, as OpenCV and
/// PyTorch's `interpolate` resize), edges clamped.
pub fn resize_bilinear(
    map: &[f32],
    (height, width): (usize, usize),
    (out_height, out_width): (usize, usize),
) -> Vec<f32> {
    let source = |out: usize, len: usize, out_len: usize| {
        let s = ((out as f32 + 0.5) * len as f32 / out_len as f32 - 0.5).max(0.0);
        let low = (s.floor() as usize).min(len - 1);
        let high = (low + 1).min(len - 1);
        (low, high, s - low as f32)
    };
    let mut out = Vec::with_capacity(out_height * out_width);
    for oy in 0..out_height {
        let (y0, y1, fy) = source(oy, height, out_height);
        for ox in 0..out_width {
            let (x0, x1, fx) = source(ox, width, out_width);
            let at = |y: usize, x: usize| map[y * width + x];
            let top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * fx;
            let bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * fx;
            out.push(top + (bottom - top) * fy);
        }
    }
    out
}
