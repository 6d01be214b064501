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
//! the weights (`U`, once per set of weights), transform the input patches (`V`), run 16 matrix
//! products, transform back (`Y`). The transforms only add and halve, so results stay within
//! f32 rounding of the direct sum.
//!
//! Why not larger tiles: F(4x4, 3x3) would do 1.78x fewer multiplications again, but its
//! transforms (entries up to 8, weights scaled by 1/6 and 1/24) leave float32 errors of up to
//! 1.5e-5 of the result on random data, past the 1e-5 that every fast kernel is held to against
//! the reference, and still 8.8e-6 with the better points 0, 1, -1, 1/2, -2, too close to that
//! bound for random tests; F(2x2, 3x3) stays under 1e-6 (`bench/winograd_error.py`). Tiles of
//! 4x2 outputs (F(4, 3) down the columns only: 1.33x fewer multiplications) were written and
//! failed the tests: 1.28e-5 on a bottom row under two rows of padding, where the largest
//! coefficients of `Aᵀ` meet a window mostly outside the image.
//!
//! All three steps run in registers, one register of tiles of a tile row at a time, written
//! once over the vector width ([`Simd`]): the input transform loads each input row once for
//! the two tile rows that share it and splits even and odd columns in registers; the products
//! are [`packed::product`]s, from `U` packed once for them (no packing per call, unlike
//! `gemm`); the output transform turns 16 loads into a pooled row or two interleaved output
//! rows. Measured on `cnn4` at batch 1 with AVX-512: the input transform of a block went from
//! 7.5 to 3.9 us against plain loops, the output transform from 2.7 to 1.8 us, the 16
//! products of the 64-channel layer from 28 to 21 us against 16 calls of `gemm`.
//!
//! Work is split by rows of tiles across the whole batch: a thread takes a contiguous run of
//! tile rows (so even one large image can use every core), and each block of rows is sized so
//! that its `V` and `M` stay in the core's cache.

use super::conv::ConvGeometry;
use super::packed::{self, Strided};
use super::simd::{Isa, Kernel, Simd};
use super::team::{for_each_chunk_mut, for_each_task, parts_for, SharedSlice};
use super::Epilogue;

/// Positions in a transformed 4x4 tile: one matrix product each.
const POSITIONS: usize = 16;

/// Below this many input channels the products are too thin to pay for the transforms (a
/// first layer on grey images has one): the direct kernel or im2col do better there.
const MIN_CHANNELS: usize = 8;

/// A block's `V` and `M` together take about this many floats (1 MiB): they stay in a core's
/// L2 cache between the transforms and the products.
const BLOCK_FLOATS: usize = 1 << 18;

/// The same at batch 1 (256 KiB): there the weights of the whole network are most of what a
/// pass touches, and smaller blocks leave more of them in the caches from one pass to the
/// next. Measured on `cnn4`: batch-1 latency 4% lower; at batch 16 and 64 the thinner products
/// cost 11% of the throughput, hence the larger blocks there.
const BATCH_1_BLOCK_FLOATS: usize = 1 << 16;

/// The matrices' rows are padded to a multiple of this many tiles (one AVX-512 register, two
/// AVX2 ones), so that the product reads whole registers.
const COLUMN_ALIGN: usize = 16;

/// Below this many multiply-adds of product work a convolution runs on the calling thread,
/// unless it runs in a [`super::team::Team`]: measured on `cnn4` at batch 1 (up to 3.7M),
/// handing half of it to the rayon pool cost more in wake-ups than it saved.
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
    g.transposed().is_some_and(|t| supports(&t))
}

/// Tile counts: `[rows, columns]` of 2x2 output tiles.
fn tiles(g: &ConvGeometry) -> [usize; 2] {
    [g.output.height.div_ceil(2), g.output.width.div_ceil(2)]
}

/// Tiles in a row of the matrices: one per column of tiles, the rows of tiles one after the
/// other, except that a row a little short of whole registers is padded to them. A tile
/// computed past the last column is work thrown away (1/8 of the products at 28x28), but
/// without the gap the input transform's stores straddle cache lines: with AVX-512 on 16
/// channels at 28x28, one core, the layer took 0.45x im2col's time padded against 0.55x.
fn stride(g: &ConvGeometry) -> usize {
    let tile_cols = tiles(g)[1];
    if tile_cols % COLUMN_ALIGN >= COLUMN_ALIGN * 3 / 4 {
        tile_cols.next_multiple_of(COLUMN_ALIGN)
    } else {
        tile_cols
    }
}

/// Floats of scratch per block of `block_rows` tile rows: `V` and `M`.
fn block_scratch_len(g: &ConvGeometry, block_rows: usize) -> usize {
    let tile_count = (block_rows * stride(g)).next_multiple_of(COLUMN_ALIGN);
    POSITIONS
        * (position_stride(g.input.channels, tile_count)
            + position_stride(g.output.channels, tile_count))
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

/// Floats of `U` for a layer, packed for `isa`'s product.
pub fn weights_len(isa: Isa, channels_out: usize, channels: usize) -> usize {
    POSITIONS * packed::packed_len(isa, channels_out, channels)
}

/// `U[ξ][oc, c] = (G g Gᵀ)[ξ]` for every channel pair of `weight` (`[OC, C, 3, 3]`): 16
/// `OC x C` matrices, each packed for `isa`'s product ([`packed::pack`]).
pub fn transform_weights(
    isa: Isa,
    weight: &[f32],
    [channels_out, channels]: [usize; 2],
) -> Vec<f32> {
    let mut transformed = vec![0.0; weights_len(isa, channels_out, channels)];
    let plane = packed::packed_len(isa, channels_out, channels);
    let index = |position: usize, oc: usize, c: usize| {
        position * plane + packed::packed_index(isa, [channels_out, channels], oc, c)
    };
    for oc in 0..channels_out {
        for c in 0..channels {
            let g = &weight[(oc * channels + c) * 9..][..9];
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
    transformed
}

/// `output[n] = conv(input[n], weight)` then the epilogue, for every image of the batch, with
/// `isa`'s instructions.
///
/// `geometry` is the convolution as computed (for an input gradient, the transposed one, whose
/// input is the forward pass's output gradient); `transformed` comes from [`transform_weights`]
/// for the same geometry and `isa`. `input` and `output` hold `batch`
/// images in NCHW (`output` in the epilogue's output shape).
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_forward(
    isa: Isa,
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
    assert!(supports(g), "Winograd convolution of an unsupported shape");
    assert_eq!(transformed.len(), weights_len(isa, channels_out, channels));
    assert!(input.len() >= batch * g.input.len());
    assert!(output.len() >= batch * epilogue.output_shape(g.output).len());
    let [tile_rows, tile_cols] = tiles(g);
    let all_rows = batch * tile_rows;
    let block_floats = if batch == 1 {
        BATCH_1_BLOCK_FLOATS
    } else {
        BLOCK_FLOATS
    };
    let block_rows = (block_floats / (POSITIONS * (channels + channels_out) * tile_cols))
        .clamp(1, tile_rows.max(1));
    let work = POSITIONS * channels * channels_out * all_rows * tile_cols;
    let parts = parts_for(work, PARALLEL_MIN_WORK);
    let tile_count = (all_rows * stride(g)).next_multiple_of(COLUMN_ALIGN);
    if parts > 1 && all_rows <= block_rows && 2 * tile_count <= channels_out {
        let layer = (g, input, transformed, epilogue);
        return conv3x3_by_channels(isa, layer, all_rows, parts, output, scratch);
    }
    let rows_per_run = all_rows.div_ceil(parts).max(1);
    let runs = all_rows.div_ceil(rows_per_run);

    let per_run = block_scratch_len(g, block_rows);
    let run_scratch = super::scratch_prefix(scratch, runs * per_run);
    // Runs write interleaved parts of the output (the rows under their tile rows, in every
    // channel plane), so they share it as a raw pointer, never as a `&mut`.
    let output = SharedSlice::new(output);
    for_each_chunk_mut(run_scratch, per_run, |index, work| {
        let first = index * rows_per_run;
        let last = (first + rows_per_run).min(all_rows);
        let mut start = first;
        while start < last {
            let end = (start + block_rows).min(last);
            isa.dispatch(Block {
                g,
                input,
                transformed,
                epilogue,
                output,
                rows: start..end,
                work,
            });
            start = end;
        }
    });
}

/// [`conv3x3_forward`] when all `rows` tile rows of the batch fit one block and the tiles are at
/// most half as many as the output channels (a small map at batch 1), in `parts` tasks per
/// step: the input transform split by input channels, the products and the output transform
/// by output channels, each step after the last has ended. Split by tile rows instead, each
/// core would read all of `U` for half the tiles, in products half as wide. Measured on an AMD
/// EPYC Zen 3 with AVX2, a stack of 64-channel layers at 7x7 (16 tiles), batch 1: 176-209 us
/// on two threads this way, 198-360 by tile rows (208-250 on one thread). With more tiles the
/// cores exchange more of `V` than they save of `U`: 32 channels at 14x14 (64 tiles) took
/// 222-244 us this way, 127-153 by tile rows.
fn conv3x3_by_channels(
    isa: Isa,
    (g, input, transformed, epilogue): (&ConvGeometry, &[f32], &[f32], Epilogue<'_>),
    rows: usize,
    parts: usize,
    output: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (channels, channels_out) = (g.input.channels, g.output.channels);
    let tile_count = (rows * stride(g)).next_multiple_of(COLUMN_ALIGN);
    let strides = [
        position_stride(channels, tile_count),
        position_stride(channels_out, tile_count),
    ];
    let work = super::scratch_prefix(scratch, block_scratch_len(g, rows));
    let (v, rest) = work.split_at_mut(POSITIONS * strides[0]);
    let m = &mut rest[..POSITIONS * strides[1]];
    let part = |count: usize, task: usize| {
        let per_task = count.div_ceil(parts);
        (task * per_task).min(count)..((task + 1) * per_task).min(count)
    };
    // Tasks write interleaved parts of `V`, `M` and the output (their channels' rows, at
    // every position): shared as raw pointers, never as a `&mut` to the whole.
    let shared_v = SharedSlice::new(v);
    for_each_task(parts, |task| {
        isa.dispatch(InputTransform {
            g,
            input,
            v: shared_v,
            rows: 0..rows,
            channels: part(channels, task),
            tile_count,
        })
    });
    let v: &[f32] = v;
    let block = packed::block_rows(isa, channels_out);
    let m_shared = SharedSlice::new(m);
    for_each_task(parts, |task| {
        let blocks = part(channels_out.div_ceil(block), task);
        let rows_of_m = blocks.start * block..(blocks.end * block).min(channels_out);
        isa.dispatch(Products {
            transformed,
            v,
            m: m_shared,
            channels: [channels, channels_out],
            rows: rows_of_m,
            tile_count,
        })
    });
    let m: &[f32] = m;
    let output = SharedSlice::new(output);
    for_each_task(parts, |task| {
        isa.dispatch(OutputTransform {
            g,
            m,
            rows: 0..rows,
            channels: part(channels_out, task),
            tile_count,
            epilogue,
            output,
        })
    });
}

/// `M[ξ] = U[ξ] · V[ξ]` for the 16 positions, rows `rows` of each `M` (output channels: whole
/// blocks of the packed `U`, except at the end), `channels` being `[C, OC]`.
struct Products<'a> {
    transformed: &'a [f32],
    v: &'a [f32],
    m: SharedSlice<f32>,
    channels: [usize; 2],
    rows: std::ops::Range<usize>,
    tile_count: usize,
}

impl Kernel for Products<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let Products {
            transformed,
            v,
            m,
            channels: [channels, channels_out],
            rows,
            tile_count,
        } = self;
        let (block, registers) = S::ISA.product_block(channels_out);
        assert!(rows.start.is_multiple_of(block) && rows.end <= channels_out);
        if rows.is_empty() {
            return;
        }
        let strides = [
            position_stride(channels, tile_count),
            position_stride(channels_out, tile_count),
        ];
        let u_len = transformed.len() / POSITIONS;
        // The packed blocks of `U[ξ]` for these rows.
        let (u_start, u_count) = (
            rows.start * channels,
            rows.len().div_ceil(block) * block * channels,
        );
        for position in 0..POSITIONS {
            // SAFETY: rows `rows` of `M[position]` are written by this call alone.
            let c = unsafe {
                m.part(
                    position * strides[1] + rows.start * tile_count,
                    rows.len() * tile_count,
                )
            };
            packed::product(
                s,
                (
                    &transformed[position * u_len + u_start..][..u_count],
                    (block, registers),
                ),
                (&v[position * strides[0]..], Strided(tile_count)),
                c,
                [rows.len(), channels, tile_count],
                tile_count,
            );
        }
    }
}

/// The input transform of the tile rows `rows` for input channels `channels`.
struct InputTransform<'a> {
    g: &'a ConvGeometry,
    input: &'a [f32],
    v: SharedSlice<f32>,
    rows: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    tile_count: usize,
}

impl Kernel for InputTransform<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        for segment in segments(self.g, self.rows.clone()) {
            let at = (self.input, segment, self.channels.clone());
            transform_input(s, self.g, at, self.v, self.tile_count);
        }
    }
}

/// The output transform of the tile rows `rows` for output channels `channels`.
struct OutputTransform<'a> {
    g: &'a ConvGeometry,
    m: &'a [f32],
    rows: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    tile_count: usize,
    epilogue: Epilogue<'a>,
    output: SharedSlice<f32>,
}

impl Kernel for OutputTransform<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        for segment in segments(self.g, self.rows.clone()) {
            let at = (segment, self.channels.clone());
            transform_output(
                s,
                self.g,
                self.m,
                at,
                self.tile_count,
                self.epilogue,
                self.output,
            );
        }
    }
}

/// Tile rows `rows` (numbered across the batch) through the three steps: input transform,
/// 16 products, output transform. `work` holds the block's `V` and `M`.
struct Block<'a> {
    g: &'a ConvGeometry,
    input: &'a [f32],
    transformed: &'a [f32],
    epilogue: Epilogue<'a>,
    /// Written only at the outputs under `rows` (runs cover disjoint tile rows, and a tile
    /// row writes only the two output rows under it).
    output: SharedSlice<f32>,
    rows: std::ops::Range<usize>,
    work: &'a mut [f32],
}

impl Kernel for Block<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let Block {
            g,
            input,
            transformed,
            epilogue,
            output,
            rows,
            work,
        } = self;
        let (channels, channels_out) = (g.input.channels, g.output.channels);
        let tile_count = (rows.len() * stride(g)).next_multiple_of(COLUMN_ALIGN);
        let strides = [
            position_stride(channels, tile_count),
            position_stride(channels_out, tile_count),
        ];
        let (v, rest) = work.split_at_mut(POSITIONS * strides[0]);
        let m = &mut rest[..POSITIONS * strides[1]];
        InputTransform {
            g,
            input,
            v: SharedSlice::new(v),
            rows: rows.clone(),
            channels: 0..channels,
            tile_count,
        }
        .run(s);
        Products {
            transformed,
            v,
            m: SharedSlice::new(m),
            channels: [channels, channels_out],
            rows: 0..channels_out,
            tile_count,
        }
        .run(s);
        OutputTransform {
            g,
            m,
            rows,
            channels: 0..channels_out,
            tile_count,
            epilogue,
            output,
        }
        .run(s);
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

/// `V[ξ][c, t] = (Bᵀ d B)[ξ]` for every channel `c` of `channel_range` and tile `t` of the
/// segment, `d` being the tile's 4x4 input patch (zero outside the image), a register of tiles
/// of a tile row at once.
///
/// Lane `k` stands for tile `t0 + k`, whose patch covers padded columns `2(t0 + k)` to
/// `2(t0 + k) + 3`: the even and odd columns of the `2 * LANES` padded columns from `2 t0`, and
/// the same from `2 t0 + 2`. Each input row is first combined over columns (`· B`), then four
/// such rows over rows (`Bᵀ ·`), and each of the 16 results is one store. Each input row is
/// loaded once for the two tile rows that share it.
#[inline(always)]
fn transform_input<S: Simd>(
    s: S,
    g: &ConvGeometry,
    (input, segment, channel_range): (&[f32], Segment, std::ops::Range<usize>),
    v: SharedSlice<f32>,
    tile_count: usize,
) {
    let lanes = S::LANES as isize;
    let (channels, height, width) = (g.input.channels, g.input.height, g.input.width);
    let [pad_y, pad_x] = g.window.padding;
    let stride = stride(g);
    let v_stride = position_stride(channels, tile_count);
    assert!(segment.column + segment.rows * stride <= tile_count);
    assert!((POSITIONS - 1) * v_stride + channels * tile_count <= v.len());
    assert!(channel_range.end <= channels);
    let v = v.ptr_for(0, v.len());
    assert!(input.len() >= (segment.image + 1) * channels * height * width);
    for first_tile in (0..stride).step_by(S::LANES) {
        // The tiles of this stretch.
        let store_mask = s.mask(0, (stride - first_tile) as isize);
        // Image column of lane 0 in each of the four loads of a row.
        let left = (2 * first_tile) as isize - pad_x as isize;
        let starts = [left, left + lanes, left + 2, left + lanes + 2];
        let mut masks = [s.mask(0, 0); 4];
        for (mask, &x) in masks.iter_mut().zip(&starts) {
            *mask = s.mask(-x, width as isize - x);
        }
        for c in channel_range.clone() {
            let plane = (segment.image * channels + c) * height * width;
            let image = (plane, height, width);
            // Image row of padded row 2 * first_row.
            let top = (2 * segment.first_row) as isize - pad_y as isize;
            let (mut d0, mut d1) = (
                combine_row(s, input, image, top, starts, masks),
                combine_row(s, input, image, top + 1, starts, masks),
            );
            for r in 0..segment.rows as isize {
                let (d2, d3) = (
                    combine_row(s, input, image, top + 2 * r + 2, starts, masks),
                    combine_row(s, input, image, top + 2 * r + 3, starts, masks),
                );
                let r = r as usize;
                let at = c * tile_count + segment.column + r * stride + first_tile;
                for j in 0..4 {
                    let combined = [
                        s.sub(d0[j], d2[j]),
                        s.add(d1[j], d2[j]),
                        s.sub(d2[j], d1[j]),
                        s.sub(d1[j], d3[j]),
                    ];
                    for (i, value) in combined.into_iter().enumerate() {
                        // SAFETY: unmasked lanes are tiles below `stride` of tile row r,
                        // inside the block's row of `V[4i + j]` (asserted above), which only
                        // this call writes (its channel `c`, its tile rows).
                        unsafe {
                            s.store_masked(v.add((4 * i + j) * v_stride + at), store_mask, value)
                        };
                    }
                }
                (d0, d1) = (d2, d3);
            }
        }
    }
}

/// One input row of [`transform_input`] combined over columns, `[x0 - x2, x1 + x2, x2 - x1,
/// x1 - x3]`, where `x0..x3` are the four columns of each lane's tile patch: row `y` of the
/// `height x width` channel plane starting at `plane` (zero outside the image), from the four
/// loads at `starts` (columns of lane 0) with their `masks`.
///
/// A function, not a closure: a closure is compiled without the kernel's target features
/// unless the compiler happens to inline it, and then every register operation in it is a
/// call (measured: twice the time of the whole convolution).
#[inline(always)]
fn combine_row<S: Simd>(
    s: S,
    input: &[f32],
    (plane, height, width): (usize, usize, usize),
    y: isize,
    starts: [isize; 4],
    masks: [S::Mask; 4],
) -> [S::V; 4] {
    if y < 0 || y >= height as isize {
        return [s.zero(); 4];
    }
    let row_start = (plane + y as usize * width) as isize;
    let mut loaded = [s.zero(); 4];
    for (register, (start, mask)) in loaded.iter_mut().zip(starts.into_iter().zip(masks)) {
        // SAFETY: unmasked lanes read columns inside image row y of this plane, inside
        // `input` (the caller asserts it holds the image); masked-off lanes are not read.
        *register =
            unsafe { s.load_masked(input.as_ptr().wrapping_offset(row_start + start), mask) };
    }
    let (x0, x1) = s.deinterleave(loaded[0], loaded[1]);
    let (x2, x3) = s.deinterleave(loaded[2], loaded[3]);
    [s.sub(x0, x2), s.add(x1, x2), s.sub(x2, x1), s.sub(x1, x3)]
}

/// `Y = Aᵀ M A` for every output channel of `channel_range` and tile of the segment, then the
/// epilogue, written to the 2x2 outputs under each tile (the last row or column of tiles may
/// hang over the edge), a register of tiles at once: the 16 loads of a tile's `M` give its four outputs in four registers, which are pooled (one register, a
/// pooled row's values) or interleaved into the two output rows under the tiles.
#[inline(always)]
fn transform_output<S: Simd>(
    s: S,
    g: &ConvGeometry,
    m: &[f32],
    (segment, channel_range): (Segment, std::ops::Range<usize>),
    tile_count: usize,
    epilogue: Epilogue<'_>,
    output: SharedSlice<f32>,
) {
    let lanes = S::LANES as isize;
    let (channels_out, height, width) = (g.output.channels, g.output.height, g.output.width);
    let [_, tile_cols] = tiles(g);
    let stride = stride(g);
    let plane = position_stride(channels_out, tile_count);
    let out_plane_len = epilogue.output_shape(g.output).plane();
    let (pooled_rows, pooled_width) = (height / 2, width / 2);
    assert!(segment.column + segment.rows * stride <= tile_count);
    assert!((POSITIONS - 1) * plane + channels_out * tile_count <= m.len());
    assert!(channel_range.end <= channels_out);
    for oc in channel_range {
        let bias = s.splat(epilogue.bias_of(oc));
        let out_plane = (segment.image * channels_out + oc) * out_plane_len;
        for first_tile in (0..tile_cols).step_by(S::LANES) {
            let load_mask = s.mask(0, (tile_cols - first_tile) as isize);
            for r in 0..segment.rows {
                let at = oc * tile_count + segment.column + r * stride + first_tile;
                // Aᵀ M over rows (column j), then over columns.
                let mut sums = [(s.zero(), s.zero()); 4];
                for (j, sum) in sums.iter_mut().enumerate() {
                    let mut loaded = [s.zero(); 4];
                    for (i, register) in loaded.iter_mut().enumerate() {
                        // SAFETY: unmasked lanes are tiles of tile row r, inside the block's
                        // row of `M[4i + j]` (asserted above).
                        *register = unsafe {
                            s.load_masked(m.as_ptr().add((4 * i + j) * plane + at), load_mask)
                        };
                    }
                    let [m0, m1, m2, m3] = loaded;
                    let m12 = s.add(m1, m2);
                    *sum = (s.add(m0, m12), s.sub(s.sub(m1, m2), m3));
                }
                let [(a0, b0), (a1, b1), (a2, b2), (a3, b3)] = sums;
                let top_left = s.add(a0, s.add(a1, a2));
                let top_right = s.sub(s.sub(a1, a2), a3);
                let bottom_left = s.add(b0, s.add(b1, b2));
                let bottom_right = s.sub(s.sub(b1, b2), b3);
                let y = segment.first_row + r;
                if epilogue.max_pool {
                    // A tile's 2x2 outputs are one pooling window; the maximum comes first,
                    // which gives the same values (bias and ReLU are monotonic).
                    if y >= pooled_rows {
                        continue;
                    }
                    let pooled =
                        s.max(s.max(top_left, top_right), s.max(bottom_left, bottom_right));
                    store_first(
                        s,
                        output,
                        out_plane + y * pooled_width + first_tile,
                        pooled_width as isize - first_tile as isize,
                        epilogue.finish(s, bias, pooled),
                    );
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
                    // Interleaved before the epilogue, whose bias is the same in every
                    // lane: a residual it adds is then in output order.
                    let (low, high) = s.interleave(left, right);
                    let start = out_plane + row * width + left_column;
                    let room = width as isize - left_column as isize;
                    for (at, room, values) in
                        [(start, room, low), (start + S::LANES, room - lanes, high)]
                    {
                        let existing = if epilogue.accumulate {
                            load_first(s, output, at, room)
                        } else {
                            s.zero()
                        };
                        let finished = epilogue.finish_onto(s, bias, values, existing);
                        store_first(s, output, at, room, finished);
                    }
                }
            }
        }
    }
}

/// Writes the first `count` lanes of `value` (clamped to `0..LANES`) to `output[at..]`, the
/// address checked against the output's bounds. Only the calling run may write them (see
/// [`Block::output`]).
#[inline(always)]
fn store_first<S: Simd>(s: S, output: SharedSlice<f32>, at: usize, count: isize, value: S::V) {
    let count = count.clamp(0, S::LANES as isize);
    if count > 0 {
        let to = output.ptr_for(at, count as usize);
        // SAFETY: the first `count` lanes lie inside the output (checked by `ptr_for`), and
        // only this run writes these outputs.
        unsafe { s.store_masked(to, s.mask(0, count), value) };
    }
}

/// The first `count` lanes (clamped to `0..LANES`) of `output[at..]`, the others zero, the
/// address checked against the output's bounds: what [`store_first`] will overwrite.
#[inline(always)]
fn load_first<S: Simd>(s: S, output: SharedSlice<f32>, at: usize, count: isize) -> S::V {
    let count = count.clamp(0, S::LANES as isize);
    if count == 0 {
        return s.zero();
    }
    let from = output.ptr_for(at, count as usize);
    // SAFETY: the first `count` lanes lie inside the output (checked by `ptr_for`), and only
    // this run writes these outputs, so nothing writes them meanwhile.
    unsafe { s.load_masked(from, s.mask(0, count)) }
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
    fn close(isa: Isa, what: &str, fast: &[f32], plain: &[f32]) -> Result<(), TestCaseError> {
        for (i, (a, b)) in fast.iter().zip(plain).enumerate() {
            prop_assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{isa} {what} at {i}: {a} vs portable {b}"
            );
        }
        Ok(())
    }

    /// Runs one block with `isa`; returns `V`, `M` and the output.
    fn run_block(
        isa: Isa,
        g: &ConvGeometry,
        batch: usize,
        input: &[f32],
        weight: &[f32],
        epilogue: Epilogue<'_>,
        rows: std::ops::Range<usize>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let transformed = transform_weights(isa, weight, [g.output.channels, g.input.channels]);
        let tile_count = (rows.len() * stride(g)).next_multiple_of(COLUMN_ALIGN);
        let v_len = POSITIONS * position_stride(g.input.channels, tile_count);
        let mut work =
            vec![0.0; v_len + POSITIONS * position_stride(g.output.channels, tile_count)];
        let mut output = vec![-7.0; batch * epilogue.output_shape(g.output).len()];
        isa.dispatch(Block {
            g,
            input,
            transformed: &transformed,
            epilogue,
            output: SharedSlice::new(&mut output),
            rows: rows.clone(),
            work: &mut work,
        });
        // The padding after the last tile row is not an output of the transform: zero it to
        // compare.
        let (mut v, mut m) = (work[..v_len].to_vec(), work[v_len..].to_vec());
        for (matrix, channels) in [(&mut v, g.input.channels), (&mut m, g.output.channels)] {
            let position = position_stride(channels, tile_count);
            for p in 0..POSITIONS {
                for c in 0..channels {
                    let row = &mut matrix[p * position + c * tile_count..][..tile_count];
                    for (t, value) in row.iter_mut().enumerate() {
                        if t >= rows.len() * stride(g) {
                            *value = 0.0;
                        }
                    }
                }
            }
        }
        (v, m, output)
    }

    proptest! {
        /// Split by channels into two or three tasks (on two threads), every instruction set
        /// gives the very bits of one block on one thread, every epilogue included.
        #[test]
        fn the_split_by_channels_gives_the_same_bits(
            channels in 32usize..=40,
            channels_out in 16usize..=40,
            size in [6usize..=14, 6usize..=14],
            padding in [0usize..=2, 0usize..=2],
            bias in any::<bool>(),
            relu in any::<bool>(),
            pool_or_add in 0usize..3,
            seed in any::<u64>(),
        ) {
            let [height, width] = size;
            let g = ConvGeometry::new(
                Shape::new(channels, height, width),
                Shape::new(channels_out, height + 2 * padding[0] - 2, width + 2 * padding[1] - 2),
                Window2d::new([3, 3], [1, 1], padding),
            );
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut random = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
            };
            let (input, weight, bias_values) =
                (random(g.input.len()), random(channels_out * channels * 9), random(channels_out));
            let epilogue = Epilogue {
                bias: bias.then_some(&bias_values[..]),
                accumulate: pool_or_add == 2,
                relu,
                max_pool: pool_or_add == 1,
            };
            let start = random(epilogue.output_shape(g.output).len());
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let rows = tiles(&g)[0];
            for isa in Isa::supported() {
                let transformed = transform_weights(isa, &weight, [channels_out, channels]);
                let mut alone = start.clone();
                conv3x3_forward(isa, &g, 1, &input, &transformed, epilogue, &mut alone, &mut Vec::new());
                let mut split = start.clone();
                let layer = (&g, &input[..], &transformed[..], epilogue);
                let parts = 2 + seed as usize % 2;
                pool.install(|| conv3x3_by_channels(isa, layer, rows, parts, &mut split, &mut Vec::new()));
                for (i, (a, b)) in alone.iter().zip(&split).enumerate() {
                    prop_assert_eq!(a.to_bits(), b.to_bits(), "{} at {}: {} alone, {} split", isa, i, a, b);
                }
            }
        }

        /// Every instruction set this CPU has computes each of the three steps as the portable
        /// one does (which the tests in `tests/kernels.rs` hold to the reference convolution),
        /// on a random block of tile rows: several images, rows wider than one register of
        /// tiles, 1 to 20 output channels (whole and partial blocks of the product), every
        /// padding and epilogue.
        #[test]
        fn every_instruction_set_matches_the_portable_kernels(
            batch in 1usize..=2,
            channels in 1usize..=3,
            channels_out in 1usize..=20,
            size in [1usize..=40, 1usize..=40],
            padding in [0usize..=2, 0usize..=2],
            bias in any::<bool>(),
            relu in any::<bool>(),
            max_pool in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let [height, width] = size;
            let output_size = [height + 2 * padding[0], width + 2 * padding[1]];
            let [out_height, out_width] = output_size.map(|s| s.saturating_sub(2));
            let max_pool = max_pool && out_height >= 2 && out_width >= 2;
            if out_height == 0 || out_width == 0 {
                return Ok(());
            }
            let g = ConvGeometry::new(
                Shape::new(channels, height, width),
                Shape::new(channels_out, out_height, out_width),
                Window2d::new([3, 3], [1, 1], padding),
            );
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut random = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
            };
            let input = random(batch * g.input.len());
            let weight = random(channels_out * channels * 9);
            let bias_values = random(channels_out);
            let epilogue = Epilogue { bias: bias.then_some(&bias_values[..]), accumulate: false, relu, max_pool };
            let all_rows = batch * tiles(&g)[0];
            let first = (seed as usize) % all_rows;
            let rows = first..all_rows.min(first + 1 + (seed as usize >> 8) % all_rows);
            let plain = run_block(Isa::Portable, &g, batch, &input, &weight, epilogue, rows.clone());
            for isa in Isa::supported() {
                let fast = run_block(isa, &g, batch, &input, &weight, epilogue, rows.clone());
                close(isa, "V", &fast.0, &plain.0)?;
                close(isa, "M", &fast.1, &plain.1)?;
                close(isa, "output", &fast.2, &plain.2)?;
            }
        }
    }
}
