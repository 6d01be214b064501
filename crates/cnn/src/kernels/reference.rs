//! Plain, obviously right kernels: direct loops over the definition (convolution) or the
//! sliding window (pooling), no unfolding, no threads. Slow on purpose; the tests hold the fast
//! kernels to them.

use super::conv::ConvGeometry;
use super::pool::{PoolGeometry, PoolKind};
use crate::tensor::Tensor;

/// Visits `(output channel, output index, [(input index, weight index)...])` for every output
/// value: the
/// window products that make it up, written out as the definition of a (grouped, dilated,
/// strided, zero-padded) convolution. Forward and backward read the same pairs.
fn for_each_product(
    g: &ConvGeometry,
    batch: usize,
    mut visit: impl FnMut(usize, usize, &[(usize, usize)]),
) {
    let (channels, height, width) = (g.input.channels, g.input.height, g.input.width);
    let (channels_out, out_height, out_width) =
        (g.output.channels, g.output.height, g.output.width);
    let [kh, kw] = g.window.kernel;
    let [sh, sw] = g.window.stride;
    let [ph, pw] = g.window.padding;
    let [dh, dw] = g.dilation;
    let (group_in, group_out) = (channels / g.groups, channels_out / g.groups);
    let mut pairs = Vec::with_capacity(group_in * kh * kw);
    for n in 0..batch {
        for oc in 0..channels_out {
            let first_channel = oc / group_out * group_in;
            for oy in 0..out_height {
                for ox in 0..out_width {
                    pairs.clear();
                    for c in 0..group_in {
                        for i in 0..kh {
                            // Input row y = oy * sh + i * dh - ph, when inside the image.
                            let Some(y) =
                                (oy * sh + i * dh).checked_sub(ph).filter(|&y| y < height)
                            else {
                                continue;
                            };
                            for j in 0..kw {
                                let Some(x) =
                                    (ox * sw + j * dw).checked_sub(pw).filter(|&x| x < width)
                                else {
                                    continue;
                                };
                                let input =
                                    ((n * channels + first_channel + c) * height + y) * width + x;
                                pairs.push((input, ((oc * group_in + c) * kh + i) * kw + j));
                            }
                        }
                    }
                    let out = ((n * channels_out + oc) * out_height + oy) * out_width + ox;
                    visit(oc, out, &pairs);
                }
            }
        }
    }
}

/// Shapes as [`super::conv::Conv2dKernel::forward`]; `weight` is `[OC, C / groups, KH, KW]`.
pub fn conv2d_forward(
    g: &ConvGeometry,
    input: &Tensor,
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut Tensor,
) {
    let x = input.data();
    let out = output.data_mut();
    for_each_product(g, input.batch(), |oc, o, products| {
        let start = bias.map_or(0.0, |b| b[oc]);
        out[o] = products
            .iter()
            .fold(start, |sum, &(i, k)| sum + x[i] * weight[k]);
    });
}

/// Shapes as [`super::conv::Conv2dKernel::backward`]; gradients are added to `grad_weight` and
/// `grad_bias`, and written to `grad_input`.
pub fn conv2d_backward(
    g: &ConvGeometry,
    input: &Tensor,
    weight: &[f32],
    grad_output: &Tensor,
    grad_input: &mut Tensor,
    grad_weight: &mut [f32],
    grad_bias: &mut [f32],
) {
    let x = input.data();
    let dy = grad_output.data();
    let dx = grad_input.data_mut();
    dx.fill(0.0);
    for_each_product(g, input.batch(), |oc, o, products| {
        grad_bias[oc] += dy[o];
        for &(i, k) in products {
            grad_weight[k] += dy[o] * x[i];
            dx[i] += dy[o] * weight[k];
        }
    });
}

/// Indices into the input of the pixels of each window, in row-major order, per output value.
fn for_each_window_pixels(g: &PoolGeometry, batch: usize, mut visit: impl FnMut(usize, &[usize])) {
    let (h, w) = (g.input.height, g.input.width);
    let mut pixels = Vec::new();
    for plane in 0..batch * g.input.channels {
        g.window.for_each_window(
            [h, w],
            [g.output.height, g.output.width],
            |oy, ox, rows, cols| {
                pixels.clear();
                for y in rows.start..rows.end {
                    for x in cols.start..cols.end {
                        pixels.push((plane * h + y) * w + x);
                    }
                }
                let out = (plane * g.output.height + oy) * g.output.width + ox;
                visit(out, &pixels);
            },
        );
    }
}

fn first_max(x: &[f32], pixels: &[usize]) -> usize {
    pixels
        .iter()
        .copied()
        .reduce(|best, p| if x[p] > x[best] { p } else { best })
        .expect("a window covers at least one pixel")
}

pub fn pool_forward(kind: PoolKind, g: &PoolGeometry, input: &Tensor, output: &mut Tensor) {
    let x = input.data();
    let out = output.data_mut();
    for_each_window_pixels(g, input.batch(), |o, pixels| {
        out[o] = match kind {
            PoolKind::Max => x[first_max(x, pixels)],
            PoolKind::Average => pixels.iter().map(|&p| x[p]).sum::<f32>() / pixels.len() as f32,
        };
    });
}

pub fn pool_backward(
    kind: PoolKind,
    g: &PoolGeometry,
    input: &Tensor,
    grad_output: &Tensor,
    grad_input: &mut Tensor,
) {
    let x = input.data();
    let dy = grad_output.data();
    let dx = grad_input.data_mut();
    dx.fill(0.0);
    for_each_window_pixels(g, input.batch(), |o, pixels| match kind {
        PoolKind::Max => dx[first_max(x, pixels)] += dy[o],
        PoolKind::Average => {
            for &p in pixels {
                dx[p] += dy[o] / pixels.len() as f32;
            }
        }
    });
}

/// Everything batch normalisation computes on one batch, by [`batch_norm`].
pub struct BatchNormResults {
    pub output: Tensor,
    pub mean: Vec<f32>,
    pub inverse_std: Vec<f32>,
    pub unbiased: Vec<f32>,
    pub grad_weight: Vec<f32>,
    pub grad_bias: Vec<f32>,
    /// With the batch's statistics, as in training.
    pub grad_input: Tensor,
    /// With the statistics held constant.
    pub grad_input_fixed: Tensor,
}

/// Batch normalisation by its definition, in f64: each channel's mean and biased variance
/// over its `N x H x W` values, `y = weight * (x - mean) / sqrt(var + epsilon) + bias`, and
/// the gradients of both kinds for the output gradient `grad_output`.
pub fn batch_norm(
    input: &Tensor,
    grad_output: &Tensor,
    (weight, bias): (&[f32], &[f32]),
    epsilon: f32,
) -> BatchNormResults {
    let (batch, shape) = (input.batch(), input.shape());
    let channels = shape.channels;
    let mut results = BatchNormResults {
        output: Tensor::zeros(batch, shape),
        mean: vec![0.0; channels],
        inverse_std: vec![0.0; channels],
        unbiased: vec![0.0; channels],
        grad_weight: vec![0.0; channels],
        grad_bias: vec![0.0; channels],
        grad_input: Tensor::zeros(batch, shape),
        grad_input_fixed: Tensor::zeros(batch, shape),
    };
    let planes = |tensor: &Tensor, c: usize| -> Vec<f64> {
        (0..batch)
            .flat_map(|n| {
                tensor
                    .plane(n, c)
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    for c in 0..channels {
        let (x, dy) = (planes(input, c), planes(grad_output, c));
        let count = x.len() as f64;
        let mean = x.iter().sum::<f64>() / count;
        let squares: f64 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
        let inverse_std = 1.0 / (squares / count + f64::from(epsilon)).sqrt();
        let x_hat: Vec<f64> = x.iter().map(|v| (v - mean) * inverse_std).collect();
        let sum_dy: f64 = dy.iter().sum();
        let sum_dy_xhat: f64 = dy.iter().zip(&x_hat).map(|(d, h)| d * h).sum();
        let scale = f64::from(weight[c]) * inverse_std;
        results.mean[c] = mean as f32;
        results.inverse_std[c] = inverse_std as f32;
        results.unbiased[c] = (squares / (count - 1.0).max(1.0)) as f32;
        results.grad_weight[c] = sum_dy_xhat as f32;
        results.grad_bias[c] = sum_dy as f32;
        let plane = shape.plane();
        for (i, (&h, &d)) in x_hat.iter().zip(&dy).enumerate() {
            let at = ((i / plane) * channels + c) * plane + i % plane;
            results.output.data_mut()[at] = (f64::from(weight[c]) * h + f64::from(bias[c])) as f32;
            results.grad_input.data_mut()[at] =
                (scale / count * (count * d - sum_dy - h * sum_dy_xhat)) as f32;
            results.grad_input_fixed.data_mut()[at] = (scale * d) as f32;
        }
    }
    results
}
