//! Plain, obviously right kernels: direct loops over the sliding window, no unfolding, no
//! threads. Slow on purpose; the tests hold the fast kernels to them.

use super::conv::ConvGeometry;
use super::pool::{PoolGeometry, PoolKind};
use crate::tensor::Tensor;

/// Weight index of `[oc, c, ky, kx]` in PyTorch's `[OC, C, KH, KW]` layout.
fn weight_index(g: &ConvGeometry, oc: usize, c: usize, ky: usize, kx: usize) -> usize {
    let [kh, kw] = g.window.kernel;
    ((oc * g.input.channels + c) * kh + ky) * kw + kx
}

/// Visits `(n, oc, output index, [(input index, weight index)...])` for every output value:
/// the window products that make it up. Forward and backward read the same pairs.
fn for_each_product(
    g: &ConvGeometry,
    batch: usize,
    mut visit: impl FnMut(usize, usize, usize, &mut dyn Iterator<Item = (usize, usize)>),
) {
    let (h, w) = (g.input.height, g.input.width);
    for n in 0..batch {
        for oc in 0..g.output.channels {
            g.window.for_each_window(
                [h, w],
                [g.output.height, g.output.width],
                |oy, ox, rows, cols| {
                    let out =
                        ((n * g.output.channels + oc) * g.output.height + oy) * g.output.width + ox;
                    let mut pairs = (0..g.input.channels).flat_map(|c| {
                        (rows.start..rows.end).flat_map(move |y| {
                            (cols.start..cols.end).map(move |x| {
                                let ky = y - rows.start + rows.kernel_offset;
                                let kx = x - cols.start + cols.kernel_offset;
                                (((n * g.input.channels + c) * h + y) * w + x, (c, ky, kx))
                            })
                        })
                    });
                    let mut indexed = pairs
                        .by_ref()
                        .map(|(i, (c, ky, kx))| (i, weight_index(g, oc, c, ky, kx)));
                    visit(n, oc, out, &mut indexed);
                },
            );
        }
    }
}

/// Shapes as [`super::conv::conv2d_forward`].
pub fn conv2d_forward(
    g: &ConvGeometry,
    input: &Tensor,
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut Tensor,
) {
    let x = input.data();
    let out = output.data_mut();
    for_each_product(g, input.batch(), |_, oc, o, products| {
        let start = bias.map_or(0.0, |b| b[oc]);
        out[o] = products.fold(start, |sum, (i, k)| sum + x[i] * weight[k]);
    });
}

/// Shapes as [`super::conv::conv2d_backward`]; gradients are added to `grad_weight` and
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
    for_each_product(g, input.batch(), |_, oc, o, products| {
        grad_bias[oc] += dy[o];
        for (i, k) in products {
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
