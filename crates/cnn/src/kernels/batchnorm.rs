//! Batch normalisation's passes over `[N, C, H, W]`, one task per channel: a channel's
//! statistics and then its normalisation (or its gradient sums and then its input gradient)
//! read the same planes twice while they are still in the core's cache, no two tasks touch the
//! same values, and the bits do not depend on the thread count.
//!
//! The statistics of a channel combine each plane's mean and sum of squared deviations from
//! that mean, in f64, with Chan et al.'s pairwise update: no cancellation (as `E[x^2] - E[x]^2`
//! would have), and the sums inside a plane run in registers of f32 in blocks short enough that
//! their rounding stays near f32's own.

use super::simd::{Isa, Kernel, Simd};
use super::team::{for_each_task_above, SharedSlice};
use super::PARALLEL_MIN_WORK;
use crate::tensor::Tensor;

/// Values summed in f32 registers before the sum goes on in f64: a lane's sum rounds by a part
/// of its size at each of its `BLOCK / LANES` additions. With 1,024, a 27x14 plane's
/// `sum(dy * (x - mean))` with AVX2 was off by 1.8e-7 of the terms' total size (the tests'
/// bound is 1e-7 of it); a horizontal sum per 128 values costs next to nothing.
const BLOCK: usize = 128;

/// Each channel's mean and `1 / sqrt(variance + epsilon)`, `[C]` each.
#[derive(Clone, Copy, Debug)]
pub struct Statistics<'a> {
    pub mean: &'a [f32],
    pub inverse_std: &'a [f32],
}

/// Training's forward pass: normalises each channel of `input` with the mean and (biased)
/// variance of its `N x H x W` values, then `output = weight * x_hat + bias` (and `max(0, ·)`
/// of it with `relu`). Writes each channel's mean, `1 / sqrt(variance + epsilon)` and unbiased
/// variance (for the running statistics) to `[mean, inverse_std, unbiased]`, `[C]` each.
pub fn forward_with_batch_statistics(
    isa: Isa,
    input: &Tensor,
    (weight, bias): (&[f32], &[f32]),
    epsilon: f32,
    (output, relu): (&mut Tensor, bool),
    [mean, inverse_std, unbiased]: [&mut [f32]; 3],
) {
    let (batch, shape) = (input.batch(), input.shape());
    let (channels, plane) = (shape.channels, shape.plane());
    let lens = [
        weight.len(),
        bias.len(),
        mean.len(),
        inverse_std.len(),
        unbiased.len(),
    ];
    check(input, output, channels, &lens);
    let out = SharedSlice::new(output.data_mut());
    let recorded = [mean, inverse_std, unbiased].map(SharedSlice::new);
    for_each_channel(channels, batch * shape.len(), |c| {
        let (mut count, mut mean, mut squares) = (0.0f64, 0.0f64, 0.0f64);
        for n in 0..batch {
            let (plane_mean, plane_squares) = isa.dispatch(Moments {
                values: input.plane(n, c),
            });
            let len = plane as f64;
            let total = count + len;
            let delta = plane_mean - mean;
            mean += delta * len / total;
            squares += plane_squares + delta * delta * count * len / total;
            count = total;
        }
        let variance = squares / count.max(1.0);
        let inverse_std = 1.0 / (variance as f32 + epsilon).sqrt();
        let unbiased = (squares / (count - 1.0).max(1.0)) as f32;
        for (slice, value) in recorded.iter().zip([mean as f32, inverse_std, unbiased]) {
            // SAFETY: element `c` of each is written by this channel's task alone.
            unsafe { *slice.ptr_for(c, 1) = value };
        }
        normalize_channel(
            isa,
            input,
            c,
            (weight[c], bias[c]),
            (mean as f32, inverse_std),
            (out, relu),
        );
    });
}

/// Inference's forward pass (or one that treats the statistics as constants):
/// `output = weight * (x - mean) * inverse_std + bias` per channel (and `max(0, ·)` of it with
/// `relu`).
pub fn forward_with_statistics(
    isa: Isa,
    input: &Tensor,
    (weight, bias): (&[f32], &[f32]),
    statistics: Statistics<'_>,
    (output, relu): (&mut Tensor, bool),
) {
    let channels = input.shape().channels;
    let lens = [
        weight.len(),
        bias.len(),
        statistics.mean.len(),
        statistics.inverse_std.len(),
    ];
    check(input, output, channels, &lens);
    let out = SharedSlice::new(output.data_mut());
    for_each_channel(channels, input.len(), |c| {
        let stats = (statistics.mean[c], statistics.inverse_std[c]);
        normalize_channel(isa, input, c, (weight[c], bias[c]), stats, (out, relu));
    });
}

/// Where the backward pass puts its gradients.
pub struct BatchNormGrads<'a> {
    /// `[C]` each, added to.
    pub weight: &'a mut [f32],
    pub bias: &'a mut [f32],
    /// `[N, C, H, W]`, overwritten; `None` when nobody needs it.
    pub input: Option<&'a mut Tensor>,
}

/// With `x_hat = (x - mean) * inverse_std` and `M` values per channel:
/// `dweight += sum(dy * x_hat)`, `dbias += sum(dy)`, and with the batch's statistics
/// (`batch_statistics`) `dx = weight * inverse_std / M * (M * dy - sum(dy) - x_hat *
/// sum(dy * x_hat))`, with constant ones `dx = weight * inverse_std * dy`. With `relu_output`
/// (the output of a ReLU after the normalisation, `grad_output` being its gradient), `dy` is
/// that gradient where the output is positive and zero elsewhere.
pub fn backward(
    isa: Isa,
    input: &Tensor,
    (grad_output, relu_output): (&Tensor, Option<&Tensor>),
    weight: &[f32],
    (statistics, batch_statistics): (Statistics<'_>, bool),
    grads: BatchNormGrads<'_>,
) {
    let (batch, shape) = (input.batch(), input.shape());
    let (channels, plane) = (shape.channels, shape.plane());
    let lens = [
        weight.len(),
        statistics.mean.len(),
        statistics.inverse_std.len(),
    ];
    check(input, grad_output, channels, &lens);
    if let Some(relu_output) = relu_output {
        check(input, relu_output, channels, &lens);
    }
    let gate = |n: usize, c: usize| relu_output.map_or(&[][..], |y| y.plane(n, c));
    assert_eq!((grads.weight.len(), grads.bias.len()), (channels, channels));
    let count = (batch * plane) as f32;
    let (grad_weight, grad_bias) = (SharedSlice::new(grads.weight), SharedSlice::new(grads.bias));
    let grad_input = grads.input.map(|t| {
        assert_eq!(
            t.len(),
            input.len(),
            "an input gradient of the input's size"
        );
        SharedSlice::new(t.data_mut())
    });
    for_each_channel(channels, 2 * batch * shape.len(), |c| {
        let (mean, inverse_std) = (statistics.mean[c], statistics.inverse_std[c]);
        let (mut sum_dy, mut sum_dy_centered) = (0.0f64, 0.0f64);
        for n in 0..batch {
            let (dy, dy_centered) = isa.dispatch(GradientSums {
                x: input.plane(n, c),
                dy: (grad_output.plane(n, c), gate(n, c)),
                mean,
            });
            sum_dy += dy;
            sum_dy_centered += dy_centered;
        }
        let sum_dy_xhat = (sum_dy_centered * f64::from(inverse_std)) as f32;
        let sum_dy = sum_dy as f32;
        // SAFETY: element `c` of each is written by this channel's task alone.
        unsafe {
            *grad_weight.ptr_for(c, 1) += sum_dy_xhat;
            *grad_bias.ptr_for(c, 1) += sum_dy;
        }
        let Some(grad_input) = grad_input else {
            return;
        };
        let scale = weight[c] * inverse_std;
        // dx = a * dy + b * (x - mean) + shift, the constants of the formula above gathered.
        let (a, b, shift) = if batch_statistics {
            let factor = scale / count;
            (scale, -factor * inverse_std * sum_dy_xhat, -factor * sum_dy)
        } else {
            (scale, 0.0, 0.0)
        };
        for n in 0..batch {
            let start = (n * channels + c) * plane;
            // SAFETY: plane (n, c) is written by this channel's task alone.
            let dx = unsafe { grad_input.part(start, plane) };
            // With fixed statistics the input does not enter (b = 0): not read.
            let y = if batch_statistics {
                (input.plane(n, c), mean)
            } else {
                (&[][..], 0.0)
            };
            isa.dispatch(TwoAffine {
                x: (grad_output.plane(n, c), 0.0, gate(n, c)),
                y,
                coefficients: [a, b, shift],
                out: (dx, false),
            });
        }
    });
}

fn check(input: &Tensor, other: &Tensor, channels: usize, per_channel: &[usize]) {
    assert_eq!(input.len(), other.len(), "tensors of the same size");
    assert!(
        per_channel.iter().all(|&len| len == channels),
        "one value per channel"
    );
}

/// Runs `task(c)` for every channel, in parallel when `work` (values touched) pays for it.
fn for_each_channel(channels: usize, work: usize, task: impl Fn(usize) + Sync) {
    for_each_task_above(work, PARALLEL_MIN_WORK, channels, task);
}

/// Writes channel `c` of the output: `weight * (x - mean) * inverse_std + bias`, and
/// `max(0, ·)` of it with `relu`.
fn normalize_channel(
    isa: Isa,
    input: &Tensor,
    c: usize,
    (weight, bias): (f32, f32),
    (mean, inverse_std): (f32, f32),
    (out, relu): (SharedSlice<f32>, bool),
) {
    let (channels, plane) = (input.shape().channels, input.shape().plane());
    let scale = weight * inverse_std;
    for n in 0..input.batch() {
        let start = (n * channels + c) * plane;
        // SAFETY: plane (n, c) is written by this channel's task alone.
        let dst = unsafe { out.part(start, plane) };
        isa.dispatch(TwoAffine {
            x: (input.plane(n, c), mean, &[]),
            y: (&[], 0.0),
            coefficients: [scale, 0.0, bias],
            out: (dst, relu),
        });
    }
}

/// The mean of a plane and the sum of its squared deviations from that mean.
struct Moments<'a> {
    values: &'a [f32],
}

impl Kernel for Moments<'_> {
    type Output = (f64, f64);

    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> (f64, f64) {
        let values = self.values;
        if values.is_empty() {
            return (0.0, 0.0);
        }
        let sum: f64 = values
            .chunks(BLOCK)
            .map(|block| f64::from(block_sum::<S, false>(s, block, 0.0)))
            .sum();
        let mean = sum / values.len() as f64;
        let squares = values
            .chunks(BLOCK)
            .map(|block| f64::from(block_sum::<S, true>(s, block, mean as f32)))
            .sum();
        (mean, squares)
    }
}

/// `sum(x)`, or with `SQUARES` `sum((x - center)^2)`, two registers at a time.
#[inline(always)]
fn block_sum<S: Simd, const SQUARES: bool>(s: S, x: &[f32], center: f32) -> f32 {
    let (mut a, mut b) = (s.zero(), s.zero());
    let c = s.splat(center);
    let mut i = 0;
    while i + 2 * S::LANES <= x.len() {
        // SAFETY: values i .. i + 2 * LANES lie inside `x`.
        let (u, v) = unsafe {
            (
                s.load(x.as_ptr().add(i)),
                s.load(x.as_ptr().add(i + S::LANES)),
            )
        };
        if SQUARES {
            let (u, v) = (s.sub(u, c), s.sub(v, c));
            a = s.mul_add(u, u, a);
            b = s.mul_add(v, v, b);
        } else {
            a = s.add(a, u);
            b = s.add(b, v);
        }
        i += 2 * S::LANES;
    }
    let tail: f32 = x[i..]
        .iter()
        .map(|&v| {
            if SQUARES {
                (v - center) * (v - center)
            } else {
                v
            }
        })
        .sum();
    s.sum(s.add(a, b)) + tail
}

/// `sum(dy)` and `sum(dy * (x - mean))` over a plane, `dy` given with its gate (see
/// [`TwoAffine`]).
struct GradientSums<'a> {
    x: &'a [f32],
    dy: (&'a [f32], &'a [f32]),
    mean: f32,
}

impl Kernel for GradientSums<'_> {
    type Output = (f64, f64);

    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> (f64, f64) {
        let GradientSums {
            x,
            dy: (dy, gate),
            mean,
        } = self;
        assert_eq!(x.len(), dy.len());
        assert!(gate.is_empty() || gate.len() == dy.len());
        let (m, zero) = (s.splat(mean), s.zero());
        let (mut sum_dy, mut sum_dy_centered) = (0.0f64, 0.0f64);
        for (start, x) in (0..).step_by(BLOCK).zip(x.chunks(BLOCK)) {
            let dy = &dy[start..start + x.len()];
            let gate = gate.get(start..start + x.len()).unwrap_or_default();
            let (mut a, mut b) = (s.zero(), s.zero());
            let mut i = 0;
            while i + S::LANES <= x.len() {
                // SAFETY: values i .. i + LANES lie inside the blocks (of the same length).
                let (u, mut d) = unsafe { (s.load(x.as_ptr().add(i)), s.load(dy.as_ptr().add(i))) };
                if !gate.is_empty() {
                    // SAFETY: as above.
                    let open = s.greater(unsafe { s.load(gate.as_ptr().add(i)) }, zero);
                    d = s.select(open, d, zero);
                }
                a = s.add(a, d);
                b = s.mul_add(s.sub(u, m), d, b);
                i += S::LANES;
            }
            let (mut tail, mut tail_centered) = (0.0f32, 0.0f32);
            for j in i..x.len() {
                let d = if gate.is_empty() || gate[j] > 0.0 {
                    dy[j]
                } else {
                    0.0
                };
                tail += d;
                tail_centered += (x[j] - mean) * d;
            }
            sum_dy += f64::from(s.sum(a) + tail);
            sum_dy_centered += f64::from(s.sum(b) + tail_centered);
        }
        (sum_dy, sum_dy_centered)
    }
}

/// `out = a * (x - cx) + b * (y - cy) + shift` with `[a, b, shift]`, `x` and `y` given with
/// their centres (`y` empty: `out = a * (x - cx) + shift`), then `max(0, ·)` when `out` comes
/// with `true`. `x` comes with a gate too: where the gate (when not empty) is not positive,
/// `x - cx` counts as zero (a ReLU's gradient, closed where its output is zero). Centred
/// before the product, not folded into `shift`: a channel whose variance is small against its
/// mean has a large `a * mean`, and `a * x - a * mean` would cancel to a few correct digits.
struct TwoAffine<'a> {
    x: (&'a [f32], f32, &'a [f32]),
    y: (&'a [f32], f32),
    coefficients: [f32; 3],
    out: (&'a mut [f32], bool),
}

impl Kernel for TwoAffine<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let TwoAffine {
            x: (x, cx, gate),
            y: (y, cy),
            coefficients: [a, b, shift],
            out: (out, relu),
        } = self;
        let len = out.len();
        assert!(x.len() == len && (y.is_empty() || y.len() == len));
        assert!(gate.is_empty() || gate.len() == len);
        let (va, vb, vshift) = (s.splat(a), s.splat(b), s.splat(shift));
        let (vcx, vcy, zero) = (s.splat(cx), s.splat(cy), s.zero());
        let mut i = 0;
        while i + S::LANES <= len {
            // SAFETY: values i .. i + LANES lie inside `x`, `out` and (when not empty) `y` and
            // `gate`.
            unsafe {
                let mut centred = s.sub(s.load(x.as_ptr().add(i)), vcx);
                if !gate.is_empty() {
                    let open = s.greater(s.load(gate.as_ptr().add(i)), zero);
                    centred = s.select(open, centred, zero);
                }
                let mut value = s.mul_add(centred, va, vshift);
                if !y.is_empty() {
                    let centred = s.sub(s.load(y.as_ptr().add(i)), vcy);
                    value = s.mul_add(centred, vb, value);
                }
                if relu {
                    value = s.max(value, zero);
                }
                s.store(out.as_mut_ptr().add(i), value);
            }
            i += S::LANES;
        }
        for j in i..len {
            let open = gate.is_empty() || gate[j] > 0.0;
            let mut value = if open { (x[j] - cx) * a } else { 0.0 } + shift;
            if !y.is_empty() {
                value += (y[j] - cy) * b;
            }
            out[j] = if relu { value.max(0.0) } else { value };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::tensor::Shape;
    use proptest::prelude::*;

    fn close(isa: Isa, what: &str, fast: &[f32], plain: &[f32]) -> Result<(), TestCaseError> {
        close_to_scale(isa, what, fast, plain, |_| 1.0)
    }

    /// Within 2e-5 of the larger of `|plain|` and `scale(i)`: the size of the terms that
    /// float32 sums to the value.
    fn close_to_scale(
        isa: Isa,
        what: &str,
        fast: &[f32],
        plain: &[f32],
        scale: impl Fn(usize) -> f32,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(fast.len(), plain.len());
        for (i, (&f, &p)) in fast.iter().zip(plain).enumerate() {
            let scale = p.abs().max(scale(i)).max(1.0);
            prop_assert!(
                (f - p).abs() <= 2e-5 * scale,
                "{isa}: {what}[{i}] {f} against the reference's {p}"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every instruction set this CPU has, against the plain f64 loops, on random shapes
        /// (planes shorter than a register, longer than a block) with an offset mean.
        #[test]
        fn every_path_matches_the_reference(
            batch in 1usize..5,
            channels in 1usize..5,
            height in 1usize..40,
            width in 1usize..40,
            offset in -3.0f32..3.0,
            seed in any::<u64>(),
        ) {
            use rand::{Rng, SeedableRng};
            let shape = Shape::new(channels, height, width);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut random = |len: usize, offset: f32| -> Vec<f32> {
                (0..len).map(|_| offset + rng.random_range(-1.0f32..1.0)).collect()
            };
            let input = Tensor::from_vec(batch, shape, random(batch * shape.len(), offset)).unwrap();
            let grad_output = Tensor::from_vec(batch, shape, random(batch * shape.len(), 0.0)).unwrap();
            let weight = random(channels, 1.0);
            let bias = random(channels, 0.0);
            let plain = reference::batch_norm(&input, &grad_output, (&weight, &bias), 1e-5);
            for isa in Isa::supported() {
                let mut output = Tensor::zeros(batch, shape);
                let [mut mean, mut inverse_std, mut unbiased] = [(); 3].map(|_| vec![0.0; channels]);
                forward_with_batch_statistics(
                    isa, &input, (&weight, &bias), 1e-5, (&mut output, false),
                    [&mut mean, &mut inverse_std, &mut unbiased],
                );
                close(isa, "output", output.data(), plain.output.data())?;
                let mut rectified = Tensor::zeros(batch, shape);
                forward_with_batch_statistics(
                    isa, &input, (&weight, &bias), 1e-5, (&mut rectified, true),
                    [&mut mean, &mut inverse_std, &mut unbiased],
                );
                let expected: Vec<f32> = output.data().iter().map(|&y| y.max(0.0)).collect();
                prop_assert_eq!(rectified.data(), &expected[..], "{}: output with a ReLU", isa);
                close(isa, "mean", &mean, &plain.mean)?;
                close(isa, "inverse std", &inverse_std, &plain.inverse_std)?;
                close(isa, "unbiased variance", &unbiased, &plain.unbiased)?;
                let statistics = Statistics { mean: &mean, inverse_std: &inverse_std };
                let mut fixed = Tensor::zeros(batch, shape);
                forward_with_statistics(isa, &input, (&weight, &bias), statistics, (&mut fixed, false));
                close(isa, "output with the same statistics", fixed.data(), plain.output.data())?;
                forward_with_statistics(isa, &input, (&weight, &bias), statistics, (&mut fixed, true));
                prop_assert_eq!(fixed.data(), &expected[..], "{}: the same with a ReLU", isa);
                for batch_statistics in [true, false] {
                    // Gradients are added to what is there.
                    let (mut grad_weight, mut grad_bias) = (vec![0.5; channels], vec![0.5; channels]);
                    let mut grad_input = Tensor::zeros(batch, shape);
                    backward(
                        isa, &input, (&grad_output, None), &weight, (statistics, batch_statistics),
                        BatchNormGrads { weight: &mut grad_weight, bias: &mut grad_bias, input: Some(&mut grad_input) },
                    );
                    // After a ReLU: the same bits as the gradient that the ReLU lets through.
                    let gated: Vec<f32> = grad_output.data().iter().zip(rectified.data())
                        .map(|(&dy, &y)| if y > 0.0 { dy } else { 0.0 })
                        .collect();
                    let gated = Tensor::from_vec(batch, shape, gated).unwrap();
                    let mut through_relu = [(); 2].map(|_| (vec![0.5; channels], vec![0.5; channels], Tensor::zeros(batch, shape)));
                    for (k, (w, b, dx)) in through_relu.iter_mut().enumerate() {
                        let gradients = [(&gated, None), (&grad_output, Some(&rectified))][k];
                        backward(
                            isa, &input, gradients, &weight, (statistics, batch_statistics),
                            BatchNormGrads { weight: w, bias: b, input: Some(dx) },
                        );
                    }
                    let [(w0, b0, dx0), (w1, b1, dx1)] = &through_relu;
                    prop_assert_eq!((w0, b0), (w1, b1), "{}: parameter gradients through a ReLU", isa);
                    prop_assert_eq!(dx0.data(), dx1.data(), "{}: input gradient through a ReLU", isa);
                    let plus_half = |v: &[f32]| v.iter().map(|g| g + 0.5).collect::<Vec<_>>();
                    // Sums of a channel's terms, whose float32 partial sums round by a small part
                    // of the terms' total size (seen: 1.3e-8 of it), which thousands of terms
                    // make larger than 2e-5: held to 1e-7 of it.
                    let sum_of_sizes = |term: &dyn Fn(usize, f32) -> f32| -> Vec<f32> {
                        let mut sizes = vec![0.0f32; channels];
                        for (i, &dy) in grad_output.data().iter().enumerate() {
                            sizes[i / shape.plane() % channels] += term(i, dy).abs();
                        }
                        sizes
                    };
                    let x_hat = |i: usize| {
                        let c = i / shape.plane() % channels;
                        (input.data()[i] - plain.mean[c]) * plain.inverse_std[c]
                    };
                    let weight_terms = sum_of_sizes(&|i, dy| dy * x_hat(i));
                    let bias_terms = sum_of_sizes(&|_, dy| dy);
                    close_to_scale(isa, "weight gradient", &grad_weight, &plus_half(&plain.grad_weight), |c| 0.005 * weight_terms[c])?;
                    close_to_scale(isa, "bias gradient", &grad_bias, &plus_half(&plain.grad_bias), |c| 0.005 * bias_terms[c])?;
                    let expected = match batch_statistics {
                        true => &plain.grad_input,
                        false => &plain.grad_input_fixed,
                    };
                    // `weight * inverse_std * (dy - mean(dy) - x_hat * mean(dy x_hat))`: the
                    // differences cancel to much less than `dy` when a channel's variance is
                    // small (a few values close together), and their rounding is then
                    // multiplied by a large `inverse_std`, in PyTorch's float32 as here.
                    let largest_dy = grad_output.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let terms = |i: usize| {
                        let c = i / shape.plane() % channels;
                        (weight[c] * plain.inverse_std[c]).abs() * largest_dy
                    };
                    close_to_scale(isa, "input gradient", grad_input.data(), expected.data(), terms)?;
                }
            }
        }
    }
}
