//! The fast kernels against the plain reference kernels (`cnn::kernels::reference`), as
//! property tests over random shapes, on every instruction set and with every algorithm that
//! applies, and every layer's forward pass against values computed by hand.
//!
//! The convolution properties run once per instruction set, as tests named after it
//! (`avx512::winograd_conv_matches_reference`, `avx2::...`, `portable::...`): a CPU without
//! one prints that it skipped it, and the test passes without running.

mod common;

use cnn::kernels::conv::{Conv2dKernel, ConvAlgorithm, ConvGeometry, ConvGrads};
use cnn::kernels::pool::{self, PoolGeometry, PoolKind};
use cnn::kernels::reference;
use cnn::kernels::simd::Isa;
use cnn::kernels::Scratch;
use cnn::layers::{Conv2dConfig, DenseConfig, LayerScratch, SingleInput};
use cnn::window::Window2d;
use cnn::{LayerSpec, Mode, Shape, Tensor};
use common::{rng, tensor, uniform};
use proptest::prelude::*;

/// Largest error allowed between a fast kernel and the reference, relative to
/// `max(|ref|, 1, scale / 10)`. `scale` is the sum of the absolute values of the terms that
/// make up the value (the same kernel run on absolute values): f32 sums of hundreds of terms
/// carry rounding of order 1e-7 of it, which cancellation can leave well above 1e-5 of a small
/// result. Without cancellation the bound is the plain `1e-5 * max(|ref|, 1)`.
const TOLERANCE: f32 = 1e-5;

/// Asserts that `fast` matches `reference` entry by entry within [`TOLERANCE`], with `scale`
/// as described there (`reference` itself when no sum can cancel).
fn matches(
    what: &str,
    fast: &[f32],
    reference: &[f32],
    scale: &[f32],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(fast.len(), reference.len(), "{}: lengths differ", what);
    for (i, ((&f, &r), &s)) in fast.iter().zip(reference).zip(scale).enumerate() {
        let error = (f - r).abs() / r.abs().max(1.0).max(s.abs() / 10.0);
        prop_assert!(
            error <= TOLERANCE,
            "{}[{}]: fast {}, reference {} (relative error {:.2e})",
            what,
            i,
            f,
            r,
            error
        );
    }
    Ok(())
}

/// Random values in `[-1, 1)`, or, when `coarse`, small integers with many ties.
fn values(rng: &mut impl rand::Rng, len: usize, coarse: bool) -> Vec<f32> {
    let values = uniform(rng, len, -1.0, 1.0);
    if coarse {
        values.into_iter().map(|v| (v * 2.0).round()).collect()
    } else {
        values
    }
}

fn epilogue(bias: Option<&[f32]>) -> cnn::kernels::Epilogue<'_> {
    cnn::kernels::Epilogue {
        bias,
        accumulate: false,
        relu: false,
        max_pool: false,
    }
}

fn abs(values: &[f32]) -> Vec<f32> {
    values.iter().map(|v| v.abs()).collect()
}

/// The reference convolution of the magnitudes (`|x|`, `|w|`, `|b|`): the size of the terms
/// each output sums, which bounds the rounding error a different order of summing makes.
fn magnitude(g: &ConvGeometry, x: &Tensor, weight: &[f32], bias: Option<&[f32]>) -> Tensor {
    let mut scale = Tensor::zeros(x.batch(), g.output);
    let abs_bias = bias.map(abs);
    reference::conv2d_forward(
        g,
        &abs_tensor(x),
        &abs(weight),
        abs_bias.as_deref(),
        &mut scale,
    );
    scale
}

fn abs_tensor(t: &Tensor) -> Tensor {
    tensor(t.batch(), t.shape(), abs(t.data()))
}

/// One random convolution: its geometry, input, weights and bias values, and the generator to
/// draw more from.
struct ConvCase {
    g: ConvGeometry,
    x: Tensor,
    weight: Vec<f32>,
    bias_values: Vec<f32>,
    rng: common::TestRng,
}

impl ConvCase {
    /// `None` when the window does not fit the input.
    fn draw(
        batch: usize,
        channels: usize,
        out_channels: usize,
        input: [usize; 2],
        window: impl Into<ConvWindow>,
        seed: u64,
    ) -> Option<Self> {
        let ConvWindow {
            window,
            dilation,
            groups,
        } = window.into();
        let extent = [0, 1].map(|a| dilation[a] * (window.kernel[a] - 1) + 1);
        let [out_height, out_width] =
            Window2d::new(extent, window.stride, window.padding).output_size(input)?;
        let g = ConvGeometry {
            dilation,
            groups,
            ..ConvGeometry::new(
                Shape::new(channels, input[0], input[1]),
                Shape::new(out_channels, out_height, out_width),
                window,
            )
        };
        let mut rng = rng(seed);
        let x = tensor(
            batch,
            g.input,
            values(&mut rng, batch * g.input.len(), false),
        );
        let weight = values(&mut rng, out_channels * g.patch_len(), false);
        let bias_values = values(&mut rng, out_channels, false);
        Some(ConvCase {
            g,
            x,
            weight,
            bias_values,
            rng,
        })
    }
}

/// A convolution's window with its dilation and groups (plain for a bare [`Window2d`]).
#[derive(Clone, Copy, Debug)]
struct ConvWindow {
    window: Window2d,
    dilation: [usize; 2],
    groups: usize,
}

impl From<Window2d> for ConvWindow {
    fn from(window: Window2d) -> Self {
        ConvWindow {
            window,
            dilation: [1, 1],
            groups: 1,
        }
    }
}

/// Every algorithm this machine can compute `g` with, on `isa`: each forward algorithm that
/// applies once, and each input-gradient algorithm that applies once (each paired with one of
/// the other pass that applies with it).
fn conv_kernels(g: &ConvGeometry, isa: Isa) -> Vec<Conv2dKernel> {
    let pair =
        |forward, input_gradient| Conv2dKernel::with_algorithms(*g, isa, forward, input_gradient);
    let mut kernels: Vec<Conv2dKernel> = Vec::new();
    for algorithm in ConvAlgorithm::ALL {
        let covered = |kernels: &[Conv2dKernel], forward: bool| {
            kernels.iter().any(|k| {
                algorithm
                    == if forward {
                        k.forward_algorithm()
                    } else {
                        k.input_gradient_algorithm()
                    }
            })
        };
        if !covered(&kernels, true) {
            kernels.extend(
                ConvAlgorithm::ALL
                    .into_iter()
                    .find_map(|other| pair(algorithm, other)),
            );
        }
        if !covered(&kernels, false) {
            kernels.extend(
                ConvAlgorithm::ALL
                    .into_iter()
                    .find_map(|other| pair(other, algorithm)),
            );
        }
    }
    assert!(
        !kernels.is_empty(),
        "some algorithm computes every convolution"
    );
    kernels
}

/// The kernel's name in failure messages: `avx2 winograd/im2col` (forward, input gradient).
fn kernel_name(kernel: &Conv2dKernel) -> String {
    format!(
        "{} {}/{}",
        kernel.isa(),
        kernel.forward_algorithm().name(),
        kernel.input_gradient_algorithm().name()
    )
}

/// Runs the reference convolution, forward and backward, and the fast one with every
/// algorithm that applies on `isa`, on one random case. Fast buffers start as garbage (NaN
/// scratch and input gradient) that they must overwrite; parameter gradients start at the same
/// random values in both, to which both must add.
#[allow(clippy::too_many_arguments)]
fn compare_conv(
    isa: Isa,
    batch: usize,
    channels: usize,
    out_channels: usize,
    input: [usize; 2],
    window: impl Into<ConvWindow>,
    bias: bool,
    input_grad: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let case = ConvCase::draw(batch, channels, out_channels, input, window, seed);
    prop_assume!(case.is_some());
    let ConvCase {
        g,
        x,
        weight,
        bias_values,
        mut rng,
    } = case.unwrap();
    let bias = bias.then_some(&bias_values[..]);
    let dy = tensor(
        batch,
        g.output,
        values(&mut rng, batch * g.output.len(), false),
    );
    let start_weight = values(&mut rng, weight.len(), false);
    let start_bias = values(&mut rng, out_channels, false);

    let mut slow = Tensor::zeros(batch, g.output);
    reference::conv2d_forward(&g, &x, &weight, bias, &mut slow);
    let scale = magnitude(&g, &x, &weight, bias);
    let mut slow_dx = Tensor::zeros(batch, g.input);
    let (mut slow_dw, mut slow_db) = (start_weight.clone(), start_bias.clone());
    reference::conv2d_backward(
        &g,
        &x,
        &weight,
        &dy,
        &mut slow_dx,
        &mut slow_dw,
        &mut slow_db,
    );
    let mut scale_dx = Tensor::zeros(batch, g.input);
    let (mut scale_dw, mut scale_db) = (abs(&start_weight), abs(&start_bias));
    reference::conv2d_backward(
        &g,
        &abs_tensor(&x),
        &abs(&weight),
        &abs_tensor(&dy),
        &mut scale_dx,
        &mut scale_dw,
        &mut scale_db,
    );

    for kernel in conv_kernels(&g, isa) {
        let name = kernel_name(&kernel);
        // Larger than any case needs: the kernels shrink it, so every entry they read is NaN
        // unless they wrote it first.
        let mut scratch = Scratch {
            floats: vec![f32::NAN; 1 << 18],
            tensors: Vec::new(),
        };
        let mut fast = tensor(batch, g.output, vec![f32::NAN; batch * g.output.len()]);
        kernel.forward(&x, &weight, epilogue(bias), &mut fast, &mut scratch);
        matches(
            &format!("{name} conv forward"),
            fast.data(),
            slow.data(),
            scale.data(),
        )?;

        let mut scratch = Scratch {
            floats: vec![f32::NAN; 1 << 18],
            tensors: Vec::new(),
        };
        let mut fast_dx = tensor(batch, g.input, vec![f32::NAN; batch * g.input.len()]);
        let (mut fast_dw, mut fast_db) = (start_weight.clone(), start_bias.clone());
        kernel.backward(
            &x,
            &weight,
            &dy,
            ConvGrads {
                input: input_grad.then_some(&mut fast_dx),
                weight: &mut fast_dw,
                bias: bias.is_some().then_some(&mut fast_db[..]),
            },
            &mut scratch,
        );
        matches(
            &format!("{name} conv weight gradient"),
            &fast_dw,
            &slow_dw,
            &scale_dw,
        )?;
        if bias.is_some() {
            matches(
                &format!("{name} conv bias gradient"),
                &fast_db,
                &slow_db,
                &scale_db,
            )?;
        } else {
            prop_assert_eq!(&fast_db, &start_bias, "no bias gradient was asked for");
        }
        if input_grad {
            matches(
                &format!("{name} conv input gradient"),
                fast_dx.data(),
                slow_dx.data(),
                scale_dx.data(),
            )?;
        }
    }
    Ok(())
}

/// Runs the fast and the reference pooling, forward and backward, on one random case.
#[allow(clippy::too_many_arguments)]
fn compare_pool(
    isa: Isa,
    kind: PoolKind,
    batch: usize,
    channels: usize,
    input: [usize; 2],
    window: Window2d,
    coarse: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    // A pooling window never lies wholly in the padding: the layer refuses such windows.
    prop_assume!(window.padding[0] * 2 <= window.kernel[0]);
    prop_assume!(window.padding[1] * 2 <= window.kernel[1]);
    let output = window.output_size(input);
    prop_assume!(output.is_some());
    let [out_height, out_width] = output.unwrap();
    let g = PoolGeometry {
        input: Shape::new(channels, input[0], input[1]),
        output: Shape::new(channels, out_height, out_width),
        window,
    };
    let mut rng = rng(seed);
    let x = tensor(
        batch,
        g.input,
        values(&mut rng, batch * g.input.len(), coarse),
    );
    let dy = tensor(
        batch,
        g.output,
        values(&mut rng, batch * g.output.len(), false),
    );

    let mut fast = tensor(batch, g.output, vec![f32::NAN; batch * g.output.len()]);
    pool::pool_forward(isa, kind, &g, &x, &mut fast);
    let mut slow = Tensor::zeros(batch, g.output);
    reference::pool_forward(kind, &g, &x, &mut slow);
    // Pooling sums at most 25 terms of at most 2: no cancellation worth a scale.
    matches(
        &format!("{isa} {kind:?} pool forward"),
        fast.data(),
        slow.data(),
        slow.data(),
    )?;

    let mut fast_dx = tensor(batch, g.input, vec![f32::NAN; batch * g.input.len()]);
    pool::pool_backward(isa, kind, &g, &x, &dy, &mut fast_dx);
    let mut slow_dx = Tensor::zeros(batch, g.input);
    reference::pool_backward(kind, &g, &x, &dy, &mut slow_dx);
    let what = format!("{isa} {kind:?} pool backward");
    matches(&what, fast_dx.data(), slow_dx.data(), slow_dx.data())
}

fn pool_kind() -> impl Strategy<Value = PoolKind> {
    prop_oneof![Just(PoolKind::Max), Just(PoolKind::Average)]
}

/// `(kernel, padding)` along one pooling axis: kernel 1-5, padding 0-2 but at most half the
/// kernel (drawing only valid pairs, rather than rejecting half the draws).
fn pool_axis() -> impl Strategy<Value = (usize, usize)> {
    (1usize..=5).prop_flat_map(|kernel| (Just(kernel), 0..=(kernel / 2).min(2)))
}

/// Runs the fast convolution with ReLU and 2x2 max pooling fused in, with every forward
/// algorithm that applies on `isa`, and the reference convolution, ReLU and pooling one after
/// the other, on one random case.
#[allow(clippy::too_many_arguments)]
fn compare_fused(
    isa: Isa,
    batch: usize,
    channels: usize,
    out_channels: usize,
    input: [usize; 2],
    window: impl Into<ConvWindow>,
    bias: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let Some(ConvCase {
        g,
        x,
        weight,
        bias_values,
        ..
    }) = ConvCase::draw(batch, channels, out_channels, input, window, seed)
    else {
        return Ok(());
    };
    prop_assume!(g.output.height >= 2 && g.output.width >= 2);
    let bias = bias.then_some(&bias_values[..]);
    let fused = cnn::kernels::Epilogue {
        bias,
        accumulate: false,
        relu: true,
        max_pool: true,
    };
    let pooled = fused.output_shape(g.output);
    let mut conv_out = Tensor::zeros(batch, g.output);
    reference::conv2d_forward(&g, &x, &weight, bias, &mut conv_out);
    conv_out.data_mut().iter_mut().for_each(|v| *v = v.max(0.0));
    let pool = PoolGeometry {
        input: g.output,
        output: pooled,
        window: Window2d::new([2, 2], [2, 2], [0, 0]),
    };
    let mut slow = Tensor::zeros(batch, pooled);
    reference::pool_forward(PoolKind::Max, &pool, &conv_out, &mut slow);
    let scale = magnitude(&g, &x, &weight, bias);
    let mut pooled_scale = Tensor::zeros(batch, pooled);
    reference::pool_forward(PoolKind::Max, &pool, &scale, &mut pooled_scale);
    for kernel in conv_kernels(&g, isa) {
        let mut fast = tensor(batch, pooled, vec![f32::NAN; batch * pooled.len()]);
        kernel.forward(&x, &weight, fused, &mut fast, &mut Scratch::default());
        let what = format!("{} fused conv", kernel_name(&kernel));
        matches(&what, fast.data(), slow.data(), pooled_scale.data())?;
    }
    Ok(())
}

/// Runs the fast convolution with a residual addition (and with `relu` a ReLU) fused in: the
/// output holds the other summand beforehand, as the inference plan leaves it. Every forward
/// algorithm that applies on `isa` against the reference convolution plus the summand.
#[allow(clippy::too_many_arguments)]
fn compare_residual(
    isa: Isa,
    batch: usize,
    (channels, out_channels): (usize, usize),
    input: [usize; 2],
    window: impl Into<ConvWindow>,
    bias: bool,
    relu: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let Some(ConvCase {
        g,
        x,
        weight,
        bias_values,
        mut rng,
    }) = ConvCase::draw(batch, channels, out_channels, input, window, seed)
    else {
        return Ok(());
    };
    let bias = bias.then_some(&bias_values[..]);
    let summand = values(&mut rng, batch * g.output.len(), false);
    let mut slow = Tensor::zeros(batch, g.output);
    reference::conv2d_forward(&g, &x, &weight, bias, &mut slow);
    for (v, &r) in slow.data_mut().iter_mut().zip(&summand) {
        *v += r;
        if relu {
            *v = v.max(0.0);
        }
    }
    let mut scale = magnitude(&g, &x, &weight, bias);
    for (s, r) in scale.data_mut().iter_mut().zip(&summand) {
        *s += r.abs();
    }
    let fused = cnn::kernels::Epilogue {
        bias,
        accumulate: true,
        relu,
        max_pool: false,
    };
    for kernel in conv_kernels(&g, isa) {
        let mut fast = tensor(batch, g.output, summand.clone());
        kernel.forward(&x, &weight, fused, &mut fast, &mut Scratch::default());
        let what = format!("{} conv + residual", kernel_name(&kernel));
        matches(&what, fast.data(), slow.data(), scale.data())?;
    }
    Ok(())
}

/// Defines each property once per instruction set, as `#[test] fn` in modules `avx512`, `avx2`
/// and `portable`: the property's body sees the instruction set as `$isa`. On a CPU without
/// it, the test says so on stderr and passes without running: a path the CPU lacks is skipped,
/// never failed, and no property rejects all its cases.
macro_rules! for_each_isa {
    ($($(#[$meta:meta])* fn $name:ident($isa:ident; $($arg:ident in $strategy:expr),* $(,)?) $body:block)*) => {
        for_each_isa!(@module avx512, Isa::Avx512, $($(#[$meta])* fn $name($isa; $($arg in $strategy),*) $body)*);
        for_each_isa!(@module avx2, Isa::Avx2, $($(#[$meta])* fn $name($isa; $($arg in $strategy),*) $body)*);
        for_each_isa!(@module portable, Isa::Portable, $($(#[$meta])* fn $name($isa; $($arg in $strategy),*) $body)*);
    };
    (@module $module:ident, $which:expr, $($(#[$meta:meta])* fn $name:ident($isa:ident; $($arg:ident in $strategy:expr),*) $body:block)*) => {
        mod $module {
            use super::*;
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    let $isa: Isa = $which;
                    if !$isa.is_supported() {
                        let has: Vec<&str> = Isa::supported().iter().map(|i| i.name()).collect();
                        eprintln!("skipped: this CPU cannot run {} kernels (it has: {})", $isa, has.join(", "));
                        return;
                    }
                    proptest!(ProptestConfig::with_cases(128), |($($arg in $strategy),*)| $body);
                }
            )*
        }
    };
}

for_each_isa! {
    /// im2col convolution (forward, and backward for input, weight and bias), and the direct
    /// and Winograd ones where they apply, equal the direct loops for any batch, channel
    /// counts, input size, and per-axis kernel, stride and padding that fit; with and without
    /// bias, with and without an input gradient asked for.
    fn conv_matches_reference(
        isa;
        batch in 1usize..=4,
        channels in 1usize..=4,
        out_channels in 1usize..=5,
        input in [1usize..=12, 1usize..=12],
        kernel in [1usize..=5, 1usize..=5],
        stride in [1usize..=3, 1usize..=3],
        padding in [0usize..=2, 0usize..=2],
        bias in any::<bool>(),
        input_grad in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let window = Window2d::new(kernel, stride, padding);
        compare_conv(isa, batch, channels, out_channels, input, window, bias, input_grad, seed)?;
    }

    /// The pointwise case (1x1 kernel, stride 1, no padding: no unfolding) equals the direct
    /// loops too. Random shapes almost never draw it, so it has its own property.
    fn pointwise_conv_matches_reference(
        isa;
        batch in 1usize..=4,
        channels in 1usize..=4,
        out_channels in 1usize..=5,
        input in [1usize..=12, 1usize..=12],
        bias in any::<bool>(),
        input_grad in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let window = Window2d::new([1, 1], [1, 1], [0, 0]);
        compare_conv(isa, batch, channels, out_channels, input, window, bias, input_grad, seed)?;
    }

    /// The Winograd case (3x3, stride 1, at least 8 input channels: forward, and the input
    /// gradient when there are at least 8 output channels) equals the direct loops, on odd
    /// and even sizes (tiles hanging over the edge), rows of more than one register of tiles
    /// (up to 19 tiles), several blocks of the product's output channels, and batches large
    /// enough to be split over threads inside one image.
    fn winograd_conv_matches_reference(
        isa;
        batch in 1usize..=3,
        channels in 8usize..=20,
        out_channels in 1usize..=20,
        input in [1usize..=20, 1usize..=38],
        padding in [0usize..=2, 0usize..=2],
        bias in any::<bool>(),
        input_grad in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let window = Window2d::new([3, 3], [1, 1], padding);
        compare_conv(isa, batch, channels, out_channels, input, window, bias, input_grad, seed)?;
    }

    /// A convolution with its ReLU and 2x2 max pooling fused in (inference) equals the
    /// reference convolution, ReLU and pooling one after the other, with every algorithm that
    /// applies (Winograd, direct and both im2col layouts), odd sizes included (the last row
    /// or column is dropped).
    fn fused_conv_relu_pool_matches_reference(
        isa;
        batch in 1usize..=3,
        channels in prop_oneof![1usize..=3, 8usize..=12],
        out_channels in 1usize..=6,
        input in [2usize..=15, 2usize..=15],
        kernel in prop_oneof![Just(3usize), 1usize..=5],
        padding in 0usize..=2,
        bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let window = Window2d::new([kernel, kernel], [1, 1], [padding, padding]);
        compare_fused(isa, batch, channels, out_channels, input, window, bias, seed)?;
    }

    /// A convolution with a residual addition (and a ReLU) fused in, which adds its result to
    /// the values the output holds, equals the reference convolution plus those values, with
    /// every algorithm that applies: any stride, padding, dilation and groups (depthwise
    /// included), enough input channels for Winograd, odd sizes and rows wider than a
    /// register.
    fn fused_conv_residual_matches_reference(
        isa;
        batch in 1usize..=3,
        groups in prop_oneof![Just(1usize), 1usize..=3],
        depthwise in any::<bool>(),
        per_group in (prop_oneof![1usize..=4, 8usize..=12], 1usize..=4),
        input in [2usize..=13, 2usize..=37],
        kernel in prop_oneof![Just(3usize), 1usize..=5],
        stride in prop_oneof![Just(1usize), 1usize..=2],
        padding in 0usize..=2,
        dilation in prop_oneof![3 => Just(1usize), 1 => 1usize..=2],
        bias in any::<bool>(),
        relu in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (channels, out_channels, groups) = if depthwise {
            (per_group.0 * 3, per_group.0 * 3, per_group.0 * 3)
        } else {
            (per_group.0 * groups, per_group.1 * groups, groups)
        };
        let window = ConvWindow {
            window: Window2d::new([kernel, kernel], [stride, stride], [padding, padding]),
            dilation: [dilation, dilation],
            groups,
        };
        compare_residual(isa, batch, (channels, out_channels), input, window, bias, relu, seed)?;
    }

    /// Grouped and dilated convolutions (groups dividing both channel counts, dilation up to
    /// 3, any stride and padding) equal the direct loops: group by group with each group's own
    /// kernel, or im2col for the dilated ungrouped ones.
    fn grouped_dilated_conv_matches_reference(
        isa;
        batch in 1usize..=3,
        groups in 1usize..=3,
        per_group in [1usize..=3, 1usize..=3],
        input in [3usize..=14, 3usize..=14],
        kernel in [1usize..=3, 1usize..=3],
        stride in [1usize..=2, 1usize..=2],
        padding in [0usize..=2, 0usize..=2],
        dilation in [1usize..=3, 1usize..=3],
        bias in any::<bool>(),
        input_grad in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let window = ConvWindow { window: Window2d::new(kernel, stride, padding), dilation, groups };
        let [c, oc] = per_group.map(|n| n * groups);
        compare_conv(isa, batch, c, oc, input, window, bias, input_grad, seed)?;
    }

    /// Depthwise convolutions (a group per channel, stride 1, kernels up to 5x7 with any
    /// padding below the kernel, rows wider than two registers) equal the direct loops, plain
    /// and with ReLU and max pooling fused in.
    fn depthwise_conv_matches_reference(
        isa;
        batch in 1usize..=2,
        channels in 1usize..=9,
        input in [2usize..=12, 2usize..=40],
        kernel in [1usize..=5, 1usize..=7],
        padding in [0usize..=4, 0usize..=6],
        bias in any::<bool>(),
        input_grad in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let padding = [padding[0].min(kernel[0] - 1), padding[1].min(kernel[1] - 1)];
        let window = ConvWindow {
            window: Window2d::new(kernel, [1, 1], padding),
            dilation: [1, 1],
            groups: channels,
        };
        compare_conv(isa, batch, channels, channels, input, window, bias, input_grad, seed)?;
        compare_fused(isa, batch, channels, channels, input, window, bias, seed)?;
    }

    /// The direct case (stride 1, few input channels) equals the direct loops, plain and
    /// with ReLU and max pooling fused in, on rows wider than one register of columns and
    /// with several blocks of output channels.
    fn direct_conv_matches_reference(
        isa;
        batch in 1usize..=2,
        channels in 1usize..=3,
        out_channels in 1usize..=20,
        input in [1usize..=40, 1usize..=40],
        kernel in [1usize..=5, 1usize..=5],
        padding in [0usize..=2, 0usize..=2],
        bias in any::<bool>(),
        input_grad in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let window = Window2d::new(kernel, [1, 1], padding);
        compare_conv(isa, batch, channels, out_channels, input, window, bias, input_grad, seed)?;
        compare_fused(isa, batch, channels, out_channels, input, window, bias, seed)?;
    }

    /// Max and average pooling (forward and backward) equal the direct loops for any shape,
    /// window, stride, padding up to half the window, and ceil mode; rows long enough for the
    /// vectorised loops over a row's windows to run whole registers and a remainder. Half the
    /// cases draw small integers, so windows hold ties, which both kernels must break the same
    /// way (the first maximum in row-major order).
    fn pool_matches_reference(
        isa;
        kind in pool_kind(),
        batch in 1usize..=4,
        channels in 1usize..=4,
        input in [1usize..=12, 1usize..=48],
        rows in pool_axis(),
        columns in pool_axis(),
        stride in [1usize..=3, 1usize..=3],
        ceil_mode in any::<bool>(),
        coarse in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let window = Window2d {
            kernel: [rows.0, columns.0],
            stride,
            padding: [rows.1, columns.1],
            ceil_mode,
        };
        compare_pool(isa, kind, batch, channels, input, window, coarse, seed)?;
    }

    /// The same for the 2x2, stride-2 window without padding, which has a fast path of its
    /// own (and which the draws above rarely hit): even and odd sizes (a last row or column
    /// that no window covers), rows of up to two registers of windows and some left over,
    /// ties half the time.
    fn two_by_two_pool_matches_reference(
        isa;
        kind in pool_kind(),
        batch in 1usize..=3,
        channels in 1usize..=3,
        input in [2usize..=13, 2usize..=70],
        coarse in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let window = Window2d::new([2, 2], [2, 2], [0, 0]);
        compare_pool(isa, kind, batch, channels, input, window, coarse, seed)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Golden values, computed by hand

/// The 3x3 image used by the convolution goldens:
/// ```text
/// 1 2 3
/// 4 5 6
/// 7 8 9
/// ```
fn image_1_to_9() -> Tensor {
    tensor(1, Shape::new(1, 3, 3), (1..=9).map(|v| v as f32).collect())
}

/// Runs both conv kernels and the conv layer forward; asserts all three give `expected`.
fn assert_conv_forward(g: &ConvGeometry, weight: &[f32], bias: Option<&[f32]>, expected: &[f32]) {
    let input = image_1_to_9();
    for isa in Isa::supported() {
        for kernel in conv_kernels(g, isa) {
            let mut fast = Tensor::zeros(1, g.output);
            kernel.forward(
                &input,
                weight,
                epilogue(bias),
                &mut fast,
                &mut Scratch::default(),
            );
            assert_eq!(fast.data(), expected, "{}", kernel_name(&kernel));
        }
    }
    let mut slow = Tensor::zeros(1, g.output);
    reference::conv2d_forward(g, &input, weight, bias, &mut slow);
    assert_eq!(slow.data(), expected, "reference kernel");

    let spec = LayerSpec::Conv2d(Conv2dConfig {
        out_channels: g.output.channels,
        kernel: g.window.kernel,
        stride: g.window.stride,
        padding: g.window.padding,
        dilation: [1, 1],
        groups: 1,
        bias: bias.is_some(),
    });
    let mut layer = spec
        .build("0", &[g.input], Isa::from_env().unwrap())
        .unwrap();
    layer.params_mut()[0].value = weight.to_vec();
    if let Some(bias) = bias {
        layer.params_mut()[1].value = bias.to_vec();
    }
    assert_eq!(layer.output_shape(), g.output);
    let mut output = Tensor::zeros(1, g.output);
    layer.forward_one(
        &input,
        &mut output,
        Mode::Infer,
        &mut LayerScratch::default(),
    );
    assert_eq!(output.data(), expected, "conv layer");
}

/// A 2x2 convolution with two output channels over the 3x3 image 1..9, stride 1, no padding.
/// ```text
/// channel 0: kernel [1 2; 3 4], bias 0.5      channel 1: kernel [1 1; 1 1], bias -1
/// (0,0): 1*1 + 2*2 + 4*3 + 5*4 = 37 -> 37.5   (0,0): 1+2+4+5 = 12 -> 11
/// (0,1): 2*1 + 3*2 + 5*3 + 6*4 = 47 -> 47.5   (0,1): 2+3+5+6 = 16 -> 15
/// (1,0): 4*1 + 5*2 + 7*3 + 8*4 = 67 -> 67.5   (1,0): 4+5+7+8 = 24 -> 23
/// (1,1): 5*1 + 6*2 + 8*3 + 9*4 = 77 -> 77.5   (1,1): 5+6+8+9 = 28 -> 27
/// ```
/// (Cross-correlation, as PyTorch: the kernel is not flipped.)
#[test]
fn conv_forward_golden() {
    let g = ConvGeometry::new(
        Shape::new(1, 3, 3),
        Shape::new(2, 2, 2),
        Window2d::new([2, 2], [1, 1], [0, 0]),
    );
    let weight = [1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0];
    let expected = [37.5, 47.5, 67.5, 77.5, 11.0, 15.0, 23.0, 27.0];
    assert_conv_forward(&g, &weight, Some(&[0.5, -1.0]), &expected);
}

/// The kernel [1 2; 3 4] over the 3x3 image 1..9 with padding 1 and stride 2, no bias. The
/// padded image is 5x5, so 2x2 windows starting at -1 and 1 on each axis fit:
/// ```text
/// (0,0): rows -1..0, cols -1..0: only pixel 1 under kernel entry 4:  1*4         = 4
/// (0,1): rows -1..0, cols  1..2: pixels 2, 3 under entries 3, 4:     2*3 + 3*4   = 18
/// (1,0): rows  1..2, cols -1..0: pixels 4, 7 under entries 2, 4:     4*2 + 7*4   = 36
/// (1,1): rows  1..2, cols  1..2: 5*1 + 6*2 + 8*3 + 9*4                           = 77
/// ```
#[test]
fn conv_forward_golden_with_padding_and_stride() {
    let g = ConvGeometry::new(
        Shape::new(1, 3, 3),
        Shape::new(1, 2, 2),
        Window2d::new([2, 2], [2, 2], [1, 1]),
    );
    assert_conv_forward(&g, &[1.0, 2.0, 3.0, 4.0], None, &[4.0, 18.0, 36.0, 77.0]);
}

/// The backward pass of the kernel [1 2; 3 4] over the 3x3 image 1..9 (stride 1, no padding)
/// with an output gradient of all ones:
/// ```text
/// dW[ky][kx] = sum of the pixels under that kernel entry over the 4 windows:
///   dW = [1+2+4+5  2+3+5+6; 4+5+7+8  5+6+8+9] = [12 16; 24 28]
/// db = 4 (four outputs)
/// dX[y][x] = sum of the kernel entries that touch pixel (y, x):
///   [1      1+2      2   ]   [1  3 2]
///   [1+3  1+2+3+4   2+4  ] = [4 10 6]
///   [3      3+4      4   ]   [3  7 4]
/// ```
#[test]
fn conv_backward_golden() {
    let g = ConvGeometry::new(
        Shape::new(1, 3, 3),
        Shape::new(1, 2, 2),
        Window2d::new([2, 2], [1, 1], [0, 0]),
    );
    let (input, weight) = (image_1_to_9(), [1.0, 2.0, 3.0, 4.0]);
    let dy = tensor(1, g.output, vec![1.0; 4]);
    let expected_dx = [1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0];

    for isa in Isa::supported() {
        for kernel in conv_kernels(&g, isa) {
            let mut dx = Tensor::zeros(1, g.input);
            let (mut dw, mut db) = (vec![0.0; 4], vec![0.0]);
            kernel.backward(
                &input,
                &weight,
                &dy,
                ConvGrads {
                    input: Some(&mut dx),
                    weight: &mut dw,
                    bias: Some(&mut db),
                },
                &mut Scratch::default(),
            );
            assert_eq!(
                (dx.data(), &dw[..], &db[..]),
                (&expected_dx[..], &[12.0, 16.0, 24.0, 28.0][..], &[4.0][..]),
                "{}",
                kernel_name(&kernel)
            );
        }
    }

    let mut dx = Tensor::zeros(1, g.input);
    let (mut dw, mut db) = (vec![0.0; 4], vec![0.0]);
    reference::conv2d_backward(&g, &input, &weight, &dy, &mut dx, &mut dw, &mut db);
    assert_eq!(
        (dx.data(), &dw[..], &db[..]),
        (&expected_dx[..], &[12.0, 16.0, 24.0, 28.0][..], &[4.0][..])
    );
}

/// The 7x7 image whose pixel (y, x) holds `7y + x` (0 to 48), and the 2x2 stride-2 ceil-mode
/// window that pools it to 4x4. Window rows are {0,1}, {2,3}, {4,5} and {6} (the last one
/// partial, one row); columns the same.
fn ceil_pool_case() -> (Tensor, PoolGeometry) {
    let input = tensor(1, Shape::new(1, 7, 7), (0..49).map(|v| v as f32).collect());
    let g = PoolGeometry {
        input: Shape::new(1, 7, 7),
        output: Shape::new(1, 4, 4),
        window: Window2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            ceil_mode: true,
        },
    };
    assert_eq!(g.window.output_size([7, 7]), Some([4, 4]));
    (input, g)
}

/// Runs both pool kernels and the pool layer forward; asserts all three give `expected`.
fn assert_pool_forward(kind: PoolKind, input: &Tensor, g: &PoolGeometry, expected: &[f32]) {
    for isa in Isa::supported() {
        let mut fast = Tensor::zeros(input.batch(), g.output);
        pool::pool_forward(isa, kind, g, input, &mut fast);
        assert_eq!(fast.data(), expected, "{isa} fast kernel");
    }
    let mut slow = Tensor::zeros(input.batch(), g.output);
    reference::pool_forward(kind, g, input, &mut slow);
    assert_eq!(slow.data(), expected, "reference kernel");
    let spec = match kind {
        PoolKind::Max => LayerSpec::MaxPool2d(g.window),
        PoolKind::Average => LayerSpec::AvgPool2d(g.window),
    };
    let layer = spec
        .build("0", &[g.input], Isa::from_env().unwrap())
        .unwrap();
    assert_eq!(layer.output_shape(), g.output);
    let mut output = Tensor::zeros(input.batch(), g.output);
    layer.forward_one(
        input,
        &mut output,
        Mode::Infer,
        &mut LayerScratch::default(),
    );
    assert_eq!(output.data(), expected, "pool layer");
}

/// Max pooling 7x7 -> 4x4 in ceil mode over `7y + x`: each window's maximum is its bottom-right
/// pixel, clipped to the image. The last row of windows covers only row 6, the last column
/// only column 6, and the corner window only pixel 48:
/// ```text
/// 7*1+1 = 8   7*1+3 = 10   7*1+5 = 12   7*1+6 = 13
///        22           24           26           27
///        36           38           40           41
/// 7*6+1 = 43          45           47   7*6+6 = 48
/// ```
#[test]
fn max_pool_ceil_golden() {
    let (input, g) = ceil_pool_case();
    let expected = [
        8.0, 10.0, 12.0, 13.0, 22.0, 24.0, 26.0, 27.0, 36.0, 38.0, 40.0, 41.0, 43.0, 45.0, 47.0,
        48.0,
    ];
    assert_pool_forward(PoolKind::Max, &input, &g, &expected);
}

/// Average pooling 7x7 -> 4x4 in ceil mode over `7y + x` divides by the pixels each window
/// covers (4, 2 or 1), not by the window's area. The mean of `7y + x` is
/// `7 * mean(y) + mean(x)`; the mean row of the four window rows is 0.5, 2.5, 4.5 and 6 (the
/// partial window has row 6 only), and the same for columns:
/// ```text
/// 3.5+0.5 = 4    3.5+2.5 = 6     3.5+4.5 = 8     3.5+6 = 9.5   (pixels 6 and 13: 19 / 2)
/// 17.5+0.5 = 18            20              22            23.5
/// 31.5+0.5 = 32            34              36            37.5
/// 42+0.5 = 42.5            44.5            46.5     42+6 = 48  (pixel 48 alone: 48 / 1)
/// ```
#[test]
fn avg_pool_ceil_golden() {
    let (input, g) = ceil_pool_case();
    let expected = [
        4.0, 6.0, 8.0, 9.5, 18.0, 20.0, 22.0, 23.5, 32.0, 34.0, 36.0, 37.5, 42.5, 44.5, 46.5, 48.0,
    ];
    assert_pool_forward(PoolKind::Average, &input, &g, &expected);
}

/// Max pooling with the maximum in different corners of its windows, and a tie:
/// ```text
/// 9 1 | 2 3        max 9 (top-left)     max 7 (bottom-left)
/// 0 4 | 7 5
/// ----+----
/// 1 6 | 8 8        max 6 (top-right)    max 8, tied: the first in row-major order,
/// 2 3 | 8 0                             (2, 2), takes the whole gradient
/// ```
/// Backward with output gradient [1 2; 3 4] sends each value to its window's maximum.
#[test]
fn max_pool_golden_routes_gradients_to_the_first_maximum() {
    #[rustfmt::skip]
    let input = tensor(1, Shape::new(1, 4, 4), vec![
        9.0, 1.0, 2.0, 3.0,
        0.0, 4.0, 7.0, 5.0,
        1.0, 6.0, 8.0, 8.0,
        2.0, 3.0, 8.0, 0.0,
    ]);
    let g = PoolGeometry {
        input: Shape::new(1, 4, 4),
        output: Shape::new(1, 2, 2),
        window: Window2d::new([2, 2], [2, 2], [0, 0]),
    };
    assert_pool_forward(PoolKind::Max, &input, &g, &[9.0, 7.0, 6.0, 8.0]);

    let dy = tensor(1, g.output, vec![1.0, 2.0, 3.0, 4.0]);
    #[rustfmt::skip]
    let expected = [
        1.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 2.0, 0.0,
        0.0, 3.0, 4.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
    ];
    for isa in Isa::supported() {
        let mut fast = Tensor::zeros(1, g.input);
        pool::pool_backward(isa, PoolKind::Max, &g, &input, &dy, &mut fast);
        assert_eq!(fast.data(), expected, "{isa} fast kernel");
    }
    let mut slow = Tensor::zeros(1, g.input);
    reference::pool_backward(PoolKind::Max, &g, &input, &dy, &mut slow);
    assert_eq!(slow.data(), expected, "reference kernel");
}

/// ReLU keeps positive values and zeroes the rest; backward passes the gradient where the input
/// was positive, and not at exactly 0 (as PyTorch).
/// ```text
/// x      = -2  -0.5  0  0.5  3
/// relu   =  0   0    0  0.5  3
/// dy     =  1   2    3  4    5
/// dx     =  0   0    0  4    5
/// ```
#[test]
fn relu_golden() {
    let shape = Shape::flat(5);
    let layer = LayerSpec::Relu
        .build("0", &[shape], Isa::from_env().unwrap())
        .unwrap();
    let input = tensor(1, shape, vec![-2.0, -0.5, 0.0, 0.5, 3.0]);
    let mut output = Tensor::zeros(1, shape);
    layer.forward_one(
        &input,
        &mut output,
        Mode::Infer,
        &mut LayerScratch::default(),
    );
    assert_eq!(output.data(), [0.0, 0.0, 0.0, 0.5, 3.0]);

    let dy = tensor(1, shape, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    let mut dx = tensor(1, shape, vec![f32::NAN; 5]);
    layer.backward_one(
        &input,
        &output,
        &dy,
        Some(&mut dx),
        &mut [],
        &mut LayerScratch::default(),
    );
    assert_eq!(dx.data(), [0.0, 0.0, 0.0, 4.0, 5.0]);
}

/// Dense `y = x W^T + b` with `W = [1 0 -1; 2 1 0]` (PyTorch's `[out, in]`) and `b = [0.5, -1]`,
/// on a batch of two:
/// ```text
/// x = [ 1 2 3]:  y = [1 - 3 + 0.5,  2 + 2 - 1] = [-1.5,  3]
/// x = [-1 0 1]:  y = [-1 - 1 + 0.5, -2 + 0 - 1] = [-1.5, -3]
/// ```
#[test]
fn dense_golden() {
    let spec = LayerSpec::Dense(DenseConfig {
        out_features: 2,
        bias: true,
    });
    let mut layer = spec
        .build("0", &[Shape::flat(3)], Isa::from_env().unwrap())
        .unwrap();
    layer.params_mut()[0].value = vec![1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
    layer.params_mut()[1].value = vec![0.5, -1.0];
    assert_eq!(layer.params()[0].dims, [2, 3]);
    let input = tensor(2, Shape::flat(3), vec![1.0, 2.0, 3.0, -1.0, 0.0, 1.0]);
    let mut output = Tensor::zeros(2, Shape::flat(2));
    layer.forward_one(
        &input,
        &mut output,
        Mode::Infer,
        &mut LayerScratch::default(),
    );
    assert_eq!(output.data(), [-1.5, 3.0, -1.5, -3.0]);
}

/// Flatten keeps NCHW order: channel by channel, each row by row.
#[test]
fn flatten_golden() {
    let shape = Shape::new(2, 2, 2);
    let layer = LayerSpec::Flatten
        .build("0", &[shape], Isa::from_env().unwrap())
        .unwrap();
    let values: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let input = tensor(2, shape, values.clone());
    let mut output = Tensor::zeros(2, Shape::flat(8));
    layer.forward_one(
        &input,
        &mut output,
        Mode::Infer,
        &mut LayerScratch::default(),
    );
    assert_eq!(output.shape(), Shape::flat(8));
    assert_eq!(output.data(), values);
}

/// The property checks on fixed, larger cases, independent of proptest's draws: a "same" 3x3
/// convolution (batch 3, 4 -> 5 channels, 12x11) and 3x3 stride-2 padded ceil-mode pooling.
#[test]
fn kernels_match_reference_on_fixed_cases() {
    let window = Window2d::new([3, 3], [1, 1], [1, 1]);
    for isa in Isa::supported() {
        compare_conv(isa, 3, 4, 5, [12, 11], window, true, true, 7).unwrap();
        compare_conv(isa, 3, 9, 10, [12, 37], window, true, true, 8).unwrap();
    }
    let window = Window2d {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
        ceil_mode: true,
    };
    for isa in Isa::supported() {
        compare_pool(isa, PoolKind::Average, 3, 2, [8, 7], window, false, 8).unwrap();
        compare_pool(isa, PoolKind::Max, 3, 2, [8, 7], window, true, 9).unwrap();
    }
}

/// Inputs narrower than the padding: whole window rows and columns fall in the padding, some
/// windows read a single pixel (1x1 and 2x3 images under a 5x5 kernel with padding 2, and
/// stride 3 with padding 2 on a 1x4 image).
#[test]
fn conv_on_inputs_smaller_than_the_kernel() {
    for (input, window) in [
        ([1, 1], Window2d::new([5, 5], [1, 1], [2, 2])),
        ([2, 3], Window2d::new([5, 5], [1, 1], [2, 2])),
        ([1, 4], Window2d::new([5, 5], [3, 3], [2, 2])),
        ([3, 1], Window2d::new([3, 5], [2, 1], [1, 2])),
    ] {
        for isa in Isa::supported() {
            compare_conv(isa, 2, 2, 3, input, window, true, true, 11).unwrap();
        }
    }
}

/// The fast inference path (the plan: ReLU and pooling fused into convolutions, ReLU into
/// additions, batch normalisation folded into convolutions, shared buffers; large batches in
/// per-thread sub-batches) gives the logits of the plain forward pass, on every preset, the
/// residual ones included (whose additions the convolutions before them compute in place),
/// and on a batch that leaves a ragged last sub-batch, for one image and for many. The last
/// graph adds onto values that cannot be overwritten: the network's input, and a value that
/// a later node reads again.
#[test]
fn infer_matches_forward() {
    use cnn::network::SUB_BATCH;
    let mut rng = rng(7);
    let summands_kept = "add(conv 1@3 pad=1 | ), relu, \
        concat(add(conv 1@3 pad=1 nobias, batchnorm | ) | ), relu, conv 4@3 pad=1, gap, dense classes";
    for (preset, isa) in [
        "xo",
        "lenet5",
        "cnn4",
        "fashion",
        "resnet20",
        "fashion-resnet",
        summands_kept,
    ]
    .into_iter()
    .flat_map(|preset| Isa::supported().into_iter().map(move |isa| (preset, isa)))
    {
        let notation = cnn::arch::preset(preset).unwrap_or_else(|| preset.to_string());
        let layers = cnn::arch::parse(&notation, 10).unwrap();
        let shape = Shape::new(1, 28, 28);
        let mut network = cnn::Network::with_isa(&layers, shape, isa).unwrap();
        network.init_kaiming(&mut rng);
        // Batch normalisations with statistics of their own, so that folding them into the
        // convolutions before them changes something.
        for node in network.nodes_mut() {
            let layer = node.layer_mut();
            if layer.spec() == LayerSpec::BatchNorm2d {
                for param in layer.params_mut() {
                    param.value = uniform(&mut rng, param.value.len(), 0.5, 1.5);
                }
                let [mean, variance, _] = layer.buffers_mut() else {
                    unreachable!("three buffers")
                };
                mean.value = uniform(&mut rng, mean.value.len(), -0.5, 0.5);
                variance.value = uniform(&mut rng, variance.value.len(), 0.5, 2.0);
            }
        }
        for batch in [1, 3, 2 * SUB_BATCH + 5] {
            let input = tensor(batch, shape, values(&mut rng, batch * shape.len(), false));
            let mut workspace = cnn::Workspace::new();
            let expected = network
                .forward(&input, &mut workspace, Mode::Infer)
                .unwrap()
                .clone();
            // One thread, two, and three (which splits unevenly): small batches run on a
            // team of them, large ones in sub-batches.
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut fast_workspace = cnn::Workspace::new();
                let fast = pool.install(|| network.infer(&input, &mut fast_workspace).unwrap());
                assert_eq!(fast.batch(), batch);
                // Folding a batch normalisation into the convolution before it multiplies the
                // weights by the scale instead of the convolution's output: the same value
                // rounded differently, and after 20 convolutions (a ResNet-20) those roundings
                // add up to a few 1e-5 of the logits (the largest seen: 1.5e-5).
                let layers = network.nodes().len() as f32;
                let bound = TOLERANCE * (layers / 8.0).max(1.0);
                for (i, (&f, &e)) in fast.data().iter().zip(expected.data()).enumerate() {
                    assert!(
                        (f - e).abs() <= bound * e.abs().max(1.0),
                        "{preset} ({isa}), batch {batch}, {threads} threads, logit {i}: infer {f}, forward {e}"
                    );
                }
            }
        }
    }
}

/// The transposed convolution (the input gradient's, by Winograd or the implicit GEMM): input
/// and output swapped, padding `D * (K - 1) - P`, dilation and groups kept; none for a stride
/// above 1 or a padding beyond the kernel's reach.
#[test]
fn transposed_convolution_swaps_shapes_and_complements_the_padding() {
    let (small, large) = (Shape::new(4, 10, 12), Shape::new(8, 10, 8));
    let plain = ConvGeometry::new(small, large, Window2d::new([3, 5], [1, 1], [1, 0]));
    let t = plain.transposed().unwrap();
    assert_eq!((t.input, t.output), (large, small));
    assert_eq!(t.window, Window2d::new([3, 5], [1, 1], [1, 4]));
    assert_eq!((t.dilation, t.groups), ([1, 1], 1));

    let depthwise = ConvGeometry {
        dilation: [2, 1],
        groups: 4,
        ..ConvGeometry::new(small, small, Window2d::new([3, 3], [1, 1], [2, 1]))
    };
    let t = depthwise.transposed().unwrap();
    assert_eq!(t.window.padding, [2, 1]);
    assert_eq!((t.dilation, t.groups), ([2, 1], 4));

    let strided = ConvGeometry::new(small, large, Window2d::new([3, 3], [2, 1], [1, 1]));
    assert_eq!(strided.transposed(), None);
    let overhanging = ConvGeometry::new(small, large, Window2d::new([3, 3], [1, 1], [1, 3]));
    assert_eq!(overhanging.transposed(), None);
}
