//! Convolution lowered to matrix products (im2col): each image is unfolded into a matrix whose
//! columns are its windows, so the whole convolution is `weights x columns`, one SGEMM.
//! The batch is split into one chunk per thread; each chunk reuses its own column buffer.

use super::batch_chunks;
use super::gemm::{matmul, MatRef, Threading};
use crate::tensor::{Shape, Tensor};
use crate::window::Window2d;
use rayon::prelude::*;

/// Shapes of one convolution: `input` is `C x H x W`, `output` is `OC x OH x OW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub input: Shape,
    pub output: Shape,
    pub window: Window2d,
}

impl ConvGeometry {
    /// Rows of the column matrix: `C * KH * KW`, one per weight of an output channel.
    pub fn patch_len(&self) -> usize {
        self.input.channels * self.window.kernel[0] * self.window.kernel[1]
    }

    /// Columns of the column matrix: `OH * OW`, one per window position.
    pub fn positions(&self) -> usize {
        self.output.plane()
    }

    /// A 1x1 kernel with stride 1 and no padding reads the image as it is: no unfolding.
    fn is_pointwise(&self) -> bool {
        self.window.kernel == [1, 1]
            && self.window.stride == [1, 1]
            && self.window.padding == [0, 0]
    }

    fn column_len(&self) -> usize {
        if self.is_pointwise() {
            0
        } else {
            self.patch_len() * self.positions()
        }
    }
}

/// Runs `visit(column_row, output_position, input_index)` over every pair of a column-matrix
/// entry and the input pixel it reads (`None` where the window lies in the zero padding).
/// im2col and its transpose col2im are both this one walk, so they cannot disagree.
#[inline(always)]
fn for_each_patch_entry(g: &ConvGeometry, mut visit: impl FnMut(usize, usize, Option<usize>)) {
    let [kh, kw] = g.window.kernel;
    let [sh, sw] = g.window.stride;
    let [ph, pw] = g.window.padding;
    let (h, w) = (g.input.height, g.input.width);
    let (oh, ow) = (g.output.height, g.output.width);
    for c in 0..g.input.channels {
        for i in 0..kh {
            for j in 0..kw {
                let row = (c * kh + i) * kw + j;
                for oy in 0..oh {
                    let y = (oy * sh + i) as isize - ph as isize;
                    for ox in 0..ow {
                        let x = (ox * sw + j) as isize - pw as isize;
                        let inside = y >= 0 && (y as usize) < h && x >= 0 && (x as usize) < w;
                        let pixel = inside.then(|| (c * h + y as usize) * w + x as usize);
                        visit(row, oy * ow + ox, pixel);
                    }
                }
            }
        }
    }
}

/// Unfolds one image `[C, H, W]` into `col`: `[C*KH*KW, OH*OW]`, row-major.
pub fn im2col(g: &ConvGeometry, image: &[f32], col: &mut [f32]) {
    let positions = g.positions();
    for_each_patch_entry(g, |row, position, pixel| {
        col[row * positions + position] = pixel.map_or(0.0, |p| image[p]);
    });
}

/// Folds `col` back onto an image, adding every entry to the pixel it was read from.
pub fn col2im_add(g: &ConvGeometry, col: &[f32], image: &mut [f32]) {
    let positions = g.positions();
    for_each_patch_entry(g, |row, position, pixel| {
        if let Some(p) = pixel {
            image[p] += col[row * positions + position];
        }
    });
}

/// `output[n] = weight x im2col(input[n]) + bias` for every image.
///
/// Shapes: `input` `[N, C, H, W]`, `weight` `[OC, C*KH*KW]` (PyTorch's `[OC, C, KH, KW]`),
/// `bias` `[OC]`, `output` `[N, OC, OH, OW]`. `scratch` is resized once and reused.
pub fn conv2d_forward(
    g: &ConvGeometry,
    input: &Tensor,
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut Tensor,
    scratch: &mut Vec<f32>,
) {
    let batch = input.batch();
    let (chunks, per_chunk) = batch_chunks(batch);
    let column_len = g.column_len();
    scratch.resize(chunks * column_len.max(1), 0.0);
    let (in_len, out_len) = (g.input.len(), g.output.len());
    let (channels_out, positions, patch) = (g.output.channels, g.positions(), g.patch_len());
    output
        .data_mut()
        .par_chunks_mut(per_chunk * out_len)
        .zip(scratch.par_chunks_mut(column_len.max(1)))
        .enumerate()
        .for_each(|(chunk, (out_chunk, column))| {
            for (s, out) in out_chunk.chunks_mut(out_len).enumerate() {
                let n = chunk * per_chunk + s;
                let image = &input.data()[n * in_len..(n + 1) * in_len];
                let columns = if g.is_pointwise() {
                    image
                } else {
                    im2col(g, image, column);
                    &column[..]
                };
                match bias {
                    Some(bias) => {
                        for (row, &b) in out.chunks_mut(positions).zip(bias) {
                            row.fill(b);
                        }
                    }
                    None => out.fill(0.0),
                }
                matmul(
                    out,
                    MatRef::row_major(weight, channels_out, patch),
                    MatRef::row_major(columns, patch, positions),
                    true,
                    Threading::Serial,
                );
            }
        });
}

/// Where a convolution's backward pass puts its gradients.
pub struct ConvGrads<'a> {
    /// `[N, C, H, W]`, overwritten; `None` when nobody needs it (the first layer).
    pub input: Option<&'a mut Tensor>,
    /// `[OC, C*KH*KW]`, added to.
    pub weight: &'a mut [f32],
    /// `[OC]`, added to.
    pub bias: Option<&'a mut [f32]>,
}

/// Gradients of [`conv2d_forward`]: adds `dL/dweight` and `dL/dbias`, and writes `dL/dinput`
/// when asked for.
///
/// Shapes as in the forward pass; `grad_output` is `[N, OC, OH, OW]`. Each chunk of the batch
/// sums its own partial weight gradient; partials are added in chunk order (deterministic).
pub fn conv2d_backward(
    g: &ConvGeometry,
    input: &Tensor,
    weight: &[f32],
    grad_output: &Tensor,
    grads: ConvGrads<'_>,
    scratch: &mut Vec<f32>,
) {
    let ConvGrads {
        input: grad_input,
        weight: grad_weight,
        bias: mut grad_bias,
    } = grads;
    let batch = input.batch();
    let (chunks, per_chunk) = batch_chunks(batch);
    let (channels_out, positions, patch) = (g.output.channels, g.positions(), g.patch_len());
    let column_len = patch * positions;
    // Per chunk: the columns of one image, their gradient, and partial weight and bias sums.
    let weight_len = channels_out * patch;
    let per_chunk_scratch = 2 * column_len + weight_len + channels_out;
    scratch.resize(chunks * per_chunk_scratch, 0.0);
    let (in_len, out_len) = (g.input.len(), g.output.len());
    let mut input_grad_chunks: Vec<Option<&mut [f32]>> = match grad_input {
        Some(t) => t
            .data_mut()
            .chunks_mut(per_chunk * in_len)
            .map(Some)
            .collect(),
        None => (0..chunks).map(|_| None).collect(),
    };

    scratch
        .par_chunks_mut(per_chunk_scratch)
        .zip(input_grad_chunks.par_iter_mut())
        .enumerate()
        .for_each(|(chunk, (work, input_grad))| {
            let (column, rest) = work.split_at_mut(column_len);
            let (column_grad, rest) = rest.split_at_mut(column_len);
            let (partial_weight, partial_bias) = rest.split_at_mut(weight_len);
            partial_weight.fill(0.0);
            partial_bias.fill(0.0);
            let first = chunk * per_chunk;
            let last = (first + per_chunk).min(batch);
            for n in first..last {
                let image = &input.data()[n * in_len..(n + 1) * in_len];
                let out_grad = &grad_output.data()[n * out_len..(n + 1) * out_len];
                let columns: &[f32] = if g.is_pointwise() {
                    image
                } else {
                    im2col(g, image, column);
                    column
                };
                // dW[OC, CKK] += dY[OC, P] x columns^T[P, CKK]
                matmul(
                    partial_weight,
                    MatRef::row_major(out_grad, channels_out, positions),
                    MatRef::row_major(columns, patch, positions).t(),
                    true,
                    Threading::Serial,
                );
                for (b, row) in partial_bias.iter_mut().zip(out_grad.chunks(positions)) {
                    *b += row.iter().sum::<f32>();
                }
                if let Some(input_grad) = input_grad.as_deref_mut() {
                    let image_grad =
                        &mut input_grad[(n - first) * in_len..(n - first + 1) * in_len];
                    // dcolumns[CKK, P] = W^T[CKK, OC] x dY[OC, P], folded back onto the image.
                    let weight_t = MatRef::row_major(weight, channels_out, patch).t();
                    let dy = MatRef::row_major(out_grad, channels_out, positions);
                    if g.is_pointwise() {
                        matmul(image_grad, weight_t, dy, false, Threading::Serial);
                    } else {
                        matmul(column_grad, weight_t, dy, false, Threading::Serial);
                        image_grad.fill(0.0);
                        col2im_add(g, column_grad, image_grad);
                    }
                }
            }
        });

    for work in scratch.chunks(per_chunk_scratch).take(chunks) {
        let (partial_weight, partial_bias) = work[2 * column_len..].split_at(weight_len);
        add_assign(grad_weight, partial_weight);
        if let Some(grad_bias) = grad_bias.as_deref_mut() {
            add_assign(grad_bias, partial_bias);
        }
    }
}

fn add_assign(total: &mut [f32], part: &[f32]) {
    for (t, p) in total.iter_mut().zip(part) {
        *t += p;
    }
}
