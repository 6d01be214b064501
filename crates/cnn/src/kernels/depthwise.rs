//! Depthwise convolution (groups = input channels = output channels: MobileNet's, each channel
//! filtered by its own kernel), stride 1: each output plane from its input plane only, a few
//! registers of output columns of two rows at a time, each kernel tap one broadcast weight and
//! one load per register and row. A convolution of one input channel per group has nothing for
//! a matrix product to share, so it is computed directly rather than as one tiny product per
//! channel.
//!
//! The input gradient is the same convolution of the output gradient with each kernel flipped
//! (padding `K - 1 - P`); the weight gradient is one dot product of a plane of the output
//! gradient with the shifted input plane per kernel tap, summed over the batch channel by
//! channel (each channel's sum by one task, in a fixed order: the same bits for any number of
//! threads).

use super::conv::ConvGeometry;
use super::direct::Strip;
use super::simd::{Isa, Kernel, Simd};
use super::team::{for_each_task_above, SharedSlice};
use super::Epilogue;

/// Widest kernel handled (the column masks are kept in an array).
const MAX_KERNEL_WIDTH: usize = 16;

/// Multiply-adds below which a pass runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// Whether this module computes `g`.
pub fn supports(g: &ConvGeometry) -> bool {
    let channels = g.input.channels;
    g.groups == channels
        && g.output.channels == channels
        && g.dilation == [1, 1]
        && g.window.stride == [1, 1]
        && g.window.padding[0] < g.window.kernel[0]
        && g.window.padding[1] < g.window.kernel[1]
        && g.window.kernel[1] <= MAX_KERNEL_WIDTH
}

/// `weight` (`[C, 1, KH, KW]`) with each kernel turned by 180 degrees, for [`ConvGeometry::transposed`].
pub fn flipped_weights(g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    let taps = g.window.kernel[0] * g.window.kernel[1];
    weight
        .chunks_exact(taps)
        .flat_map(|kernel| kernel.iter().rev().copied())
        .collect()
}

/// `output[n][c] = input[n][c] * weight[c]` then the epilogue, for every image and channel,
/// with `isa`'s instructions. Shapes as [`super::conv::Conv2dKernel::forward`]; `weight` is
/// `[C, 1, KH, KW]`.
pub fn forward(
    isa: Isa,
    g: &ConvGeometry,
    batch: usize,
    input: &[f32],
    weight: &[f32],
    epilogue: Epilogue<'_>,
    output: &mut [f32],
) {
    assert!(supports(g), "depthwise convolution of an unsupported shape");
    let channels = g.input.channels;
    let (in_plane, out_plane) = (g.input.plane(), epilogue.output_shape(g.output).plane());
    let taps = g.window.kernel[0] * g.window.kernel[1];
    assert!(input.len() >= batch * channels * in_plane);
    assert!(output.len() >= batch * channels * out_plane);
    assert_eq!(weight.len(), channels * taps);
    let output = SharedSlice::new(output);
    let task = |index: usize| {
        let c = index % channels;
        // SAFETY: each task writes its own output plane.
        let out = unsafe { output.part(index * out_plane, out_plane) };
        isa.dispatch(Plane {
            g,
            image: &input[index * in_plane..][..in_plane],
            kernel: &weight[c * taps..][..taps],
            bias: epilogue.bias_of(c),
            epilogue,
            out,
        });
    };
    let work = batch * g.output.len() * taps;
    for_each_task_above(work, PARALLEL_MIN_WORK, batch * channels, task);
}

/// One plane of [`forward`].
struct Plane<'a> {
    g: &'a ConvGeometry,
    image: &'a [f32],
    kernel: &'a [f32],
    bias: f32,
    epilogue: Epilogue<'a>,
    out: &'a mut [f32],
}

impl Kernel for Plane<'_> {
    type Output = ();

    /// A block of `R` registers of output columns of `ROWS` rows at a time, `R * ROWS = 4`
    /// sums: two registers of two rows, or for a row that fits one register (14x14 maps with
    /// 16 lanes) one register of four rows, rather than a second register of nothing.
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        if self.g.output.width <= S::LANES {
            plane::<S, 1, 4>(s, self);
        } else {
            plane::<S, 2, 2>(s, self);
        }
    }
}

#[inline(always)]
fn plane<S: Simd, const R: usize, const ROWS: usize>(s: S, plane: Plane<'_>) {
    let Plane {
        g,
        image,
        kernel,
        bias,
        epilogue,
        out,
    } = plane;
    let (height, width) = (g.input.height, g.input.width);
    let (out_height, out_width) = (g.output.height, g.output.width);
    let [kh, kw] = g.window.kernel;
    let [pad_y, pad_x] = g.window.padding;
    let bias = s.splat(bias);
    for left in (0..out_width).step_by(S::LANES * R) {
        // Register r's tap column j reads input columns left + r * LANES + l + j - pad:
        // those inside the image and inside the output row.
        let mut masks = [[s.mask(0, 0); MAX_KERNEL_WIDTH]; R];
        for (r, masks) in masks.iter_mut().enumerate() {
            let start = left + r * S::LANES;
            for (j, mask) in masks.iter_mut().enumerate().take(kw) {
                let column = (start + j) as isize - pad_x as isize;
                let room = out_width as isize - start as isize;
                *mask = s.mask(-column, (width as isize - column).min(room));
            }
        }
        let strips: [Strip<S>; R] = std::array::from_fn(|r| {
            Strip::new(s, left + r * S::LANES, out_width, epilogue.max_pool)
        });
        for top in (0..out_height).step_by(ROWS) {
            if epilogue.max_pool && top + 1 >= out_height {
                break;
            }
            let mut sums = [[s.zero(); R]; ROWS];
            for i in 0..kh {
                for (row, sums) in sums.iter_mut().enumerate() {
                    let y = (top + row + i) as isize - pad_y as isize;
                    if !(0..height as isize).contains(&y) {
                        continue;
                    }
                    let start = y * width as isize + left as isize - pad_x as isize;
                    accumulate_row(s, image, start, &kernel[i * kw..][..kw], &masks, sums);
                }
            }
            for (r, strip) in strips.iter().enumerate() {
                for pair in (0..ROWS).step_by(2) {
                    let (upper, lower) = (sums[pair][r], sums[pair + 1][r]);
                    let row = top + pair;
                    if epilogue.max_pool {
                        // Pools rows `row` and `row + 1` when both exist (an odd last row is
                        // dropped).
                        if row + 1 < out_height {
                            let rows = s.max(upper, lower);
                            let (even, odd) = s.deinterleave(rows, rows);
                            let pooled = epilogue.finish(s, bias, s.max(even, odd));
                            strip.store(s, out, row / 2, out_width / 2, pooled);
                        }
                        continue;
                    }
                    for (row, sum) in [(row, upper), (row + 1, lower)] {
                        if row < out_height {
                            strip.finish_store(s, out, (row, out_width), &epilogue, bias, sum);
                        }
                    }
                }
            }
        }
    }
}

/// Adds one kernel row's taps (`kernel_row`, `[KW]`) to one output row's `R` registers, the
/// input row starting (for lane 0 of tap column 0) at `start`, inside the image.
#[inline(always)]
fn accumulate_row<S: Simd, const R: usize>(
    s: S,
    image: &[f32],
    start: isize,
    kernel_row: &[f32],
    masks: &[[S::Mask; MAX_KERNEL_WIDTH]; R],
    sums: &mut [S::V; R],
) {
    for (j, &weight) in kernel_row.iter().enumerate() {
        let w = s.splat(weight);
        for (r, sum) in sums.iter_mut().enumerate() {
            let at = start + (r * S::LANES + j) as isize;
            // SAFETY: unmasked lanes read input columns of a row inside the image, which the
            // mask keeps inside that row; masked-off lanes are not read.
            let x = unsafe { s.load_masked(image.as_ptr().wrapping_offset(at), masks[r][j]) };
            *sum = s.mul_add(w, x, *sum);
        }
    }
}

/// Adds `dL/dweight` (`[C, 1, KH, KW]`) and `dL/dbias` (`[C]`, when given) of [`forward`]:
/// per channel and tap, the dot products of the output gradient's planes with the input's
/// planes shifted by the tap, over the batch.
pub fn weight_gradient(
    isa: Isa,
    g: &ConvGeometry,
    batch: usize,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
    grad_bias: Option<&mut [f32]>,
) {
    let channels = g.input.channels;
    let taps = g.window.kernel[0] * g.window.kernel[1];
    let (in_plane, out_plane) = (g.input.plane(), g.output.plane());
    assert!(input.len() >= batch * channels * in_plane);
    assert!(grad_output.len() >= batch * channels * out_plane);
    assert_eq!(grad_weight.len(), channels * taps);
    // Per channel: its taps' sums, then its bias's.
    let mut sums = vec![0.0f32; channels * (taps + 1)];
    let shared = SharedSlice::new(&mut sums);
    let task = |c: usize| {
        // SAFETY: each task writes its own channel's sums.
        let sums = unsafe { shared.part(c * (taps + 1), taps + 1) };
        for n in 0..batch {
            let plane = (n * channels + c) * in_plane;
            let grad = (n * channels + c) * out_plane;
            isa.dispatch(TapSums {
                g,
                image: &input[plane..][..in_plane],
                grad: &grad_output[grad..][..out_plane],
                sums: &mut *sums,
            });
        }
    };
    let work = batch * g.output.len() * taps;
    for_each_task_above(work, PARALLEL_MIN_WORK, channels, task);
    for (c, channel) in sums.chunks_exact(taps + 1).enumerate() {
        for (w, &sum) in grad_weight[c * taps..][..taps].iter_mut().zip(channel) {
            *w += sum;
        }
    }
    if let Some(grad_bias) = grad_bias {
        for (b, channel) in grad_bias.iter_mut().zip(sums.chunks_exact(taps + 1)) {
            *b += channel[taps];
        }
    }
}

/// One image's plane of [`weight_gradient`]: adds to `sums[tap]` the dot product of `grad`
/// with `image` shifted by the tap, and to `sums[taps]` the sum of `grad`.
struct TapSums<'a> {
    g: &'a ConvGeometry,
    image: &'a [f32],
    grad: &'a [f32],
    sums: &'a mut [f32],
}

impl Kernel for TapSums<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let TapSums {
            g,
            image,
            grad,
            sums,
        } = self;
        let (height, width) = (g.input.height, g.input.width);
        let (out_height, out_width) = (g.output.height, g.output.width);
        let [kh, kw] = g.window.kernel;
        let [pad_y, pad_x] = g.window.padding;
        for i in 0..kh {
            for j in 0..kw {
                let mut total = s.zero();
                for oy in 0..out_height {
                    let y = (oy + i) as isize - pad_y as isize;
                    if !(0..height as isize).contains(&y) {
                        continue;
                    }
                    for left in (0..out_width).step_by(S::LANES) {
                        let column = (left + j) as isize - pad_x as isize;
                        let room = out_width as isize - left as isize;
                        let mask = s.mask(-column, (width as isize - column).min(room));
                        let row_mask = s.mask(0, room);
                        let at = y * width as isize + column;
                        // SAFETY: unmasked lanes read columns inside input row y and inside
                        // output row oy; masked-off lanes are not read.
                        let (x, dy) = unsafe {
                            (
                                s.load_masked(image.as_ptr().wrapping_offset(at), mask),
                                s.load_masked(grad.as_ptr().add(oy * out_width + left), row_mask),
                            )
                        };
                        total = s.mul_add(x, dy, total);
                    }
                }
                sums[i * kw + j] += s.sum(total);
            }
        }
        let mut total = s.zero();
        for oy in 0..out_height {
            for left in (0..out_width).step_by(S::LANES) {
                let row_mask = s.mask(0, (out_width - left) as isize);
                // SAFETY: the masked lanes are inside output row oy.
                let dy =
                    unsafe { s.load_masked(grad.as_ptr().add(oy * out_width + left), row_mask) };
                total = s.add(total, dy);
            }
        }
        sums[kh * kw] += s.sum(total);
    }
}
