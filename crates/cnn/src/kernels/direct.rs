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
//! Chosen only with AVX-512 ([`preferred`]). With AVX2 the same kernel (tested on every
//! instruction set) loses to the implicit GEMM: measured on one core of an AMD EPYC Zen 3
//! (`cargo bench -p cnn --bench conv_algorithms`), LeNet-5's first layer (1 to 6 channels,
//! 5x5, with ReLU and pooling) 0.63-0.68x im2col's time against the implicit GEMM's 0.54-0.57x,
//! `cnn4`'s (1 to 32 channels, 3x3, 28x28) 1.6-1.75x against 0.83x. With half the lanes, each
//! of its register blocks does a quarter of the multiply-adds per loop overhead.
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

/// Whether a layer built for `isa` computes `g` with this kernel rather than im2col (see the
/// module doc). Not a 1x1 kernel: that is a plain matrix product, which the implicit GEMM's
/// packed product runs faster (64 to 128 channels on 14x14 maps: 105-112 against 72 GFLOP/s
/// at batch 64 on an AMD EPYC Zen 4; 32 to 64 on 28x28: the same).
pub fn preferred(isa: Isa, g: &ConvGeometry) -> bool {
    isa == Isa::Avx512 && supports(g) && g.window.kernel != [1, 1]
}

/// Whether [`conv_forward`] computes this convolution.
pub fn supports(g: &ConvGeometry) -> bool {
    g.window.stride == [1, 1]
        && g.patch_len() <= MAX_PATCH
        && g.window.kernel[1] <= MAX_KERNEL_WIDTH
}

/// Output channels computed together for `g` with `isa`: of [`Isa::direct_channel_blocks`],
/// the one that computes the fewest channels past the last (6 output channels go as one block
/// of 6, not two of 4), the larger on a tie.
pub fn channel_block(isa: Isa, g: &ConvGeometry) -> usize {
    let channels = g.output.channels;
    let blocks = isa.direct_channel_blocks();
    let computed = |block: usize| channels.div_ceil(block) * block;
    blocks
        .iter()
        .copied()
        .min_by_key(|&block| (computed(block), usize::MAX - block))
        .expect("at least one block size")
}

/// `weight` (`[OC, C * KH * KW]`) regrouped for [`conv_forward`] with `isa`: per block of `B`
/// output channels ([`channel_block`]), tap by tap, the block's weights for that tap
/// (`[OC / B][C * KH * KW][B]`), zero for channels past the last.
pub fn block_weights(isa: Isa, g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    let (channels_out, patch, block) = (g.output.channels, g.patch_len(), channel_block(isa, g));
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
    let block = channel_block(isa, g);
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
            block,
            image: &input[n * in_len..][..in_len],
            weights: &blocked_weights[block_index * block_len..][..block_len],
            epilogue,
            first,
            out,
        });
    };
    super::team::for_each_task_above(work, PARALLEL_MIN_WORK, batch * blocks, task);
}

/// Output channels `first..first + B` (fewer at the end) of one image: every pair of output
/// rows, a register of columns at a time, then the epilogue. `weights` is the block's part of
/// [`block_weights`]; `out` holds the block's output planes (`[OH, OW]` each, or pooled).
struct ChannelBlock<'a> {
    g: &'a ConvGeometry,
    /// `B`, from [`channel_block`].
    block: usize,
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
        match self.block {
            8 => channel_block_of::<S, 8>(s, self),
            6 => channel_block_of::<S, 6>(s, self),
            4 => channel_block_of::<S, 4>(s, self),
            block => unreachable!("no direct block of {block} channels"),
        }
    }
}

/// [`ChannelBlock`] with `B` output channels, two rows of a register each, in registers.
/// Strips of a register of output columns are taken in turn, so that the kernel's column
/// masks are computed once per strip, then every pair of rows of the strip.
#[inline(always)]
fn channel_block_of<S: Simd, const B: usize>(s: S, block: ChannelBlock<'_>) {
    let ChannelBlock {
        g,
        block: _,
        image,
        weights,
        epilogue,
        first,
        out,
    } = block;
    let (channels, height, width) = (g.input.channels, g.input.height, g.input.width);
    let (out_height, out_width) = (g.output.height, g.output.width);
    let [kh, kw] = g.window.kernel;
    let [pad_y, pad_x] = g.window.padding;
    let count = B.min(g.output.channels - first);
    assert!(kw <= MAX_KERNEL_WIDTH && weights.len() == g.patch_len() * B);
    assert_eq!(image.len(), g.input.len());
    let pooled_height = out_height / 2;
    assert!(out.len() >= count * epilogue.output_shape(g.output).plane());
    let zero = s.zero();
    // Each tap (c, i, j), in the order of the weights: its input offset from the window's
    // top-left pixel, and its column j (which picks its mask).
    let mut taps = [(0isize, 0usize); MAX_PATCH];
    for (t, tap) in taps.iter_mut().take(g.patch_len()).enumerate() {
        let (c, i, j) = (t / (kh * kw), t / kw % kh, t % kw);
        *tap = (((c * height + i) * width + j) as isize, j);
    }
    let taps = &taps[..g.patch_len()];
    for left in (0..out_width).step_by(S::LANES) {
        // Tap column j reads input columns left + l + j - pad for lanes l: those inside the
        // image (and inside the output row).
        let mut masks = [s.mask(0, 0); MAX_KERNEL_WIDTH];
        for (j, mask) in masks.iter_mut().enumerate().take(kw) {
            let column = (left + j) as isize - pad_x as isize;
            let valid_output = (out_width - left) as isize;
            *mask = s.mask(-column, (width as isize - column).min(valid_output));
        }
        // What the strip's stores write: its columns, or its pooled columns.
        let strip = Strip::new(s, left, out_width, epilogue.max_pool);
        for top in (0..out_height).step_by(2) {
            if epilogue.max_pool && top / 2 >= pooled_height {
                break;
            }
            let mut sums = [[zero; B]; 2];
            // Input row of the first kernel row for output row `top`.
            let first_row = top as isize - pad_y as isize;
            if first_row >= 0 && first_row + (kh as isize) < height as isize {
                // Both output rows' windows lie inside the image's rows (every row but the
                // first and last few): one flat loop over the taps.
                let corner = first_row * width as isize + left as isize - pad_x as isize;
                accumulate_inside::<S, B>(
                    s, image, corner, width, taps, weights, &masks, &mut sums,
                );
                store_rows::<S, B>(s, out, &sums, top, &strip, (first, count), epilogue, g);
                continue;
            }
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
                    let taps = &weights[(c * kh + i) * kw * B..][..kw * B];
                    let masks = &masks[..kw];
                    match (row(0), row(1)) {
                        (Some(upper), Some(lower)) => accumulate_taps::<S, B, 2>(
                            s,
                            image,
                            [upper, lower],
                            taps,
                            masks,
                            &mut sums,
                        ),
                        (Some(upper), None) => {
                            let [upper_sums, _] = &mut sums;
                            let upper_sums = std::slice::from_mut(upper_sums)
                                .try_into()
                                .expect("one row");
                            accumulate_taps::<S, B, 1>(s, image, [upper], taps, masks, upper_sums)
                        }
                        (None, Some(lower)) => {
                            let [_, lower_sums] = &mut sums;
                            let lower_sums = std::slice::from_mut(lower_sums)
                                .try_into()
                                .expect("one row");
                            accumulate_taps::<S, B, 1>(s, image, [lower], taps, masks, lower_sums)
                        }
                        // Both rows lie in the padding: nothing to add.
                        (None, None) => {}
                    }
                }
            }
            store_rows::<S, B>(s, out, &sums, top, &strip, (first, count), epilogue, g);
        }
    }
}

/// Where the stores of a strip of output columns go: `columns` values from output column (or,
/// pooled, pooled column) `start`, with their mask.
#[derive(Clone, Copy)]
pub(super) struct Strip<S: Simd> {
    start: usize,
    columns: usize,
    mask: S::Mask,
}

impl<S: Simd> Strip<S> {
    /// The strip of a register of output columns from `left`.
    #[inline(always)]
    pub(super) fn new(s: S, left: usize, out_width: usize, pooled: bool) -> Self {
        let (start, columns) = if pooled {
            let start = left / 2;
            (
                start,
                (out_width / 2).saturating_sub(start).min(S::LANES / 2),
            )
        } else {
            (left, out_width.saturating_sub(left).min(S::LANES))
        };
        Strip {
            start,
            columns,
            mask: s.mask(0, columns as isize),
        }
    }

    /// Writes the strip's lanes of `value` to row `row` (`pitch` wide) of `plane`.
    #[inline(always)]
    pub(super) fn store(&self, s: S, plane: &mut [f32], row: usize, pitch: usize, value: S::V) {
        if self.columns > 0 {
            let target = &mut plane[row * pitch + self.start..][..self.columns];
            // SAFETY: the masked lanes written are `target`, inside `plane`.
            unsafe { s.store_masked(target.as_mut_ptr(), self.mask, value) };
        }
    }

    /// The strip's lanes of row `row` (`pitch` wide) of `plane`, the others zero.
    #[inline(always)]
    pub(super) fn load(&self, s: S, plane: &[f32], row: usize, pitch: usize) -> S::V {
        if self.columns == 0 {
            return s.zero();
        }
        let source = &plane[row * pitch + self.start..][..self.columns];
        // SAFETY: the masked lanes read are `source`, inside `plane`.
        unsafe { s.load_masked(source.as_ptr(), self.mask) }
    }

    /// The epilogue of `values` (bias `bias`), stored to row `row` of `plane`: what
    /// [`Strip::store`] writes for an unpooled row, adding the values there when the epilogue
    /// accumulates.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn finish_store(
        &self,
        s: S,
        plane: &mut [f32],
        (row, pitch): (usize, usize),
        epilogue: &Epilogue<'_>,
        bias: S::V,
        values: S::V,
    ) {
        let existing = if epilogue.accumulate {
            self.load(s, plane, row, pitch)
        } else {
            s.zero()
        };
        let finished = epilogue.finish_onto(s, bias, values, existing);
        self.store(s, plane, row, pitch, finished);
    }
}

/// The epilogue of two output rows' sums (`sums[row][channel]`, the strip's register of
/// columns) of output rows `top` and `top + 1`, written to `out` (the block's planes, output
/// channels `first..first + count`): bias and ReLU, or the 2x2 maxima of the pair.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn store_rows<S: Simd, const B: usize>(
    s: S,
    out: &mut [f32],
    sums: &[[S::V; B]; 2],
    top: usize,
    strip: &Strip<S>,
    (first, count): (usize, usize),
    epilogue: Epilogue<'_>,
    g: &ConvGeometry,
) {
    let (out_height, out_width) = (g.output.height, g.output.width);
    let plane_len = epilogue.output_shape(g.output).plane();
    // Over all `B` (a constant), not `0..count`: a bound known only at run time keeps the
    // accumulators in memory instead of registers.
    let [upper_sums, lower_sums] = sums;
    for (o, (&upper, &lower)) in upper_sums.iter().zip(lower_sums).enumerate() {
        if o >= count {
            break;
        }
        let plane = &mut out[o * plane_len..][..plane_len];
        let bias = s.splat(epilogue.bias_of(first + o));
        if epilogue.max_pool {
            // The larger of the two rows, then of each pair of columns: lane k of `pooled`
            // (k < LANES / 2) is pooled column left / 2 + k.
            let rows = s.max(upper, lower);
            let (even, odd) = s.deinterleave(rows, rows);
            let pooled = epilogue.finish(s, bias, s.max(even, odd));
            strip.store(s, plane, top / 2, out_width / 2, pooled);
            continue;
        }
        strip.finish_store(s, plane, (top, out_width), &epilogue, bias, upper);
        if top + 1 < out_height {
            strip.finish_store(s, plane, (top + 1, out_width), &epilogue, bias, lower);
        }
    }
}

/// Adds every tap to `sums` for two output rows whose windows lie inside the image's rows:
/// `corner` is the input offset of the upper window's top-left pixel (for lane 0), `taps`
/// each tap's offset from it and column, `weights` `[taps][B]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn accumulate_inside<S: Simd, const B: usize>(
    s: S,
    image: &[f32],
    corner: isize,
    width: usize,
    taps: &[(isize, usize)],
    weights: &[f32],
    masks: &[S::Mask; MAX_KERNEL_WIDTH],
    sums: &mut [[S::V; B]; 2],
) {
    for (&(offset, column), tap) in taps.iter().zip(weights.chunks_exact(B)) {
        let (at, mask) = (corner + offset, masks[column]);
        // SAFETY: both rows lie inside the image (the caller's condition), and the mask keeps
        // the unmasked lanes inside their row; masked-off lanes are not read.
        let (upper, lower) = unsafe {
            let base = image.as_ptr();
            (
                s.load_masked(base.wrapping_offset(at), mask),
                s.load_masked(base.wrapping_offset(at + width as isize), mask),
            )
        };
        for (o, &weight) in tap.iter().enumerate() {
            let w = s.splat(weight);
            sums[0][o] = s.mul_add(w, upper, sums[0][o]);
            sums[1][o] = s.mul_add(w, lower, sums[1][o]);
        }
    }
}

/// Adds one kernel row's taps (`taps`: `[KW][B]` weights, `masks`: `[KW]`) to `sums`, for
/// `ROWS` output rows whose input rows (all inside the image) start, for lane 0 of tap column
/// 0, at `starts`: per tap, one load per row and one broadcast per output channel.
#[inline(always)]
fn accumulate_taps<S: Simd, const B: usize, const ROWS: usize>(
    s: S,
    image: &[f32],
    starts: [isize; ROWS],
    taps: &[f32],
    masks: &[S::Mask],
    sums: &mut [[S::V; B]; ROWS],
) {
    for (j, (tap, &mask)) in taps.chunks_exact(B).zip(masks).enumerate() {
        let mut rows = [s.zero(); ROWS];
        for (row, &start) in rows.iter_mut().zip(&starts) {
            // SAFETY: unmasked lanes read input column left + l + j - pad of a row inside
            // the image, which the mask keeps inside that row; masked-off lanes are not read.
            *row =
                unsafe { s.load_masked(image.as_ptr().wrapping_offset(start + j as isize), mask) };
        }
        for (o, &weight) in tap.iter().enumerate() {
            let w = s.splat(weight);
            for (sum, &row) in sums.iter_mut().zip(&rows) {
                sum[o] = s.mul_add(w, row, sum[o]);
            }
        }
    }
}
