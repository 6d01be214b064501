//! The weight gradient of a plain convolution without a column matrix:
//! `dW[oc, (c, i, j)] = sum over images and output positions of dY[oc, y, x] * X[c, y*s + i,
//! x*s + j]`, with the image zero-padded once and read in place (no im2col copy, no packing of
//! it by a matrix product).
//!
//! The output gradient of an image is first transposed to `[position, output channel]` (a
//! register of output channels per position, the channel count rounded up to whole registers).
//! Then for a block of `V` registers of output channels and `T` kernel taps, kept in `V x T`
//! registers while the positions go by, each position costs `V` loads and `T` broadcasts of
//! the image's values, each tap's value one multiply-add per register. The sums go into a
//! per-thread `[tap, output channel]` total, added in a fixed order at the end.

use super::conv::ConvGeometry;
use super::simd::{Isa, Kernel, Simd};
use super::team::for_each_chunk_mut;
use super::{batch_chunks, scratch_prefix};
use crate::tensor::Tensor;

/// Whether [`weight_gradient`] can compute this convolution's weight gradient.
pub fn supports(g: &ConvGeometry) -> bool {
    g.is_plain()
}

/// Whether it is the better way with `isa`: when rounding the output channels up to whole
/// registers adds at most a quarter (LeNet-5's 6 channels would take 16 with AVX-512, and
/// im2col's product is faster there).
pub fn preferred(isa: Isa, g: &ConvGeometry) -> bool {
    let channels = g.output.channels;
    supports(g) && 4 * channels.next_multiple_of(isa.lanes()) <= 5 * channels
}

/// Sizes of one image's buffers.
#[derive(Clone, Copy)]
struct Layout {
    /// Width and plane of the zero-padded image.
    pitch: usize,
    padded_plane: usize,
    /// Output channels rounded up to whole registers.
    channels: usize,
}

impl Layout {
    fn of(g: &ConvGeometry, isa: Isa) -> Self {
        let [pad_y, pad_x] = g.window.padding;
        let pitch = g.input.width + 2 * pad_x;
        Layout {
            pitch,
            padded_plane: (g.input.height + 2 * pad_y) * pitch,
            channels: g.output.channels.next_multiple_of(isa.lanes()),
        }
    }

    fn padded_len(self, g: &ConvGeometry) -> usize {
        g.input.channels * self.padded_plane
    }

    fn transposed_len(self, g: &ConvGeometry) -> usize {
        g.positions() * self.channels
    }

    fn taps(g: &ConvGeometry) -> usize {
        g.patch_len()
    }

    /// A thread's scratch: the padded image, the transposed output gradient, its
    /// `[tap, channel]` total and its bias total.
    fn per_chunk(self, g: &ConvGeometry) -> usize {
        let total = Layout::taps(g) * self.channels;
        self.padded_len(g) + self.transposed_len(g) + total + self.channels
    }
}

/// Adds the gradient of the weights (`[OC, C*KH*KW]`) and of the bias (`[OC]`) of the
/// convolution `g` for `input` (`[N, C, H, W]`) and `grad_output` (`[N, OC, OH, OW]`).
pub fn weight_gradient(
    isa: Isa,
    g: &ConvGeometry,
    input: &Tensor,
    grad_output: &Tensor,
    grad_weight: &mut [f32],
    grad_bias: Option<&mut [f32]>,
    scratch: &mut Vec<f32>,
) {
    assert!(supports(g), "a plain convolution");
    let (batch, taps, channels_out) = (input.batch(), Layout::taps(g), g.output.channels);
    assert_eq!(input.len(), batch * g.input.len());
    assert_eq!(grad_output.len(), batch * g.output.len());
    assert_eq!(grad_weight.len(), channels_out * taps);
    let layout = Layout::of(g, isa);
    let per_chunk = layout.per_chunk(g);
    let (chunks, per_image_chunk) = batch_chunks(batch);
    let work_area = scratch_prefix(scratch, chunks * per_chunk);
    let (padded_len, transposed_len) = (layout.padded_len(g), layout.transposed_len(g));
    let total_len = taps * layout.channels;
    for_each_chunk_mut(work_area, per_chunk, |chunk, work| {
        let (padded, rest) = work.split_at_mut(padded_len);
        let (transposed, rest) = rest.split_at_mut(transposed_len);
        let (total, bias) = rest.split_at_mut(total_len);
        total.fill(0.0);
        bias.fill(0.0);
        // The borders stay zero from image to image.
        padded.fill(0.0);
        transposed.fill(0.0);
        let first = chunk * per_image_chunk;
        for n in first..batch.min(first + per_image_chunk) {
            isa.dispatch(Image {
                g,
                layout,
                image: input.sample(n),
                grad: grad_output.sample(n),
                padded: &mut *padded,
                transposed: &mut *transposed,
                total: &mut *total,
                bias: &mut *bias,
            });
        }
    });
    for work in work_area.chunks(per_chunk).take(chunks) {
        let total = &work[padded_len + transposed_len..][..total_len];
        for (t, row) in total.chunks_exact(layout.channels).enumerate() {
            for (oc, &value) in row[..channels_out].iter().enumerate() {
                grad_weight[oc * taps + t] += value;
            }
        }
    }
    if let Some(grad_bias) = grad_bias {
        for work in work_area.chunks(per_chunk).take(chunks) {
            let bias = &work[padded_len + transposed_len + total_len..][..channels_out];
            for (b, &value) in grad_bias.iter_mut().zip(bias) {
                *b += value;
            }
        }
    }
}

/// One image: pads it, transposes its output gradient, adds its products to `total`.
struct Image<'a> {
    g: &'a ConvGeometry,
    layout: Layout,
    image: &'a [f32],
    grad: &'a [f32],
    padded: &'a mut [f32],
    transposed: &'a mut [f32],
    total: &'a mut [f32],
    bias: &'a mut [f32],
}

impl Kernel for Image<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let Image {
            g,
            layout,
            image,
            grad,
            padded,
            transposed,
            total,
            bias,
        } = self;
        let width = g.input.width;
        let [pad_y, pad_x] = g.window.padding;
        for (c, plane) in image.chunks_exact(g.input.plane()).enumerate() {
            for (y, row) in plane.chunks_exact(width).enumerate() {
                let at = c * layout.padded_plane + (y + pad_y) * layout.pitch + pad_x;
                padded[at..at + width].copy_from_slice(row);
            }
        }
        let positions = g.positions();
        for (oc, row) in grad.chunks_exact(positions).enumerate() {
            bias[oc] += row.iter().sum::<f32>();
        }
        transpose(
            s,
            grad,
            g.output.channels,
            positions,
            transposed,
            layout.channels,
        );
        assert!(
            layout.channels.is_multiple_of(S::LANES),
            "channels in whole registers"
        );
        let mut operands = Operands {
            g,
            layout,
            padded,
            transposed,
            v0: 0,
        };
        let vectors = layout.channels / S::LANES;
        while operands.v0 < vectors {
            operands.v0 += register_blocks(s, operands, vectors - operands.v0, &mut *total);
        }
    }
}

/// The widest block of output-channel registers that fits the register file and is left
/// (`left` registers from `operands.v0`), with all its tap blocks; returns its width. A block
/// keeps `V * T` sums, `V` loaded gradients and a broadcast value in registers: with 32
/// registers (16 lanes) blocks of 4 x 6, 2 x 12 or 1 x 24 sums, with 16 (8 lanes) 2 x 6 or
/// 1 x 12; 4 x 3 would leave 16 registers one short (measured on an AMD EPYC Zen 3: `cnn4`'s
/// training 1.13-1.20x faster with blocks of 2 x 6 than of 4 x 3, which spill). After the
/// widest tap blocks come smaller ones for the taps left, so that little is computed for
/// nothing (a 3x3 kernel on one channel is 9 taps: 6 + 3).
#[inline(always)]
fn register_blocks<S: Simd>(s: S, operands: Operands<'_>, left: usize, total: &mut [f32]) -> usize {
    match (S::LANES, left) {
        (16, 4..) => tap_blocks::<S, 4, 6, 3, 2, 1>(s, operands, total),
        (16, 2..) => tap_blocks::<S, 2, 12, 6, 3, 1>(s, operands, total),
        (16, _) => tap_blocks::<S, 1, 24, 12, 6, 3>(s, operands, total),
        (_, 2..) => tap_blocks::<S, 2, 6, 3, 2, 1>(s, operands, total),
        _ => tap_blocks::<S, 1, 12, 6, 3, 1>(s, operands, total),
    }
}

/// What every tap block of one image reads.
#[derive(Clone, Copy)]
struct Operands<'a> {
    g: &'a ConvGeometry,
    layout: Layout,
    padded: &'a [f32],
    transposed: &'a [f32],
    /// The first register of output channels of the block.
    v0: usize,
}

/// Blocks of `A` taps while that many are left, then one of `B` and one of `C` if as many are
/// left, then blocks of `D` (the last one perhaps partial), for `V` registers of output
/// channels; returns `V`.
#[inline(always)]
fn tap_blocks<
    S: Simd,
    const V: usize,
    const A: usize,
    const B: usize,
    const C: usize,
    const D: usize,
>(
    s: S,
    operands: Operands<'_>,
    total: &mut [f32],
) -> usize {
    let taps = Layout::taps(operands.g);
    let mut t0 = 0;
    while taps - t0 >= A {
        tap_block::<S, V, A>(s, operands, t0, total);
        t0 += A;
    }
    if taps - t0 >= B {
        tap_block::<S, V, B>(s, operands, t0, total);
        t0 += B;
    }
    if taps - t0 >= C {
        tap_block::<S, V, C>(s, operands, t0, total);
        t0 += C;
    }
    while t0 < taps {
        tap_block::<S, V, D>(s, operands, t0, total);
        t0 += D;
    }
    V
}

/// Taps `t0 .. t0 + T` (those past the last tap repeat it; their sums are dropped) for
/// registers `v0 .. v0 + V` of output channels, added to `total`.
#[inline(always)]
fn tap_block<S: Simd, const V: usize, const T: usize>(
    s: S,
    operands: Operands<'_>,
    t0: usize,
    total: &mut [f32],
) {
    let Operands {
        g,
        layout,
        padded,
        transposed,
        v0,
    } = operands;
    let [kh, kw] = g.window.kernel;
    let [sh, sw] = g.window.stride;
    let (out_height, out_width) = (g.output.height, g.output.width);
    let taps = Layout::taps(g);
    let offset = |t: usize| {
        let (c, k) = (t / (kh * kw), t % (kh * kw));
        c * layout.padded_plane + k / kw * layout.pitch + k % kw
    };
    // Every value any tap reads lies inside the padded image: the last tap of the last
    // channel at the last output position reads its last value.
    let last = offset(taps - 1) + (out_height - 1) * sh * layout.pitch + (out_width - 1) * sw;
    assert!(last < padded.len() && t0 < taps);
    assert!(transposed.len() >= g.positions() * layout.channels);
    assert!((v0 + V) * S::LANES <= layout.channels && total.len() >= taps * layout.channels);
    let offsets: [usize; T] = std::array::from_fn(|k| offset((t0 + k).min(taps - 1)));
    let mut sums = [[s.zero(); T]; V];
    for oy in 0..out_height {
        let row = oy * sh * layout.pitch;
        for ox in 0..out_width {
            let at = row + ox * sw;
            let position = (oy * out_width + ox) * layout.channels + v0 * S::LANES;
            // SAFETY: `position + V * LANES <= positions * channels` and every tap's
            // `offset + at <= last < padded.len()` (checked above).
            unsafe {
                let dy: [S::V; V] = std::array::from_fn(|v| {
                    s.load(transposed.as_ptr().add(position + v * S::LANES))
                });
                for (k, &tap) in offsets.iter().enumerate() {
                    let x = s.splat(*padded.get_unchecked(tap + at));
                    for v in 0..V {
                        sums[v][k] = s.mul_add(dy[v], x, sums[v][k]);
                    }
                }
            }
        }
    }
    for (k, t) in (t0..taps.min(t0 + T)).enumerate() {
        for (v, sum) in sums.iter().enumerate() {
            let at = t * layout.channels + (v0 + v) * S::LANES;
            let to = total[at..at + S::LANES].as_mut_ptr();
            // SAFETY: `to` points at `LANES` values of `total` (sliced just above).
            unsafe { s.store(to, s.add(s.load(to), sum[k])) };
        }
    }
}

/// `to[p * pitch + c] = from[c * positions + p]` for `c < channels`, in square blocks of one
/// register per row transposed in registers (log2 LANES rounds of interleaving rows `k` and
/// `k + LANES / 2`), the edges value by value.
#[inline(always)]
fn transpose<S: Simd>(
    s: S,
    from: &[f32],
    channels: usize,
    positions: usize,
    to: &mut [f32],
    pitch: usize,
) {
    assert!(from.len() >= channels * positions && to.len() >= positions * pitch);
    assert!(channels <= pitch);
    let lanes = S::LANES;
    let (whole_channels, whole_positions) = (channels / lanes * lanes, positions / lanes * lanes);
    for c0 in (0..whole_channels).step_by(lanes) {
        for p0 in (0..whole_positions).step_by(lanes) {
            let mut rows = [s.zero(); 16];
            for (r, row) in rows.iter_mut().enumerate().take(lanes) {
                // SAFETY: row `c0 + r < channels`, values `p0 .. p0 + LANES <= positions`.
                *row = unsafe { s.load(from.as_ptr().add((c0 + r) * positions + p0)) };
            }
            let mut half = lanes / 2;
            while half > 0 {
                let mut next = [s.zero(); 16];
                for k in 0..lanes / 2 {
                    (next[2 * k], next[2 * k + 1]) = s.interleave(rows[k], rows[k + lanes / 2]);
                }
                rows = next;
                half /= 2;
            }
            for (p, row) in rows.iter().enumerate().take(lanes) {
                // SAFETY: position `p0 + p < positions`, channels `c0 .. c0 + LANES <= pitch`.
                unsafe { s.store(to.as_mut_ptr().add((p0 + p) * pitch + c0), *row) };
            }
        }
        for p in whole_positions..positions {
            for c in c0..c0 + lanes {
                to[p * pitch + c] = from[c * positions + p];
            }
        }
    }
    for c in whole_channels..channels {
        for p in 0..positions {
            to[p * pitch + c] = from[c * positions + p];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::tensor::Shape;
    use crate::window::Window2d;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every instruction set this CPU has, against the reference convolution's weight and
        /// bias gradients, on random shapes, kernels, strides and paddings (channel counts
        /// that are and are not whole registers, positions that are and are not).
        #[test]
        fn every_path_matches_the_reference(
            batch in 1usize..4,
            channels in 1usize..6,
            channels_out in prop::sample::select(vec![1usize, 5, 8, 16, 19, 32, 48, 64]),
            size in (1usize..20, 1usize..20),
            kernel in (1usize..6, 1usize..6),
            stride in (1usize..4, 1usize..4),
            padding in (0usize..3, 0usize..3),
            seed in any::<u64>(),
        ) {
            use rand::{Rng, SeedableRng};
            let window = Window2d::new([kernel.0, kernel.1], [stride.0, stride.1], [padding.0, padding.1]);
            let Some([out_height, out_width]) = window.output_size([size.0, size.1]) else {
                return Ok(());
            };
            let g = ConvGeometry::new(
                Shape::new(channels, size.0, size.1),
                Shape::new(channels_out, out_height, out_width),
                window,
            );
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut random = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
            };
            let input = Tensor::from_vec(batch, g.input, random(batch * g.input.len())).unwrap();
            let grad_output = Tensor::from_vec(batch, g.output, random(batch * g.output.len())).unwrap();
            let weight = random(channels_out * g.patch_len());
            let (mut plain_weight, mut plain_bias) = (vec![0.0; weight.len()], vec![0.0; channels_out]);
            let mut plain_input = Tensor::zeros(batch, g.input);
            reference::conv2d_backward(
                &g, &input, &weight, &grad_output, &mut plain_input, &mut plain_weight, &mut plain_bias,
            );
            for isa in Isa::supported() {
                // Gradients are added to what is there.
                let (mut fast_weight, mut fast_bias) = (vec![0.5; weight.len()], vec![0.5; channels_out]);
                let mut scratch = Vec::new();
                weight_gradient(
                    isa, &g, &input, &grad_output, &mut fast_weight, Some(&mut fast_bias), &mut scratch,
                );
                for (what, fast, plain) in [("weight", &fast_weight, &plain_weight), ("bias", &fast_bias, &plain_bias)] {
                    for (i, (&f, &p)) in fast.iter().zip(plain.iter()).enumerate() {
                        let expected = p + 0.5;
                        prop_assert!(
                            (f - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                            "{isa}: {what} gradient [{i}] {f} against the reference's {expected}"
                        );
                    }
                }
            }
        }
    }
}
