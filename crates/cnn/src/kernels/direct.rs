//! Direct convolution for layers with few input channels (a first layer on grey or colour
//! images): no unfolding, no matrix product. Each output row is computed 16 pixels at a time:
//! the input row under each kernel tap is loaded once and multiplied, in registers, by 8
//! output channels' weights for that tap (broadcast), for two output rows at once.
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
//!
//! Written with AVX-512 instructions; without them, convolutions go to im2col.

use super::conv::ConvGeometry;
use super::Epilogue;

/// Largest `C * KH * KW` computed here: up to a 5x5 kernel on colour images. Beyond it the
/// im2col product has enough rows to run at full speed.
const MAX_PATCH: usize = 80;

/// Widest kernel handled (the kernel's column masks are kept in an array).
const MAX_KERNEL_WIDTH: usize = 16;

/// Output channels computed together: each has two rows of 16 pixels in registers.
const CHANNEL_BLOCK: usize = 8;

/// Multiply-adds below which the convolution runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// Whether [`conv_forward`] computes this convolution.
pub fn supports(g: &ConvGeometry) -> bool {
    g.window.stride == [1, 1]
        && g.patch_len() <= MAX_PATCH
        && g.window.kernel[1] <= MAX_KERNEL_WIDTH
        && has_avx512()
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `weight` (`[OC, C * KH * KW]`) regrouped for [`conv_forward`]: per block of
/// [`CHANNEL_BLOCK`] output channels, tap by tap, the block's weights for that tap
/// (`[OC / 8][C * KH * KW][8]`), zero for channels past the last.
pub fn block_weights(g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    let (channels_out, patch) = (g.output.channels, g.patch_len());
    let mut blocks = vec![0.0; channels_out.div_ceil(CHANNEL_BLOCK) * patch * CHANNEL_BLOCK];
    for (oc, row) in weight.chunks_exact(patch).take(channels_out).enumerate() {
        let block = &mut blocks[oc / CHANNEL_BLOCK * patch * CHANNEL_BLOCK..];
        for (tap, &w) in row.iter().enumerate() {
            block[tap * CHANNEL_BLOCK + oc % CHANNEL_BLOCK] = w;
        }
    }
    blocks
}

/// `output[n] = conv(input[n], weight)` then the epilogue, for every image of the batch: as
/// [`super::conv::conv2d_forward`], whose shapes it takes, with the weights as
/// [`block_weights`] gives them. Call only where [`supports`] holds.
pub fn conv_forward(
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
    let (blocks, block_len) = (
        g.output.channels.div_ceil(CHANNEL_BLOCK),
        g.patch_len() * CHANNEL_BLOCK,
    );
    assert_eq!(blocked_weights.len(), blocks * block_len);
    let work = batch * g.output.len() * g.patch_len();
    let output = super::team::SharedSlice(output.as_mut_ptr());
    let plane = out_len / g.output.channels;
    let task = |index: usize| {
        let (n, block) = (index / blocks, index % blocks);
        let first = block * CHANNEL_BLOCK;
        let count = CHANNEL_BLOCK.min(g.output.channels - first);
        // SAFETY: each task takes the output planes of its own image and block of channels,
        // inside `output` (asserted above).
        let out = unsafe {
            std::slice::from_raw_parts_mut(output.at(n * out_len + first * plane), count * plane)
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supports` checked that the CPU has AVX-512F.
        unsafe {
            avx512::channel_block(
                g,
                &input[n * in_len..][..in_len],
                &blocked_weights[block * block_len..][..block_len],
                epilogue,
                first,
                out,
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (n, out, &epilogue);
    };
    if super::team::parts_for(work, PARALLEL_MIN_WORK) > 1 {
        super::team::for_each_task(batch * blocks, task);
    } else {
        (0..batch * blocks).for_each(task);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ConvGeometry, Epilogue, CHANNEL_BLOCK, MAX_KERNEL_WIDTH};
    use crate::kernels::lanes;
    use std::arch::x86_64::*;

    /// Output channels `first..first + CHANNEL_BLOCK` (fewer at the end) of one image: every
    /// pair of output rows, 16 columns at a time, then the epilogue. `weights` is the block's
    /// part of [`super::block_weights`]; `out` holds the block's output planes (`[OH, OW]`
    /// each, or pooled).
    #[target_feature(enable = "avx512f")]
    pub(super) fn channel_block(
        g: &ConvGeometry,
        image: &[f32],
        weights: &[f32],
        epilogue: Epilogue<'_>,
        first: usize,
        out: &mut [f32],
    ) {
        let (channels, height, width) = (g.input.channels, g.input.height, g.input.width);
        let (out_height, out_width) = (g.output.height, g.output.width);
        let [kh, kw] = g.window.kernel;
        let [pad_y, pad_x] = g.window.padding;
        let count = CHANNEL_BLOCK.min(g.output.channels - first);
        assert!(kw <= MAX_KERNEL_WIDTH && weights.len() == g.patch_len() * CHANNEL_BLOCK);
        assert_eq!(image.len(), g.input.len());
        let (pooled_height, pooled_width) = (out_height / 2, out_width / 2);
        let zero = _mm512_setzero_ps();
        for top in (0..out_height).step_by(2) {
            if epilogue.max_pool && top / 2 >= pooled_height {
                break;
            }
            for left in (0..out_width).step_by(16) {
                let columns = lanes(0, (out_width - left) as isize);
                // Tap column j reads input columns left + l + j - pad for lanes l: those
                // inside the image.
                let mut masks = [0 as __mmask16; MAX_KERNEL_WIDTH];
                for (j, mask) in masks.iter_mut().enumerate().take(kw) {
                    let column = (left + j) as isize - pad_x as isize;
                    *mask = lanes(-column, width as isize - column) & columns;
                }
                let mut sums = [[zero; CHANNEL_BLOCK]; 2];
                let mut taps = weights.chunks_exact(CHANNEL_BLOCK);
                for c in 0..channels {
                    for i in 0..kh {
                        // The input rows under output rows top and top + 1, if inside.
                        let row = |r: usize| {
                            let y = (top + r + i) as isize - pad_y as isize;
                            (0..height as isize).contains(&y).then(|| {
                                ((c * height) as isize + y) * width as isize + left as isize
                                    - pad_x as isize
                            })
                        };
                        let (upper_row, lower_row) = (row(0), row(1));
                        for (j, &mask) in masks.iter().enumerate().take(kw) {
                            let tap: &[f32; CHANNEL_BLOCK] = taps
                                .next()
                                .expect("a weight per tap")
                                .try_into()
                                .expect("a block of weights");
                            // SAFETY: unmasked lanes read input column left + l + j - pad of
                            // a row inside the image, which the mask keeps inside that row;
                            // masked-off lanes are not read.
                            let load = |row: Option<isize>| match row {
                                Some(start) => unsafe {
                                    _mm512_maskz_loadu_ps(
                                        mask,
                                        image.as_ptr().wrapping_offset(start + j as isize),
                                    )
                                },
                                None => zero,
                            };
                            let (upper, lower) = (load(upper_row), load(lower_row));
                            for o in 0..CHANNEL_BLOCK {
                                let w = _mm512_set1_ps(tap[o]);
                                sums[0][o] = _mm512_fmadd_ps(w, upper, sums[0][o]);
                                sums[1][o] = _mm512_fmadd_ps(w, lower, sums[1][o]);
                            }
                        }
                    }
                }
                for (o, pair) in (0..count).map(|o| (o, [sums[0][o], sums[1][o]])) {
                    let oc = first + o;
                    let bias = _mm512_set1_ps(epilogue.bias_of(oc));
                    let activate = |v: __m512| epilogue.finish_16(bias, v);
                    if epilogue.max_pool {
                        // The larger of the two rows, then of each pair of columns: lane k of
                        // `pooled` is pooled column left / 2 + k.
                        let rows = _mm512_max_ps(pair[0], pair[1]);
                        let even =
                            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
                        let odd =
                            _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0);
                        let pooled = _mm512_max_ps(
                            _mm512_permutexvar_ps(even, rows),
                            _mm512_permutexvar_ps(odd, rows),
                        );
                        let column = left / 2;
                        let mask = lanes(0, 8) & lanes(0, pooled_width as isize - column as isize);
                        if mask != 0 {
                            let at = (o * pooled_height + top / 2) * pooled_width + column;
                            assert!(at + (mask.count_ones() as usize) <= out.len());
                            // SAFETY: unmasked lanes write pooled columns below the pooled
                            // width, in row top / 2 < pooled height of plane o, inside `out`.
                            unsafe {
                                _mm512_mask_storeu_ps(
                                    out.as_mut_ptr().add(at),
                                    mask,
                                    activate(pooled),
                                )
                            };
                        }
                        continue;
                    }
                    let mask = columns;
                    for (row, sum) in pair.into_iter().enumerate() {
                        if top + row >= out_height {
                            break;
                        }
                        let at = (o * out_height + top + row) * out_width + left;
                        assert!(at + (mask.count_ones() as usize) <= out.len());
                        // SAFETY: unmasked lanes write columns below the output width, in
                        // row top + row of plane o, inside `out`.
                        unsafe {
                            _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), mask, activate(sum))
                        };
                    }
                }
            }
        }
    }
}
