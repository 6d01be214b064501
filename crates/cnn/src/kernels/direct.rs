//! Direct convolution for layers with few input channels (a first layer on grey or colour
//! images): no unfolding, no matrix product. Each output row is computed a register of pixels
//! at a time: the input row under each kernel tap is loaded once and multiplied, in registers,
//! by a block of output channels' weights for that tap (broadcast), for two output rows at
//! once.
//!
//! im2col does badly on such layers: its column matrix has only `C * KH * KW` rows (9 for a
//! 3x3 layer on grey images), so the product is mostly memory traffic (unfolding 9 copies of the
//! image, writing the product, reading it back for the epilogue), and at batch 1 it gives one
//! task to one thread. Here the output is written once, with its epilogue, and the work splits
//! by output channels as well as by image.
//!
//! Not for layers with many input channels, even at batch 1 (measured on `cnn4`'s 64-channel
//! 3x3 layer at 14x14: 216 us on one thread against Winograd's 74): this kernel does 2.25x
//! Winograd's multiplications, and even at the machine's peak it would be slower.

use super::conv::ConvGeometry;
use super::simd::{Isa, Kernel, Simd};
use super::team::SharedSlice;
use super::Epilogue;

/// Largest `C * KH * KW` computed here: up to a 5x5 kernel on colour images. Beyond it the
/// im2col product has enough rows to run at full speed.
const MAX_PATCH: usize = 80;

/// Widest kernel handled (the kernel's column masks are kept in an array).
const MAX_KERNEL_WIDTH: usize = 16;

/// Multiply-adds below which the convolution runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// Whether [`conv_forward`] computes this convolution.
pub fn supports(g: &ConvGeometry) -> bool {
    g.window.stride == [1, 1]
        && g.patch_len() <= MAX_PATCH
        && g.window.kernel[1] <= MAX_KERNEL_WIDTH
}

/// `weight` (`[OC, C * KH * KW]`) regrouped for [`conv_forward`] with `isa`: per block of `B`
/// output channels ([`Isa::direct_channels`]), tap by tap, the block's weights for that tap
/// (`[OC / B][C * KH * KW][B]`), zero for channels past the last.
pub fn block_weights(isa: Isa, g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    let (channels_out, patch, block) = (g.output.channels, g.patch_len(), isa.direct_channels());
    let mut blocks = vec![0.0; channels_out.div_ceil(block) * patch * block];
    for (oc, row) in weight.chunks_exact(patch).take(channels_out).enumerate() {
        let blocked = &mut blocks[oc / block * patch * block..];
        for (tap, &w) in row.iter().enumerate() {
            blocked[tap * block + oc % block] = w;
        }
    }
    blocks
}

/// `output[n] = conv(input[n], weight)` then the epilogue, for every image of the batch, with
/// `isa`'s instructions: as [`super::conv::Conv2dKernel::forward`], whose shapes it takes, with
/// the weights as [`block_weights`] gives them for `isa`. Call only where [`supports`] holds.
pub fn conv_forward(
    isa: Isa,
    g: &ConvGeometry,
    batch: usize,
    input: &[f32],
    blocked_weights: &[f32],
    epilogue: Epilogue<'_>,
    output: &mut [f32],
) {
    assert!(supports(g), "direct convolution of an unsupported shape");
    let (in_len, out_len) = (g.input.len(), epilogue.output_shape(g.output).len());
    assert!(input.len() >= batch * in_len && output.len() >= batch * out_len);
    let block = isa.direct_channels();
    let (blocks, block_len) = (g.output.channels.div_ceil(block), g.patch_len() * block);
    assert_eq!(blocked_weights.len(), blocks * block_len);
    let work = batch * g.output.len() * g.patch_len();
    let output = SharedSlice::new(output);
    let plane = out_len / g.output.channels;
    let task = |index: usize| {
        let (n, block_index) = (index / blocks, index % blocks);
        let first = block_index * block;
        let count = block.min(g.output.channels - first);
        // SAFETY: each task takes the output planes of its own image and block of channels.
        let out = unsafe { output.part(n * out_len + first * plane, count * plane) };
        isa.dispatch(ChannelBlock {
            g,
            image: &input[n * in_len..][..in_len],
            weights: &blocked_weights[block_index * block_len..][..block_len],
            epilogue,
            first,
            out,
        });
    };
    if super::team::parts_for(work, PARALLEL_MIN_WORK) > 1 {
        super::team::for_each_task(batch * blocks, task);
    } else {
        (0..batch * blocks).for_each(task);
    }
}

/// Output channels `first..first + B` (fewer at the end) of one image: every pair of output
/// rows, a register of columns at a time, then the epilogue. `weights` is the block's part of
/// [`block_weights`]; `out` holds the block's output planes (`[OH, OW]` each, or pooled).
struct ChannelBlock<'a> {
    g: &'a ConvGeometry,
    image: &'a [f32],
    weights: &'a [f32],
    epilogue: Epilogue<'a>,
    first: usize,
    out: &'a mut [f32],
}

impl Kernel for ChannelBlock<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        match S::ISA.direct_channels() {
            8 => channel_block::<S, 8>(s, self),
            4 => channel_block::<S, 4>(s, self),
            block => unreachable!("no direct block of {block} channels"),
        }
    }
}

/// [`ChannelBlock`] with `B` output channels, two rows of a register each, in registers.
#[inline(always)]
fn channel_block<S: Simd, const B: usize>(s: S, block: ChannelBlock<'_>) {
    let ChannelBlock {
        g,
        image,
        weights,
        epilogue,
        first,
        out,
    } = block;
    let lanes = S::LANES as isize;
    let (channels, height, width) = (g.input.channels, g.input.height, g.input.width);
    let (out_height, out_width) = (g.output.height, g.output.width);
    let [kh, kw] = g.window.kernel;
    let [pad_y, pad_x] = g.window.padding;
    let count = B.min(g.output.channels - first);
    assert!(kw <= MAX_KERNEL_WIDTH && weights.len() == g.patch_len() * B);
    assert_eq!(image.len(), g.input.len());
    let (pooled_height, pooled_width) = (out_height / 2, out_width / 2);
    let plane_len = epilogue.output_shape(g.output).plane();
    assert!(out.len() >= count * plane_len);
    let zero = s.zero();
    for top in (0..out_height).step_by(2) {
        if epilogue.max_pool && top / 2 >= pooled_height {
            break;
        }
        for left in (0..out_width).step_by(S::LANES) {
            // Tap column j reads input columns left + l + j - pad for lanes l: those inside
            // the image (and inside the output row).
            let mut masks = [s.mask(0, 0); MAX_KERNEL_WIDTH];
            for (j, mask) in masks.iter_mut().enumerate().take(kw) {
                let column = (left + j) as isize - pad_x as isize;
                let valid_output = (out_width - left) as isize;
                *mask = s.mask(-column, (width as isize - column).min(valid_output));
            }
            let mut sums = [[zero; B]; 2];
            let mut taps = weights.chunks_exact(B);
            for c in 0..channels {
                for i in 0..kh {
                    // The input rows under output rows top and top + 1, if inside.
                    let mut rows = [None; 2];
                    for (r, row) in rows.iter_mut().enumerate() {
                        let y = (top + r + i) as isize - pad_y as isize;
                        if (0..height as isize).contains(&y) {
                            *row = Some(
                                ((c * height) as isize + y) * width as isize + left as isize
                                    - pad_x as isize,
                            );
                        }
                    }
                    for (j, &mask) in masks.iter().enumerate().take(kw) {
                        let tap: &[f32; B] = taps
                            .next()
                            .expect("a weight per tap")
                            .try_into()
                            .expect("a block of weights");
                        let mut loaded = [zero; 2];
                        for (register, row) in loaded.iter_mut().zip(rows) {
                            if let Some(start) = row {
                                // SAFETY: unmasked lanes read input column left + l + j - pad
                                // of a row inside the image, which the mask keeps inside that
                                // row; masked-off lanes are not read.
                                *register = unsafe {
                                    s.load_masked(
                                        image.as_ptr().wrapping_offset(start + j as isize),
                                        mask,
                                    )
                                };
                            }
                        }
                        for o in 0..B {
                            let w = s.splat(tap[o]);
                            sums[0][o] = s.mul_add(w, loaded[0], sums[0][o]);
                            sums[1][o] = s.mul_add(w, loaded[1], sums[1][o]);
                        }
                    }
                }
            }
            // Over all `B` (a constant), not `0..count`: a bound known only at run time keeps
            // the accumulators in memory instead of registers.
            let [upper_sums, lower_sums] = sums;
            for (o, (upper, lower)) in upper_sums.into_iter().zip(lower_sums).enumerate() {
                if o >= count {
                    break;
                }
                let bias = s.splat(epilogue.bias_of(first + o));
                if epilogue.max_pool {
                    // The larger of the two rows, then of each pair of columns: lane k of
                    // `pooled` (k < LANES / 2) is pooled column left / 2 + k.
                    let rows = s.max(upper, lower);
                    let (even, odd) = s.deinterleave(rows, rows);
                    let pooled = epilogue.finish(s, bias, s.max(even, odd));
                    let column = left / 2;
                    let valid = (pooled_width as isize - column as isize).min(lanes / 2);
                    store_first(
                        s,
                        out,
                        o * plane_len + top / 2 * pooled_width + column,
                        valid,
                        pooled,
                    );
                    continue;
                }
                for (row, sum) in [upper, lower].into_iter().enumerate() {
                    if top + row >= out_height {
                        break;
                    }
                    store_first(
                        s,
                        out,
                        o * plane_len + (top + row) * out_width + left,
                        (out_width - left) as isize,
                        epilogue.finish(s, bias, sum),
                    );
                }
            }
        }
    }
}

/// Writes the first `count` lanes (clamped to `0..LANES`) of `value` at `out[at..]`. (A
/// function, not a closure: see `winograd::combine_row`.)
#[inline(always)]
fn store_first<S: Simd>(s: S, out: &mut [f32], at: usize, count: isize, value: S::V) {
    let count = count.clamp(0, S::LANES as isize) as usize;
    if count > 0 {
        let target = &mut out[at..at + count];
        // SAFETY: the `count` lanes written are `target`, inside `out`.
        unsafe { s.store_masked(target.as_mut_ptr(), s.mask(0, count as isize), value) };
    }
}
