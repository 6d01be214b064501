//! 3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, 2015):
//! each 2x2 block of outputs ("tile") is computed from the 4x4 input patch under it with 16
//! multiplications per input channel instead of im2col's 36.
//!
//! In matrix form, for one tile and one (output, input) channel pair:
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, where `g` is the 3x3 kernel, `d` the 4x4 patch and
//! ```text
//!      [1  0 -1  0]       [ 1    0    0 ]
//! Bᵀ = [0  1  1  0]   G = [1/2  1/2  1/2]   Aᵀ = [1 1  1  0]
//!      [0 -1  1  0]       [1/2 -1/2  1/2]        [0 1 -1 -1]
//!      [0  1  0 -1]       [ 0    0    1 ]
//! ```
//! Summed over input channels, each of the 16 positions of the 4x4 transformed tile is a matrix
//! product: `M[ξ] (OC x tiles) = U[ξ] (OC x C) · V[ξ] (C x tiles)`. So the kernel is: transform
//! the weights (`U`), transform the input patches (`V`), run 16 matrix products, transform back
//! (`Y`). The transforms only add and halve, so results stay within f32 rounding of the direct
//! sum.
//!
//! Why not larger tiles: F(4x4, 3x3) would do 1.78x fewer multiplications again, but its
//! transforms (entries up to 8, weights scaled by 1/6 and 1/24) leave float32 errors of up to
//! 1.5e-5 of the result on random data, past the 1e-5 that every fast kernel is held to against
//! the reference, and still 8.8e-6 with the better points 0, 1, -1, 1/2, -2, too close to that
//! bound for random tests; F(2x2, 3x3) stays under 1e-6 (`bench/winograd_error.py`).
//!
//! With AVX-512 all three steps run in registers, 16 tiles of a tile row at a time
//! ([`avx512`]), and `U` is packed once for the product. Measured on `cnn4` at batch 1: the
//! input transform of a block went from 7.5 to 3.9 us, the output transform from 2.7 to 1.8
//! us, the 16 products of the 64-channel layer from 28 to 21 us (against 16 calls of `gemm`),
//! and the network's latency from 165 to 120 us. Other machines run the portable loops and
//! `gemm`; the tests hold the two to each other.
//!
//! Work is split by rows of tiles across the whole batch: a thread takes a contiguous run of
//! tile rows (so even one large image can use every core), and each block of rows is sized so
//! that its `V` and `M` stay in the core's cache.

use super::conv::ConvGeometry;
use super::gemm::{matmul, MatRef, Threading};
use super::team::{for_each_chunk_mut, parts_for, SharedSlice};
use super::Epilogue;
use std::sync::OnceLock;

/// Positions in a transformed 4x4 tile: one SGEMM each.
const POSITIONS: usize = 16;

/// Below this many input channels the SGEMMs are too thin to pay for the transforms (a
/// first layer on grey images has one): im2col does better there.
const MIN_CHANNELS: usize = 8;

/// A block's `V` and `M` together take about this many floats (1 MiB): they stay in a core's
/// L2 cache between the transforms and the SGEMMs.
const BLOCK_FLOATS: usize = 1 << 18;

/// The same at batch 1 (256 KiB): there the weights of the whole network are most of what a
/// pass touches, and smaller blocks leave more of them in the caches from one pass to the
/// next. Measured on `cnn4`: batch-1 latency 4% lower; at batch 16 and 64 the thinner SGEMMs
/// cost 11% of the throughput, hence the larger blocks there.
const BATCH_1_BLOCK_FLOATS: usize = 1 << 16;

/// The matrices' rows are padded to a multiple of this many tiles (one AVX-512 register): the
/// SGEMM then reads `V` in place instead of copying it into its own layout first.
const COLUMN_ALIGN: usize = 16;

/// Below this many multiply-adds of SGEMM work a convolution runs on the calling thread, unless
/// it runs in a [`super::team::Team`]: measured on `cnn4` at batch 1 (up to 3.7M), handing
/// half of it to the rayon pool cost more in wake-ups than it saved.
const PARALLEL_MIN_WORK: usize = 1 << 23;

/// Whether [`conv3x3_forward`] computes this convolution.
pub fn supports(g: &ConvGeometry) -> bool {
    g.window.kernel == [3, 3]
        && g.window.stride == [1, 1]
        && g.window.padding[0] <= 2
        && g.window.padding[1] <= 2
        && g.input.channels >= MIN_CHANNELS
}

/// Whether [`conv3x3_forward`] computes the input gradient of this convolution (a 3x3 stride-1
/// convolution of the output gradient: see [`ConvGeometry::transposed`]).
pub fn supports_input_gradient(g: &ConvGeometry) -> bool {
    // The transposed convolution keeps kernel and stride; its padding `2 - P` needs P <= 2.
    g.window.padding[0] <= 2 && g.window.padding[1] <= 2 && supports(&g.transposed())
}

/// Where the 16 transformed weight matrices `U[ξ]` (`OC x C` each) come from: the layer's
/// weights as they are (`[OC, C, 3, 3]`, a forward pass), or flipped and with input and output
/// channels swapped (`W'[c, oc, i, j] = W[oc, c, 2 - i, 2 - j]`), which turns the same kernel
/// into the gradient with respect to the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightOrder {
    Forward,
    FlippedTransposed,
}

/// What the fast kernels derive from a layer's weights: Winograd's transformed weights `U` (per
/// [`WeightOrder`]) and the direct kernel's blocked copy ([`super::direct`]). Each is computed
/// once per set of weights, then shared by every pass and thread until the weights change
/// ([`TransformedWeights::clear`]).
#[derive(Debug, Default)]
pub struct TransformedWeights {
    forward: OnceLock<Vec<f32>>,
    flipped_transposed: OnceLock<Vec<f32>>,
    direct_blocks: OnceLock<Vec<f32>>,
}

impl TransformedWeights {
    /// `U` for `weight` (`[OC, C, 3, 3]` of the layer) in `order`, `geometry` being the
    /// convolution as computed.
    pub fn get(&self, geometry: &ConvGeometry, weight: &[f32], order: WeightOrder) -> &[f32] {
        let cell = match order {
            WeightOrder::Forward => &self.forward,
            WeightOrder::FlippedTransposed => &self.flipped_transposed,
        };
        cell.get_or_init(|| {
            let (channels_out, channels) = (geometry.output.channels, geometry.input.channels);
            let mut transformed = vec![0.0; weights_len(channels_out, channels, has_avx512())];
            transform_weights(
                weight,
                [channels_out, channels],
                order,
                has_avx512(),
                &mut transformed,
            );
            transformed
        })
    }

    /// `weight` (`[OC, C * KH * KW]`) as [`super::direct`] reads it: see
    /// [`super::direct::block_weights`].
    pub fn direct_blocks(&self, geometry: &ConvGeometry, weight: &[f32]) -> &[f32] {
        self.direct_blocks
            .get_or_init(|| super::direct::block_weights(geometry, weight))
    }

    /// Forgets the transformed weights: call whenever the weights may have changed.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Tile counts: `[rows, columns]` of 2x2 output tiles.
fn tiles(g: &ConvGeometry) -> [usize; 2] {
    [g.output.height.div_ceil(2), g.output.width.div_ceil(2)]
}

/// Tiles are laid out `stride = columns + 1` to a row: the extra one, never written out, lets
/// every transform run as one long loop over a whole stretch of rows (its neighbours to the
/// right and below are then always `+1` and `+stride` away).
fn stride(g: &ConvGeometry) -> usize {
    tiles(g)[1] + 1
}

/// Floats of scratch per block of `block_rows` tile rows: `V`, `M`, and the buffers of the
/// transforms.
fn block_scratch_len(g: &ConvGeometry, block_rows: usize) -> usize {
    let tile_count = (block_rows * stride(g)).next_multiple_of(COLUMN_ALIGN);
    POSITIONS
        * (position_stride(g.input.channels, tile_count)
            + position_stride(g.output.channels, tile_count))
        + transform_buffers_len(block_rows, stride(g))
}

/// Floats from one position's matrix to the next in `V` and `M` (`rows x tile_count` each,
/// `tile_count` a multiple of 16): an odd multiple of 16, so that the 16 matrices start at 16
/// different cache-line offsets within a 4 KiB page. The transforms touch all 16 at once, and
/// matrices a multiple of 4 KiB apart would all fall in the same set of the L1 cache.
fn position_stride(rows: usize, tile_count: usize) -> usize {
    let len = rows * tile_count;
    if (len / 16) % 2 == 1 {
        len
    } else {
        len + 16
    }
}

/// The input transform's buffers: the padded input split into 4 planes by row and column
/// parity (`block_rows + 1` rows each), and 8 row-wise combinations; the output transform
/// reuses them.
fn transform_buffers_len(block_rows: usize, stride: usize) -> usize {
    12 * (block_rows + 1) * stride + 16
}

/// `output[n] = conv(input[n], weight)` then the epilogue, for every image of the batch.
///
/// `geometry` is the convolution as computed (for [`WeightOrder::FlippedTransposed`], the
/// transposed one: its input is the forward pass's output gradient); `transformed` comes from
/// [`TransformedWeights::get`] for the same geometry. `input` and `output` hold `batch` images
/// in NCHW (`output` in the epilogue's output shape).
pub fn conv3x3_forward(
    geometry: &ConvGeometry,
    batch: usize,
    input: &[f32],
    transformed: &[f32],
    epilogue: Epilogue<'_>,
    output: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let g = geometry;
    let (channels, channels_out) = (g.input.channels, g.output.channels);
    let [tile_rows, tile_cols] = tiles(g);
    let all_rows = batch * tile_rows;
    let block_floats = if batch == 1 {
        BATCH_1_BLOCK_FLOATS
    } else {
        BLOCK_FLOATS
    };
    let block_rows = (block_floats / (POSITIONS * (channels + channels_out) * (tile_cols + 1)))
        .clamp(1, tile_rows.max(1));
    let work = POSITIONS * channels * channels_out * all_rows * tile_cols;
    let rows_per_run = all_rows.div_ceil(parts_for(work, PARALLEL_MIN_WORK)).max(1);
    let runs = all_rows.div_ceil(rows_per_run);

    assert_eq!(
        transformed.len(),
        weights_len(channels_out, channels, has_avx512())
    );
    let per_run = block_scratch_len(g, block_rows);
    let run_scratch = super::scratch_prefix(scratch, runs * per_run);

    let (out_len, out_ptr) = (output.len(), SharedSlice(output.as_mut_ptr()));
    for_each_chunk_mut(run_scratch, per_run, |index, work| {
        let first = index * rows_per_run;
        let last = (first + rows_per_run).min(all_rows);
        let mut start = first;
        while start < last {
            let end = (start + block_rows).min(last);
            // SAFETY: runs cover disjoint tile rows, and a tile row writes only the two output
            // rows under it, so no two runs write the same output value.
            let output = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(0), out_len) };
            block(
                g,
                input,
                transformed,
                epilogue,
                output,
                start..end,
                block_rows,
                work,
            );
            start = end;
        }
    });
}

/// Whether the transforms and the product run with AVX-512 ([`avx512`]). `U` is then packed
/// for [`avx512::product`] (blocks of [`PRODUCT_ROWS`] output channels, channel by channel),
/// else 16 row-major `OC x C` matrices for `gemm`.
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

/// Output channels that [`avx512::product`] computes together, 8 rows of `M` in registers;
/// packed `U` pads the output channels to a multiple of it with zeros.
const PRODUCT_ROWS: usize = 8;

/// Floats of `U` for a layer, packed or not.
fn weights_len(channels_out: usize, channels: usize, packed: bool) -> usize {
    if packed {
        POSITIONS * channels_out.next_multiple_of(PRODUCT_ROWS) * channels
    } else {
        POSITIONS * channels_out * channels
    }
}

/// `U[ξ][oc, c] = (G g Gᵀ)[ξ]` for every channel pair: 16 row-major `OC x C` matrices, or,
/// `packed`, each as `[OC / 8][C][8]` (zeros past the last output channel).
fn transform_weights(
    weight: &[f32],
    [channels_out, channels]: [usize; 2],
    order: WeightOrder,
    packed: bool,
    transformed: &mut [f32],
) {
    let plane = if packed {
        channels_out.next_multiple_of(PRODUCT_ROWS) * channels
    } else {
        channels_out * channels
    };
    let index = |position: usize, oc: usize, c: usize| {
        position * plane
            + if packed {
                (oc / PRODUCT_ROWS * channels + c) * PRODUCT_ROWS + oc % PRODUCT_ROWS
            } else {
                oc * channels + c
            }
    };
    for oc in 0..channels_out {
        for c in 0..channels {
            let mut g = [0.0f32; 9];
            match order {
                WeightOrder::Forward => g.copy_from_slice(&weight[(oc * channels + c) * 9..][..9]),
                WeightOrder::FlippedTransposed => {
                    // The layer's weight is [C', OC', 3, 3] with C' = our OC, OC' = our C.
                    let source = &weight[(c * channels_out + oc) * 9..][..9];
                    for (k, v) in g.iter_mut().enumerate() {
                        *v = source[8 - k];
                    }
                }
            }
            // G g: 4 rows of 3.
            let mut gg = [[0.0f32; 3]; 4];
            for j in 0..3 {
                let (a, b, d) = (g[j], g[3 + j], g[6 + j]);
                gg[0][j] = a;
                gg[1][j] = 0.5 * (a + b + d);
                gg[2][j] = 0.5 * (a - b + d);
                gg[3][j] = d;
            }
            // (G g) Gᵀ: 4 x 4.
            for (i, row) in gg.iter().enumerate() {
                let (a, b, d) = (row[0], row[1], row[2]);
                let values = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
                for (j, v) in values.into_iter().enumerate() {
                    transformed[index(4 * i + j, oc, c)] = v;
                }
            }
        }
    }
}

/// Tile rows `rows` (numbered across the batch) through the three steps: input transform,
/// 16 SGEMMs, output transform.
#[allow(clippy::too_many_arguments)]
fn block(
    g: &ConvGeometry,
    input: &[f32],
    transformed_weights: &[f32],
    epilogue: Epilogue<'_>,
    output: &mut [f32],
    rows: std::ops::Range<usize>,
    block_rows: usize,
    work: &mut [f32],
) {
    let (channels, channels_out) = (g.input.channels, g.output.channels);
    let tile_count = (rows.len() * stride(g)).next_multiple_of(COLUMN_ALIGN);
    let (v_stride, m_stride) = (
        position_stride(channels, tile_count),
        position_stride(channels_out, tile_count),
    );
    let (v, rest) = work.split_at_mut(POSITIONS * v_stride);
    let (m, rest) = rest.split_at_mut(POSITIONS * m_stride);
    let buffers = &mut rest[..transform_buffers_len(block_rows, stride(g))];

    for segment in segments(g, rows.clone()) {
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            // SAFETY: the CPU has AVX-512F.
            unsafe { avx512::transform_input(g, input, segment, v, tile_count) };
            continue;
        }
        transform_input(g, input, segment, v, tile_count, buffers);
    }
    product(
        transformed_weights,
        v,
        m,
        [channels_out, channels, tile_count],
        [v_stride, m_stride],
    );
    for segment in segments(g, rows.clone()) {
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            // SAFETY: the CPU has AVX-512F.
            unsafe { avx512::transform_output(g, m, segment, tile_count, epilogue, output) };
            continue;
        }
        transform_output(g, m, segment, tile_count, epilogue, output, buffers);
    }
}

/// `M[ξ] = U[ξ] · V[ξ]` for the 16 positions; `shape` is `[OC, C, tile_count]`, `strides`
/// the floats from one position's matrix to the next in `V` and `M`.
fn product(u: &[f32], v: &[f32], m: &mut [f32], shape: [usize; 3], strides: [usize; 2]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512F.
        unsafe { avx512::product(u, v, m, shape, strides) };
        return;
    }
    product_with_gemm(u, v, m, shape, strides);
}

/// [`product`] as 16 calls of `gemm`, `U` not packed.
fn product_with_gemm(
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    [channels_out, channels, tile_count]: [usize; 3],
    [v_stride, m_stride]: [usize; 2],
) {
    for position in 0..POSITIONS {
        matmul(
            &mut m[position * m_stride..][..channels_out * tile_count],
            MatRef::row_major(
                &u[position * channels_out * channels..][..channels_out * channels],
                channels_out,
                channels,
            ),
            MatRef::row_major(
                &v[position * v_stride..][..channels * tile_count],
                channels,
                tile_count,
            ),
            false,
            Threading::Serial,
        );
    }
}

/// Part of a block that lies in one image: tile rows `first_row..first_row + rows` of
/// `image`, whose tiles start at column `column` of the block's matrices.
#[derive(Clone, Copy, Debug)]
struct Segment {
    image: usize,
    first_row: usize,
    rows: usize,
    column: usize,
}

/// Splits a block's tile rows (numbered across the batch) at image boundaries.
fn segments(g: &ConvGeometry, rows: std::ops::Range<usize>) -> impl Iterator<Item = Segment> {
    let tile_rows = tiles(g)[0];
    let stride = stride(g);
    let block_start = rows.start;
    let mut row = rows.start;
    std::iter::from_fn(move || {
        if row >= rows.end {
            return None;
        }
        let (image, first_row) = (row / tile_rows, row % tile_rows);
        let count = (tile_rows - first_row).min(rows.end - row);
        let segment = Segment {
            image,
            first_row,
            rows: count,
            column: (row - block_start) * stride,
        };
        row += count;
        Some(segment)
    })
}

multiversion! {
    /// `V[ξ][c, t] = (Bᵀ d B)[ξ]` for every channel `c` and tile `t` of the segment, `d` being
    /// the tile's 4x4 input patch (zero outside the image).
    ///
    /// The padded input is split into four planes by row and column parity, `stride` wide:
    /// tile `t`'s patch is then rows `t` and `t + stride` of the even- and odd-row planes,
    /// columns `t` and `t + 1`. So both combinations (`Bᵀ d` over rows, `· B` over columns)
    /// are long loops over the whole segment, shifted by `stride` or by one.
    fn transform_input(
        g: &ConvGeometry,
        input: &[f32],
        segment: Segment,
        v: &mut [f32],
        tile_count: usize,
        buffers: &mut [f32],
    ) {
        let (channels, height, width) = (g.input.channels, g.input.height, g.input.width);
        let [pad_y, pad_x] = g.window.padding;
        let stride = stride(g);
        let n = segment.rows * stride; // tiles in the segment, the extra column included
        let v_stride = position_stride(channels, tile_count);
        let plane_len = (segment.rows + 1) * stride + 1;
        let (planes, combined) = buffers.split_at_mut(4 * plane_len);
        for c in 0..channels {
            let image = &input[(segment.image * channels + c) * height * width..][..height * width];
            // planes[2 * column parity + row parity][r * stride + t]: the pixel at padded row
            // 2 * (first_row + r) + row parity, padded column 2t + column parity.
            for r in 0..=segment.rows {
                for row_parity in 0..2 {
                    let y = (2 * (segment.first_row + r) + row_parity) as isize - pad_y as isize;
                    let (even_columns, odd_columns) = planes.split_at_mut(2 * plane_len);
                    let even = &mut even_columns[row_parity * plane_len + r * stride..][..stride];
                    let odd = &mut odd_columns[row_parity * plane_len + r * stride..][..stride];
                    if y < 0 || y as usize >= height {
                        even.fill(0.0);
                        odd.fill(0.0);
                    } else {
                        split_columns(&image[y as usize * width..][..width], pad_x, even, odd);
                    }
                }
            }
            // The extra column of the last row reads one past the planes' rows: keep it finite.
            for plane in planes.chunks_exact_mut(plane_len) {
                plane[plane_len - 1] = 0.0;
            }
            // Bᵀ d over rows: d0 - d2, d1 + d2, d2 - d1, d1 - d3 with d0, d1 the even and odd rows
            // at tile t and d2, d3 the same one tile row down (t + stride). combined[2i + parity]
            // holds row i for even and odd columns.
            for parity in 0..2 {
                let even_rows = &planes[2 * parity * plane_len..][..plane_len];
                let odd_rows = &planes[(2 * parity + 1) * plane_len..][..plane_len];
                let (d0, d2) = (&even_rows[..n + 1], &even_rows[stride..][..n + 1]);
                let (d1, d3) = (&odd_rows[..n + 1], &odd_rows[stride..][..n + 1]);
                let row = |i: usize| {
                    let start = (2 * i + parity) * (n + 1);
                    start..start + n + 1
                };
                combine(&mut combined[row(0)], d0, d2, |a, b| a - b);
                combine(&mut combined[row(1)], d1, d2, |a, b| a + b);
                combine(&mut combined[row(2)], d2, d1, |a, b| a - b);
                combine(&mut combined[row(3)], d1, d3, |a, b| a - b);
            }
            // · B over columns: x0 - x2, x1 + x2, x2 - x1, x1 - x3 with x0, x1 the even and odd
            // columns at tile t and x2, x3 the same at t + 1.
            for i in 0..4 {
                let x_even = &combined[2 * i * (n + 1)..][..n + 1];
                let x_odd = &combined[(2 * i + 1) * (n + 1)..][..n + 1];
                let (x0, x2) = (&x_even[..n], &x_even[1..]);
                let (x1, x3) = (&x_odd[..n], &x_odd[1..]);
                let out = |j: usize| {
                    let start = (4 * i + j) * v_stride + c * tile_count + segment.column;
                    start..start + n
                };
                combine(&mut v[out(0)], x0, x2, |a, b| a - b);
                combine(&mut v[out(1)], x1, x2, |a, b| a + b);
                combine(&mut v[out(2)], x2, x1, |a, b| a - b);
                combine(&mut v[out(3)], x1, x3, |a, b| a - b);
            }
        }
    }
}

/// Splits one image row into its even and odd padded columns: `even[t]` is pixel
/// `2t - pad`, `odd[t]` pixel `2t + 1 - pad`, zero outside the row.
#[inline(always)]
fn split_columns(line: &[f32], pad: usize, even: &mut [f32], odd: &mut [f32]) {
    for (t, (e, o)) in even.iter_mut().zip(odd.iter_mut()).enumerate() {
        let x = 2 * t;
        *e = if x >= pad && x - pad < line.len() {
            line[x - pad]
        } else {
            0.0
        };
        *o = if x + 1 >= pad && x + 1 - pad < line.len() {
            line[x + 1 - pad]
        } else {
            0.0
        };
    }
}

#[inline(always)]
fn combine(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}

multiversion! {
    /// `Y = Aᵀ M A` for every output channel and tile of the segment, then the epilogue,
    /// written to the 2x2 outputs under each tile (the last row or column of tiles may hang
    /// over the edge; the extra column of tiles is never written).
    fn transform_output(
        g: &ConvGeometry,
        m: &[f32],
        segment: Segment,
        tile_count: usize,
        epilogue: Epilogue<'_>,
        output: &mut [f32],
        buffers: &mut [f32],
    ) {
        let (channels_out, height, width) = (g.output.channels, g.output.height, g.output.width);
        let stride = stride(g);
        let n = segment.rows * stride;
        let plane = position_stride(channels_out, tile_count);
        let y = &mut buffers[..4 * n];
        for oc in 0..channels_out {
            // Aᵀ M over rows (s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 for each column j), then the
            // same over columns, then the epilogue, in one pass over the tiles: y[2r + dx][t] is
            // tile t's output at row r, column dx.
            let base = oc * tile_count + segment.column;
            assert!((POSITIONS - 1) * plane + base + n <= m.len());
            let bias = epilogue.bias_of(oc);
            let (y0, rest) = y.split_at_mut(n);
            let (y1, rest) = rest.split_at_mut(n);
            let (y2, y3) = rest.split_at_mut(n);
            for t in 0..n {
                // SAFETY: the largest index read is (POSITIONS - 1) * plane + base + n - 1, inside
                // `m` by the assertion above.
                let at = |position: usize| unsafe { *m.get_unchecked(position * plane + base + t) };
                let s = |j: usize| {
                    let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                    (m0 + m1 + m2, m1 - m2 - m3)
                };
                let ((a0, b0), (a1, b1), (a2, b2), (a3, b3)) = (s(0), s(1), s(2), s(3));
                let finish = |v: f32| epilogue.activate(v + bias);
                y0[t] = finish(a0 + a1 + a2);
                y1[t] = finish(a1 - a2 - a3);
                y2[t] = finish(b0 + b1 + b2);
                y3[t] = finish(b1 - b2 - b3);
            }
            if epilogue.max_pool {
                // A tile's 2x2 outputs are exactly one pooling window.
                let (pooled_rows, pooled_width) = (height / 2, width / 2);
                let pooled_len = pooled_rows * pooled_width;
                let out_plane =
                    &mut output[(segment.image * channels_out + oc) * pooled_len..][..pooled_len];
                for r in 0..segment.rows {
                    let py = segment.first_row + r;
                    if py >= pooled_rows {
                        continue;
                    }
                    let out = &mut out_plane[py * pooled_width..][..pooled_width];
                    let tiles = r * stride..r * stride + pooled_width;
                    let (y0, y1, y2, y3) = (&y[..n], &y[n..2 * n], &y[2 * n..3 * n], &y[3 * n..]);
                    for (((o, &a), (&b, &c)), &d) in out
                        .iter_mut()
                        .zip(&y0[tiles.clone()])
                        .zip(y1[tiles.clone()].iter().zip(&y2[tiles.clone()]))
                        .zip(&y3[tiles])
                    {
                        *o = a.max(b).max(c.max(d));
                    }
                }
                continue;
            }
            let out_plane =
                &mut output[(segment.image * channels_out + oc) * height * width..][..height * width];
            for r in 0..segment.rows {
                for dy in 0..2 {
                    let oy = 2 * (segment.first_row + r) + dy;
                    if oy >= height {
                        continue;
                    }
                    let left = &y[2 * dy * n + r * stride..][..stride - 1];
                    let right = &y[(2 * dy + 1) * n + r * stride..][..stride - 1];
                    let out = &mut out_plane[oy * width..][..width];
                    let (pairs, last) = out.split_at_mut(width / 2 * 2);
                    for ((pair, &a), &b) in pairs.chunks_exact_mut(2).zip(left).zip(right) {
                        pair[0] = a;
                        pair[1] = b;
                    }
                    if let Some(value) = last.first_mut() {
                        *value = left[width / 2];
                    }
                }
            }
        }
    }
}

/// The transforms and the product with AVX-512 instructions, 16 tiles of a tile row to a
/// register.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{
        position_stride, stride, tiles, ConvGeometry, Epilogue, Segment, POSITIONS, PRODUCT_ROWS,
    };
    use crate::kernels::lanes;
    use std::arch::x86_64::*;

    /// `M[ξ] = U[ξ] · V[ξ]` for the 16 positions, `U` packed (see
    /// [`super::transform_weights`]); `shape` is `[OC, C, tile_count]`, `strides` the floats
    /// from one position's matrix to the next in `V` and `M`.
    ///
    /// For each position, block of 8 output channels and stretch of 16, 32 or 48 tiles, the
    /// block of `M` stays in registers while the channels go by: per channel, one load of `V`
    /// per 16 tiles and one broadcast per output channel. Measured against 16 calls of `gemm`
    /// on `cnn4`'s shapes at batch 1 (one thread): 1.3x to 1.5x faster (64x64 by 32 tiles:
    /// 149 against 202 GFLOP/s; by 16 tiles 103 against 155), as nothing is packed per call.
    #[target_feature(enable = "avx512f")]
    pub(super) fn product(
        u: &[f32],
        v: &[f32],
        m: &mut [f32],
        [channels_out, channels, tile_count]: [usize; 3],
        [v_stride, m_stride]: [usize; 2],
    ) {
        let blocks = channels_out.div_ceil(PRODUCT_ROWS);
        let block_len = PRODUCT_ROWS * channels;
        assert_eq!(u.len(), POSITIONS * blocks * block_len);
        assert!(tile_count.is_multiple_of(16));
        assert!((POSITIONS - 1) * v_stride + channels * tile_count <= v.len());
        assert!((POSITIONS - 1) * m_stride + channels_out * tile_count <= m.len());
        for position in 0..POSITIONS {
            let v = v[position * v_stride..].as_ptr();
            for block in 0..blocks {
                let u = u[(position * blocks + block) * block_len..].as_ptr();
                let first = block * PRODUCT_ROWS;
                let rows = PRODUCT_ROWS.min(channels_out - first);
                let m = m[position * m_stride + first * tile_count..].as_mut_ptr();
                let mut t = 0;
                while t < tile_count {
                    // Three registers of tiles when it leaves no single one at the end.
                    let width = match (tile_count - t) / 16 {
                        1 => 1,
                        2 | 4 => 2,
                        _ => 3,
                    };
                    let (v, m) = (v.wrapping_add(t), m.wrapping_add(t));
                    // SAFETY: the block reads `channels` rows of `V[position]` and writes
                    // `rows` rows of `M[position]`, `16 * width` tiles from t, which end at
                    // or before tile_count: all inside the slices (asserted above); `u`
                    // holds the block's `8 x channels` weights.
                    unsafe {
                        match width {
                            1 => block_product::<1>(u, v, m, channels, tile_count, rows),
                            2 => block_product::<2>(u, v, m, channels, tile_count, rows),
                            _ => block_product::<3>(u, v, m, channels, tile_count, rows),
                        }
                    }
                    t += 16 * width;
                }
            }
        }
    }

    /// One block of [`product`]: `rows` (at most 8) rows of `16 * WIDTH` tiles of `M`, from
    /// `channels` rows of `V` and the block's packed weights, both `row_stride` floats a row.
    ///
    /// # Safety
    /// Every address named must be inside its buffer.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block_product<const WIDTH: usize>(
        u: *const f32,
        v: *const f32,
        m: *mut f32,
        channels: usize,
        row_stride: usize,
        rows: usize,
    ) {
        let mut sums = [[_mm512_setzero_ps(); WIDTH]; PRODUCT_ROWS];
        for c in 0..channels {
            let mut tiles = [_mm512_setzero_ps(); WIDTH];
            for (k, register) in tiles.iter_mut().enumerate() {
                // SAFETY: row c of `V`, inside its buffer (the caller's contract).
                *register = unsafe { _mm512_loadu_ps(v.add(c * row_stride + 16 * k)) };
            }
            for (r, row) in sums.iter_mut().enumerate() {
                // SAFETY: weight (c, r) of the block, inside it (the caller's contract).
                let weight = _mm512_set1_ps(unsafe { *u.add(c * PRODUCT_ROWS + r) });
                for (sum, &tile) in row.iter_mut().zip(&tiles) {
                    *sum = _mm512_fmadd_ps(weight, tile, *sum);
                }
            }
        }
        for (r, row) in sums.iter().enumerate().take(rows) {
            for (k, &sum) in row.iter().enumerate() {
                // SAFETY: row r < rows of the block of `M` (the caller's contract).
                unsafe { _mm512_storeu_ps(m.add(r * row_stride + 16 * k), sum) };
            }
        }
    }

    /// As [`super::transform_input`], computing 16 tiles of a tile row at once, each input row
    /// once for the two tile rows that share it.
    ///
    /// Lane `k` stands for tile `t0 + k`, whose patch covers padded columns `2(t0 + k)` to
    /// `2(t0 + k) + 3`: the even and odd columns of the 32 padded columns from `2 t0`, and the
    /// same from `2 t0 + 2`. Each input row is first combined over columns (`· B`), then four
    /// such rows over rows (`Bᵀ ·`), and each of the 16 results is one store.
    #[target_feature(enable = "avx512f")]
    pub(super) fn transform_input(
        g: &ConvGeometry,
        input: &[f32],
        segment: Segment,
        v: &mut [f32],
        tile_count: usize,
    ) {
        let (channels, height, width) = (g.input.channels, g.input.height, g.input.width);
        let [pad_y, pad_x] = g.window.padding;
        let stride = stride(g);
        let v_stride = position_stride(channels, tile_count);
        assert!(segment.column + segment.rows * stride <= tile_count);
        assert!((POSITIONS - 1) * v_stride + channels * tile_count <= v.len());
        assert!(input.len() >= (segment.image + 1) * channels * height * width);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let zero = _mm512_setzero_ps();
        for first_tile in (0..stride).step_by(16) {
            // The tiles of this stretch, the extra column included: it reads zeros or pixels
            // past the last tile, so it stays finite.
            let store_mask = lanes(0, (stride - first_tile) as isize);
            // Image column of lane 0 in each of the four loads of a row.
            let left = (2 * first_tile) as isize - pad_x as isize;
            let starts = [left, left + 16, left + 2, left + 18];
            let masks = starts.map(|x| lanes(-x, width as isize - x));
            for c in 0..channels {
                let plane = (segment.image * channels + c) * height * width;
                // One padded row combined over columns: [x0 - x2, x1 + x2, x2 - x1, x1 - x3].
                let row = |padded_y: usize| -> [__m512; 4] {
                    let y = padded_y as isize - pad_y as isize;
                    if y < 0 || y >= height as isize {
                        return [zero; 4];
                    }
                    let row_start = (plane + y as usize * width) as isize;
                    // SAFETY: unmasked lanes read columns inside image row y of this plane,
                    // inside `input` (asserted above); masked-off lanes are not read.
                    let load = |k: usize| unsafe {
                        _mm512_maskz_loadu_ps(
                            masks[k],
                            input.as_ptr().wrapping_offset(row_start + starts[k]),
                        )
                    };
                    let (a_low, a_high, b_low, b_high) = (load(0), load(1), load(2), load(3));
                    let x0 = _mm512_permutex2var_ps(a_low, even, a_high);
                    let x1 = _mm512_permutex2var_ps(a_low, odd, a_high);
                    let x2 = _mm512_permutex2var_ps(b_low, even, b_high);
                    let x3 = _mm512_permutex2var_ps(b_low, odd, b_high);
                    [
                        _mm512_sub_ps(x0, x2),
                        _mm512_add_ps(x1, x2),
                        _mm512_sub_ps(x2, x1),
                        _mm512_sub_ps(x1, x3),
                    ]
                };
                let top = 2 * segment.first_row;
                let (mut d0, mut d1) = (row(top), row(top + 1));
                for r in 0..segment.rows {
                    let (d2, d3) = (row(top + 2 * r + 2), row(top + 2 * r + 3));
                    let at = c * tile_count + segment.column + r * stride + first_tile;
                    for j in 0..4 {
                        let combined = [
                            _mm512_sub_ps(d0[j], d2[j]),
                            _mm512_add_ps(d1[j], d2[j]),
                            _mm512_sub_ps(d2[j], d1[j]),
                            _mm512_sub_ps(d1[j], d3[j]),
                        ];
                        for (i, value) in combined.into_iter().enumerate() {
                            // SAFETY: unmasked lanes are tiles below `stride` of tile row r,
                            // inside the block's row of `V[4i + j]` (asserted above).
                            unsafe {
                                _mm512_mask_storeu_ps(
                                    v.as_mut_ptr().add((4 * i + j) * v_stride + at),
                                    store_mask,
                                    value,
                                )
                            };
                        }
                    }
                    (d0, d1) = (d2, d3);
                }
            }
        }
    }

    /// As [`super::transform_output`], 16 tiles of a tile row at once: the 16 loads of a
    /// tile's `M` give its four outputs in four registers, which are pooled (one register, a
    /// pooled row's 16 values) or interleaved into the two output rows under the tiles.
    #[target_feature(enable = "avx512f")]
    pub(super) fn transform_output(
        g: &ConvGeometry,
        m: &[f32],
        segment: Segment,
        tile_count: usize,
        epilogue: Epilogue<'_>,
        output: &mut [f32],
    ) {
        let (channels_out, height, width) = (g.output.channels, g.output.height, g.output.width);
        let [_, tile_cols] = tiles(g);
        let stride = stride(g);
        let plane = position_stride(channels_out, tile_count);
        let out_plane_len = epilogue.output_shape(g.output).plane();
        let (pooled_rows, pooled_width) = (height / 2, width / 2);
        assert!(segment.column + segment.rows * stride <= tile_count);
        assert!((POSITIONS - 1) * plane + channels_out * tile_count <= m.len());
        assert!((segment.image + 1) * channels_out * out_plane_len <= output.len());
        // Lanes 0-7 of the first two registers, alternately; then lanes 8-15.
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        for oc in 0..channels_out {
            let bias = _mm512_set1_ps(epilogue.bias_of(oc));
            let finish = |value: __m512| epilogue.finish_16(bias, value);
            let out_plane = (segment.image * channels_out + oc) * out_plane_len;
            for first_tile in (0..tile_cols).step_by(16) {
                let load_mask = lanes(0, (tile_cols - first_tile) as isize);
                for r in 0..segment.rows {
                    let at = oc * tile_count + segment.column + r * stride + first_tile;
                    // SAFETY: unmasked lanes are tiles of tile row r, inside the block's row
                    // of `M[position]` (asserted above).
                    let load = |position: usize| unsafe {
                        _mm512_maskz_loadu_ps(load_mask, m.as_ptr().add(position * plane + at))
                    };
                    // Aᵀ M over rows (column j), then over columns.
                    let column = |j: usize| {
                        let (m0, m1, m2, m3) = (load(j), load(4 + j), load(8 + j), load(12 + j));
                        let m12 = _mm512_add_ps(m1, m2);
                        (
                            _mm512_add_ps(m0, m12),
                            _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3),
                        )
                    };
                    let ((a0, b0), (a1, b1), (a2, b2), (a3, b3)) =
                        (column(0), column(1), column(2), column(3));
                    let top_left = _mm512_add_ps(a0, _mm512_add_ps(a1, a2));
                    let top_right = _mm512_sub_ps(_mm512_sub_ps(a1, a2), a3);
                    let bottom_left = _mm512_add_ps(b0, _mm512_add_ps(b1, b2));
                    let bottom_right = _mm512_sub_ps(_mm512_sub_ps(b1, b2), b3);
                    let y = segment.first_row + r;
                    if epilogue.max_pool {
                        // A tile's 2x2 outputs are one pooling window; the maximum comes
                        // first, which gives the same values (bias and ReLU are monotonic).
                        if y >= pooled_rows {
                            continue;
                        }
                        let pooled = _mm512_max_ps(
                            _mm512_max_ps(top_left, top_right),
                            _mm512_max_ps(bottom_left, bottom_right),
                        );
                        let mask = lanes(0, pooled_width as isize - first_tile as isize);
                        // SAFETY: unmasked lanes are pooled columns of pooled row y of plane
                        // oc, inside `output` (asserted above).
                        unsafe {
                            _mm512_mask_storeu_ps(
                                output
                                    .as_mut_ptr()
                                    .add(out_plane + y * pooled_width + first_tile),
                                mask,
                                finish(pooled),
                            )
                        };
                        continue;
                    }
                    let left_column = 2 * first_tile;
                    for (dy, (left, right)) in [(top_left, top_right), (bottom_left, bottom_right)]
                        .into_iter()
                        .enumerate()
                    {
                        let row = 2 * y + dy;
                        if row >= height {
                            break;
                        }
                        let (left, right) = (finish(left), finish(right));
                        let start = out_plane + row * width + left_column;
                        let room = width as isize - left_column as isize;
                        // SAFETY: unmasked lanes are columns below the width of output row
                        // `row` of plane oc, inside `output` (asserted above).
                        unsafe {
                            _mm512_mask_storeu_ps(
                                output.as_mut_ptr().add(start),
                                lanes(0, room),
                                _mm512_permutex2var_ps(left, low, right),
                            );
                            _mm512_mask_storeu_ps(
                                output.as_mut_ptr().wrapping_add(start + 16),
                                lanes(0, room - 16),
                                _mm512_permutex2var_ps(left, high, right),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Shape;
    use crate::window::Window2d;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// The two sum the same terms in different orders: they agree to a few units in the last
    /// place of the terms (up to about 30 here), not of the result, which may cancel to 0.
    fn close(fast: &[f32], plain: &[f32]) -> Result<(), TestCaseError> {
        for (i, (a, b)) in fast.iter().zip(plain).enumerate() {
            prop_assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "at {i}: {a} vs {b}"
            );
        }
        Ok(())
    }

    proptest! {
        /// The AVX-512 transforms and product compute what the portable ones do (those are
        /// the ones a machine without AVX-512 runs), on every segment of a random block of tile
        /// rows: several images, widths of more than 16 tiles, every padding, every epilogue,
        /// both weight orders.
        #[test]
        fn avx512_kernels_match_the_portable_ones(
            batch in 1usize..=2,
            channels in 1usize..=3,
            channels_out in 1usize..=3,
            size in [1usize..=40, 1usize..=40],
            padding in [0usize..=2, 0usize..=2],
            bias in any::<bool>(),
            relu in any::<bool>(),
            max_pool in any::<bool>(),
            seed in any::<u64>(),
        ) {
            prop_assume!(std::arch::is_x86_feature_detected!("avx512f"));
            let [height, width] = size;
            prop_assume!(height + 2 * padding[0] >= 3 && width + 2 * padding[1] >= 3);
            let output = Shape::new(channels_out, height + 2 * padding[0] - 2, width + 2 * padding[1] - 2);
            prop_assume!(!max_pool || (output.height >= 2 && output.width >= 2));
            let g = ConvGeometry {
                input: Shape::new(channels, height, width),
                output,
                window: Window2d::new([3, 3], [1, 1], padding),
            };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut random = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
            };
            let input = random(batch * g.input.len());
            let all_rows = batch * tiles(&g)[0];
            let first = (seed as usize) % all_rows;
            let rows = first..all_rows.min(first + 1 + (seed as usize >> 8) % all_rows);
            let tile_count = (rows.len() * stride(&g)).next_multiple_of(COLUMN_ALIGN);

            let v_len = POSITIONS * position_stride(channels, tile_count);
            let (mut v_plain, mut v_fast) = (vec![0.0; v_len], vec![0.0; v_len]);
            let mut buffers = vec![0.0; transform_buffers_len(rows.len(), stride(&g))];
            for segment in segments(&g, rows.clone()) {
                transform_input(&g, &input, segment, &mut v_plain, tile_count, &mut buffers);
                // SAFETY: checked above that the CPU has AVX-512F.
                unsafe { avx512::transform_input(&g, &input, segment, &mut v_fast, tile_count) };
            }
            // The extra column of tiles is never written out, and the two differ there.
            for row in 0..POSITIONS * channels {
                let start = row / channels * position_stride(channels, tile_count)
                    + row % channels * tile_count;
                for t in (start + tiles(&g)[1]..start + tile_count).step_by(stride(&g)) {
                    (v_plain[t], v_fast[t]) = (0.0, 0.0);
                }
            }
            close(&v_fast, &v_plain)?;

            // The product, on 1 to 20 output channels (blocks of 8 and a partial one).
            let product_channels_out = 1 + (seed as usize >> 16) % 20;
            let weight = random(product_channels_out * channels * 9);
            let shape = [product_channels_out, channels, tile_count];
            let transformed = |packed: bool| {
                let mut u = vec![0.0; weights_len(product_channels_out, channels, packed)];
                let order = if relu { WeightOrder::Forward } else { WeightOrder::FlippedTransposed };
                transform_weights(&weight, [product_channels_out, channels], order, packed, &mut u);
                u
            };
            let m_stride = position_stride(product_channels_out, tile_count);
            let strides = [position_stride(channels, tile_count), m_stride];
            let (mut m_plain, mut m_fast) = (vec![0.0; POSITIONS * m_stride], vec![0.0; POSITIONS * m_stride]);
            product_with_gemm(&transformed(false), &v_plain, &mut m_plain, shape, strides);
            // SAFETY: as above.
            unsafe { avx512::product(&transformed(true), &v_plain, &mut m_fast, shape, strides) };
            close(&m_fast, &m_plain)?;

            let m = random(POSITIONS * position_stride(channels_out, tile_count));
            let bias_values = random(channels_out);
            let epilogue = Epilogue { bias: bias.then_some(&bias_values[..]), relu, max_pool };
            let out_len = batch * epilogue.output_shape(g.output).len();
            let (mut out_plain, mut out_fast) = (vec![-7.0; out_len], vec![-7.0; out_len]);
            for segment in segments(&g, rows.clone()) {
                transform_output(&g, &m, segment, tile_count, epilogue, &mut out_plain, &mut buffers);
                // SAFETY: as above.
                unsafe {
                    avx512::transform_output(&g, &m, segment, tile_count, epilogue, &mut out_fast)
                };
            }
            close(&out_fast, &out_plain)?;
        }
    }
}
