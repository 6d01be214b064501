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

/// One stretch of the column matrix: row `row`, output row `oy`, i.e. the entries
/// `dst..dst + OW`. Output columns `lo..hi` read input pixels `src, src + SW, src + 2*SW...`;
/// the others lie in the zero padding.
#[derive(Clone, Copy)]
struct PatchRow {
    dst: usize,
    lo: usize,
    hi: usize,
    src: usize,
}

/// Visits every stretch of the column matrix with the input pixels it reads. im2col and its
/// transpose col2im are both this one walk, so they cannot disagree; working a row at a time
/// (not an entry at a time) keeps the bounds checks out of the inner loop.
#[inline(always)]
fn for_each_patch_row(g: &ConvGeometry, mut visit: impl FnMut(PatchRow)) {
    let [kh, kw] = g.window.kernel;
    let [sh, sw] = g.window.stride;
    let [ph, pw] = g.window.padding;
    let (h, w) = (g.input.height, g.input.width);
    let (oh, ow) = (g.output.height, g.output.width);
    let positions = oh * ow;
    for c in 0..g.input.channels {
        for i in 0..kh {
            for j in 0..kw {
                let row = (c * kh + i) * kw + j;
                // Output columns whose pixel x = ox * sw + j - pw lies inside 0..w.
                let lo = (pw.saturating_sub(j)).div_ceil(sw).min(ow);
                let hi = if w + pw > j {
                    (w + pw - j).div_ceil(sw).min(ow)
                } else {
                    0
                }
                .max(lo);
                for oy in 0..oh {
                    let dst = row * positions + oy * ow;
                    let y = (oy * sh + i) as isize - ph as isize;
                    if y < 0 || y as usize >= h || lo == hi {
                        visit(PatchRow {
                            dst,
                            lo: 0,
                            hi: 0,
                            src: 0,
                        });
                        continue;
                    }
                    let src = (c * h + y as usize) * w + lo * sw + j - pw;
                    visit(PatchRow { dst, lo, hi, src });
                }
            }
        }
    }
}

/// Unfolds one image `[C, H, W]` into `col`: `[C*KH*KW, OH*OW]`, row-major.
pub fn im2col(g: &ConvGeometry, image: &[f32], col: &mut [f32]) {
    let (ow, sw) = (g.output.width, g.window.stride[1]);
    for_each_patch_row(g, |PatchRow { dst, lo, hi, src }| {
        let out = &mut col[dst..dst + ow];
        out[..lo].fill(0.0);
        out[hi..].fill(0.0);
        if sw == 1 {
            out[lo..hi].copy_from_slice(&image[src..src + hi - lo]);
        } else {
            for (k, o) in out[lo..hi].iter_mut().enumerate() {
                *o = image[src + k * sw];
            }
        }
    });
}

/// Folds `col` back onto an image, adding every entry to the pixel it was read from.
pub fn col2im_add(g: &ConvGeometry, col: &[f32], image: &mut [f32]) {
    let sw = g.window.stride[1];
    for_each_patch_row(g, |PatchRow { dst, lo, hi, src }| {
        let values = &col[dst + lo..dst + hi];
        if sw == 1 {
            for (pixel, v) in image[src..src + hi - lo].iter_mut().zip(values) {
                *pixel += v;
            }
        } else {
            for (k, v) in values.iter().enumerate() {
                image[src + k * sw] += v;
            }
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
