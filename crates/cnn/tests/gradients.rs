//! Gradient checks: every layer's backward pass against finite differences of its forward pass.
//!
//! Each layer is checked through the scalar objective `L = sum(output * R)` with a fixed random
//! `R`, so that `dL/doutput = R` is known exactly and fed to `backward`. The gradients that
//! `backward` returns, for the input and for every parameter, are compared entry by entry with
//! central differences of `L`. Inputs are chosen so that every entry is differentiable: layers
//! that are linear in what is nudged (convolution, dense, average pooling, flatten) take any
//! values and a large step, for which central differences are exact up to rounding; ReLU and
//! max pooling take distinct values spaced well beyond the step, so no nudge crosses a kink or
//! changes a window's maximum.
//!
//! Every check uses a batch larger than one: parameter gradients must sum over the batch.

mod common;

use cnn::kernels::conv::ConvGeometry;
use cnn::kernels::pool::{PoolGeometry, PoolKind};
use cnn::kernels::reference;
use cnn::layers::{
    BinaryOp, Conv2dConfig, DenseConfig, Layer, LayerScratch, LrnConfig, PadMode, SingleInput,
};
use cnn::loss::softmax_cross_entropy;
use cnn::window::Window2d;
use cnn::{Gradients, LayerSpec, Mode, Network, Shape, Tensor, Workspace};
use common::{
    assert_close, central_differences, distinct, input_differences, rng, tensor, uniform, widen,
};
use rand::{Rng, SeedableRng};

/// Largest relative error allowed between a backward gradient and its finite-difference
/// estimate, relative to `max(|a|, |b|, FLOOR)`. The worst error seen is about 4e-4 (f32
/// rounding of the outputs, divided by the step, on a gradient near zero); a wrong term in a
/// gradient costs an error of order one.
const TOLERANCE: f64 = 5e-3;
const FLOOR: f64 = 1e-2;

/// Seed of every layer check's random data.
const SEED: u64 = 2024;

/// How a layer's input is drawn, and the finite-difference step that goes with it: `Distinct`
/// for ReLU and max pooling, `Uniform` for the rest.
#[derive(Clone, Copy, Debug)]
enum Inputs {
    /// Uniform in `[-1, 1)`, step 0.1: for layers linear in the nudged value, where the step
    /// size does not matter and a large one drowns rounding noise.
    Uniform,
    /// Distinct values 0.05 apart and at least 0.025 from zero, step 0.01: for ReLU and max
    /// pooling, so no nudge crosses a kink.
    Distinct,
    /// Uniform in `[-1, 1)`, step 0.01: for the smooth activations, whose curvature a large
    /// step would turn into error.
    Smooth,
    /// Uniform in `[0.5, 1.5)`, step 0.01: for `c / x`, away from its pole.
    Positive,
}

impl Inputs {
    fn draw(self, rng: &mut impl Rng, len: usize) -> Vec<f32> {
        match self {
            Inputs::Uniform | Inputs::Smooth => uniform(rng, len, -1.0, 1.0),
            Inputs::Distinct => distinct(rng, len, 0.05),
            Inputs::Positive => uniform(rng, len, 0.5, 1.5),
        }
    }

    fn eps(self) -> f32 {
        match self {
            Inputs::Uniform => 0.1,
            Inputs::Distinct | Inputs::Smooth | Inputs::Positive => 0.01,
        }
    }
}

/// `L = sum(output * weights)`, accumulated in f64, for the layer's forward pass on `input`.
fn objective(layer: &dyn Layer, input: &Tensor, weights: &[f32]) -> f64 {
    let mut output = Tensor::zeros(input.batch(), layer.output_shape());
    layer.forward_one(
        input,
        &mut output,
        Mode::Train,
        &mut LayerScratch::default(),
    );
    output
        .data()
        .iter()
        .zip(weights)
        .map(|(&y, &w)| f64::from(y) * f64::from(w))
        .sum()
}

/// What one backward pass produced.
struct Backward {
    grad_input: Tensor,
}

/// Runs forward then backward with `grad_output`, adding into `param_grads`. `grad_input` and the
/// scratch buffer start as NaN: a backward pass that added to its input gradient instead of
/// writing it, or read scratch it had not written, would leave NaNs.
fn run_backward(
    layer: &dyn Layer,
    input: &Tensor,
    grad_output: &Tensor,
    param_grads: &mut [Vec<f32>],
) -> Tensor {
    // Scratch left over from earlier batches holds anything: NaN here, which shows if read.
    let mut scratch = LayerScratch {
        buffer: vec![f32::NAN; 1 << 16],
        ..LayerScratch::default()
    };
    let mut output = Tensor::zeros(input.batch(), layer.output_shape());
    layer.forward_one(input, &mut output, Mode::Train, &mut scratch);
    let mut grad_input = tensor(
        input.batch(),
        input.shape(),
        vec![f32::NAN; input.data().len()],
    );
    layer.backward_one(
        input,
        &output,
        grad_output,
        Some(&mut grad_input),
        param_grads,
        &mut scratch,
    );
    grad_input
}

/// The gradient check for one layer. Builds `spec` for `input_shape` with random parameters,
/// runs backward on a random batch of `batch` images, and asserts that:
/// - the input gradient and every parameter gradient match central differences of `L`;
/// - backward *writes* the input gradient (a NaN-filled buffer comes back finite) and *adds* to
///   the parameter gradients: a second backward call doubles them and writes the same input
///   gradient again.
///
/// Returns the layer and the backward results, for further checks.
fn check_layer(spec: LayerSpec, input_shape: Shape, batch: usize) -> (Box<dyn Layer>, Backward) {
    assert!(batch > 1, "batch gradients must be checked with a batch");
    let inputs = match spec {
        LayerSpec::Relu
        | LayerSpec::LeakyRelu { .. }
        | LayerSpec::MaxPool2d(_)
        | LayerSpec::GlobalMaxPool => Inputs::Distinct,
        LayerSpec::Sigmoid | LayerSpec::Tanh | LayerSpec::Gelu | LayerSpec::Silu => Inputs::Smooth,
        // Kinks at the bounds: inputs kept away from them (see `activations`).
        LayerSpec::Clip { .. }
        | LayerSpec::HardSigmoid { .. }
        | LayerSpec::HardSwish
        | LayerSpec::Prelu { .. } => Inputs::Distinct,
        LayerSpec::ConstantOp {
            op: BinaryOp::ReverseDiv,
            ..
        } => Inputs::Positive,
        _ => Inputs::Uniform,
    };
    let mut rng = rng(SEED);
    let mut layer = spec
        .build(
            "0",
            &[input_shape],
            cnn::kernels::simd::Isa::from_env().unwrap(),
        )
        .expect("the layer fits its input");
    for param in layer.params_mut() {
        param.value = uniform(&mut rng, param.value.len(), -1.0, 1.0);
    }
    // Constants away from 0, which `x / c` divides by.
    for buffer in layer.buffers_mut() {
        if buffer.name == "constant" {
            buffer.value = uniform(&mut rng, buffer.value.len(), 0.5, 1.5);
        }
    }
    let input = tensor(
        batch,
        input_shape,
        inputs.draw(&mut rng, batch * input_shape.len()),
    );
    let output_shape = layer.output_shape();
    let weights = uniform(&mut rng, batch * output_shape.len(), -1.0, 1.0);
    let grad_output = tensor(batch, output_shape, weights.clone());

    // Analytic gradients, and the accumulate/overwrite contract.
    let mut param_grads: Vec<Vec<f32>> = layer
        .params()
        .iter()
        .map(|p| vec![0.0; p.value.len()])
        .collect();
    let grad_input = run_backward(&*layer, &input, &grad_output, &mut param_grads);
    let once = param_grads.clone();
    let again = run_backward(&*layer, &input, &grad_output, &mut param_grads);
    assert_eq!(
        again.data(),
        grad_input.data(),
        "{spec}: backward must write the input gradient, the same on every call"
    );
    for ((param, twice), once) in layer.params().iter().zip(&param_grads).zip(&once) {
        let doubled: Vec<f64> = once.iter().map(|&g| 2.0 * f64::from(g)).collect();
        assert_close(
            &format!("{spec}: {} gradient after two backward calls", param.name),
            &widen(twice),
            &doubled,
            1e-6,
            1e-5,
        );
    }

    // Finite differences with respect to the input.
    let eps = inputs.eps();
    let numeric = input_differences(&input, eps, |nudged| objective(&*layer, nudged, &weights));
    assert_close(
        &format!("{spec} on {batch} x {input_shape}: input gradient"),
        &widen(grad_input.data()),
        &numeric,
        FLOOR,
        TOLERANCE,
    );

    // Finite differences with respect to every parameter, at the same input. Layers are
    // linear in each of their parameters, so the large step is exact up to rounding.
    for (p, analytic) in once.iter().enumerate() {
        let values = layer.params()[p].value.clone();
        let numeric = central_differences(&values, Inputs::Uniform.eps(), |i, v| {
            layer.params_mut()[p].value[i] = v;
            let loss = objective(&*layer, &input, &weights);
            layer.params_mut()[p].value[i] = values[i];
            loss
        });
        assert_close(
            &format!(
                "{spec} on {batch} x {input_shape}: {} gradient",
                layer.params()[p].name
            ),
            &widen(analytic),
            &numeric,
            FLOOR,
            TOLERANCE,
        );
    }
    (layer, Backward { grad_input })
}

fn conv(
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    bias: bool,
) -> LayerSpec {
    LayerSpec::Conv2d(Conv2dConfig {
        stride: [stride, stride],
        padding: [padding, padding],
        bias,
        ..Conv2dConfig::new(out_channels, [kernel, kernel])
    })
}

fn window(kernel: usize, stride: usize, padding: usize, ceil_mode: bool) -> Window2d {
    Window2d {
        kernel: [kernel, kernel],
        stride: [stride, stride],
        padding: [padding, padding],
        ceil_mode,
    }
}

fn max_pool(kernel: usize, stride: usize, padding: usize, ceil_mode: bool) -> LayerSpec {
    LayerSpec::MaxPool2d(window(kernel, stride, padding, ceil_mode))
}

fn avg_pool(kernel: usize, stride: usize, padding: usize, ceil_mode: bool) -> LayerSpec {
    LayerSpec::AvgPool2d(window(kernel, stride, padding, ceil_mode))
}

// ---------------------------------------------------------------------------------------------
// Convolution

/// 3x3 convolution, stride 1, padding 1 ("same"), 2 -> 3 channels with bias, on a non-square
/// 6x5 input: windows at every border reach into the padding.
#[test]
fn conv_3x3_stride_1_pad_1() {
    let (layer, _) = check_layer(conv(3, 3, 1, 1, true), Shape::new(2, 6, 5), 3);
    assert_eq!(layer.output_shape(), Shape::new(3, 6, 5));
}

/// 3x3 convolution, stride 2, no padding, no bias, 3 -> 2 channels on a non-square 8x10 input:
/// windows start at rows 0, 2, 4 and columns 0, 2, 4, 6, so the last row (7) and the last
/// column (9) are read by no window and their gradient must be exactly zero.
#[test]
fn conv_3x3_stride_2_pad_0_without_bias() {
    let (layer, backward) = check_layer(conv(2, 3, 2, 0, false), Shape::new(3, 8, 10), 2);
    assert_eq!(layer.output_shape(), Shape::new(2, 3, 4));
    assert_eq!(layer.params().len(), 1, "nobias means no bias parameter");
    let grad = &backward.grad_input;
    for n in 0..2 {
        for c in 0..3 {
            let plane = grad.plane(n, c);
            for y in 0..8 {
                assert_eq!(
                    plane[y * 10 + 9],
                    0.0,
                    "pixel ({y}, 9) is outside every window"
                );
            }
            for x in 0..10 {
                assert_eq!(
                    plane[7 * 10 + x],
                    0.0,
                    "pixel (7, {x}) is outside every window"
                );
            }
        }
    }
}

/// 3x3 convolution, stride 2, padding 1, 2 -> 4 channels, batch 4.
#[test]
fn conv_3x3_stride_2_pad_1() {
    let (layer, _) = check_layer(conv(4, 3, 2, 1, true), Shape::new(2, 8, 7), 4);
    assert_eq!(layer.output_shape(), Shape::new(4, 4, 4));
}

/// 5x5 convolution, stride 1, padding 2, 3 -> 2 channels with bias.
#[test]
fn conv_5x5_stride_1_pad_2() {
    let (layer, _) = check_layer(conv(2, 5, 1, 2, true), Shape::new(3, 7, 6), 2);
    assert_eq!(layer.output_shape(), Shape::new(2, 7, 6));
}

/// 5x5 convolution, stride 2, padding 2, no bias, on a non-square 9x11 input.
#[test]
fn conv_5x5_stride_2_pad_2_without_bias() {
    let (layer, _) = check_layer(conv(3, 5, 2, 2, false), Shape::new(2, 9, 11), 3);
    assert_eq!(layer.output_shape(), Shape::new(3, 5, 6));
}

/// 5x5 convolution, stride 1, no padding, on 6x5: one row taller than the kernel and exactly
/// as wide, so the output is 2x1.
#[test]
fn conv_5x5_stride_1_pad_0() {
    let (layer, _) = check_layer(conv(2, 5, 1, 0, true), Shape::new(2, 6, 5), 2);
    assert_eq!(layer.output_shape(), Shape::new(2, 2, 1));
}

/// A rectangular 3x5 kernel with stride 2x1 and padding 1x2: the two axes are never mixed up.
#[test]
fn conv_rectangular_kernel_stride_and_padding() {
    let spec = LayerSpec::Conv2d(Conv2dConfig {
        out_channels: 3,
        kernel: [3, 5],
        stride: [2, 1],
        padding: [1, 2],
        dilation: [1, 1],
        groups: 1,
        bias: true,
    });
    let (layer, _) = check_layer(spec, Shape::new(2, 7, 6), 2);
    assert_eq!(layer.output_shape(), Shape::new(3, 4, 6));
}

/// A 1x1 kernel with stride 1 and no padding takes the pointwise path (no unfolding), with and
/// without bias.
#[test]
fn conv_1x1_pointwise() {
    let (layer, _) = check_layer(conv(4, 1, 1, 0, true), Shape::new(3, 5, 4), 3);
    assert_eq!(layer.output_shape(), Shape::new(4, 5, 4));
    check_layer(conv(2, 1, 1, 0, false), Shape::new(3, 4, 6), 2);
}

/// A 1x1 kernel with padding 1 is not pointwise: it unfolds, and the border windows lie wholly
/// in the padding, where outputs are the bias alone and pass no gradient back.
#[test]
fn conv_1x1_with_padding_unfolds() {
    let (layer, _) = check_layer(conv(2, 1, 1, 1, true), Shape::new(2, 4, 3), 2);
    assert_eq!(layer.output_shape(), Shape::new(2, 6, 5));
    // Strided too: every other pixel only.
    check_layer(conv(2, 1, 2, 0, true), Shape::new(2, 5, 5), 2);
}

// ---------------------------------------------------------------------------------------------
// Pooling

/// Max pooling 2x2, stride 2, on an even 6x8 input: each gradient goes to its window's maximum.
#[test]
fn max_pool_2_stride_2() {
    let (layer, _) = check_layer(max_pool(2, 2, 0, false), Shape::new(2, 6, 8), 3);
    assert_eq!(layer.output_shape(), Shape::new(2, 3, 4));
    assert!(layer.params().is_empty());
}

/// Max pooling 2x2, stride 2, ceil mode, on 7x7 -> 4x4: the last row and column of windows
/// cover a single input row or column.
#[test]
fn max_pool_2_ceil_7x7() {
    let (layer, _) = check_layer(max_pool(2, 2, 0, true), Shape::new(3, 7, 7), 2);
    assert_eq!(layer.output_shape(), Shape::new(3, 4, 4));
}

/// Max pooling 3x3, stride 2, padding 1 (overlapping windows: one pixel may be the maximum of
/// several windows and collect all their gradients), with and without ceil mode.
#[test]
fn max_pool_3_stride_2_pad_1() {
    let (layer, _) = check_layer(max_pool(3, 2, 1, false), Shape::new(2, 8, 7), 2);
    assert_eq!(layer.output_shape(), Shape::new(2, 4, 4));
    let (layer, _) = check_layer(max_pool(3, 2, 1, true), Shape::new(2, 8, 7), 2);
    assert_eq!(layer.output_shape(), Shape::new(2, 5, 4));
}

/// Average pooling 2x2, stride 2: every pixel of a window gets a quarter of its gradient.
#[test]
fn avg_pool_2_stride_2() {
    let (layer, _) = check_layer(avg_pool(2, 2, 0, false), Shape::new(2, 6, 8), 3);
    assert_eq!(layer.output_shape(), Shape::new(2, 3, 4));
    assert!(layer.params().is_empty());
}

/// Average pooling 2x2, stride 2, ceil mode, on 7x7 -> 4x4: partial windows divide by the
/// pixels they cover (2 or 1), in forward and backward alike.
#[test]
fn avg_pool_2_ceil_7x7() {
    let (layer, _) = check_layer(avg_pool(2, 2, 0, true), Shape::new(3, 7, 7), 2);
    assert_eq!(layer.output_shape(), Shape::new(3, 4, 4));
}

/// Average pooling 3x3, stride 2, padding 1, with and without ceil mode: overlapping windows,
/// padding not counted in the mean.
#[test]
fn avg_pool_3_stride_2_pad_1() {
    let (layer, _) = check_layer(avg_pool(3, 2, 1, false), Shape::new(2, 8, 7), 2);
    assert_eq!(layer.output_shape(), Shape::new(2, 4, 4));
    let (layer, _) = check_layer(avg_pool(3, 2, 1, true), Shape::new(2, 8, 7), 2);
    assert_eq!(layer.output_shape(), Shape::new(2, 5, 4));
}

// ---------------------------------------------------------------------------------------------
// ReLU, flatten, dense

/// ReLU on images: the gradient passes where the input is positive and is zero elsewhere.
#[test]
fn relu() {
    let (_, backward) = check_layer(LayerSpec::Relu, Shape::new(2, 4, 5), 3);
    assert!(backward.grad_input.data().contains(&0.0));
}

/// Flatten: the gradient is the output gradient, reshaped back (NCHW order).
#[test]
fn flatten() {
    let (layer, backward) = check_layer(LayerSpec::Flatten, Shape::new(3, 2, 4), 2);
    assert_eq!(layer.output_shape(), Shape::flat(24));
    assert_eq!(backward.grad_input.shape(), Shape::new(3, 2, 4));
}

/// Dense with bias: `y = x W^T + b`; weight gradient `dY^T X` and bias gradient `sum dY` both
/// sum over the batch.
#[test]
fn dense_with_bias() {
    let spec = LayerSpec::Dense(DenseConfig {
        out_features: 5,
        bias: true,
    });
    let (layer, _) = check_layer(spec, Shape::flat(7), 4);
    assert_eq!(layer.params().len(), 2);
}

/// Dense without bias.
#[test]
fn dense_without_bias() {
    let spec = LayerSpec::Dense(DenseConfig {
        out_features: 3,
        bias: false,
    });
    let (layer, _) = check_layer(spec, Shape::flat(6), 3);
    assert_eq!(layer.params().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Activations, global pooling, grouped and dilated convolutions

/// Each smooth activation's derivative, and the leaky ReLU's slopes on both sides of 0.
#[test]
fn activations() {
    for spec in [
        LayerSpec::Sigmoid,
        LayerSpec::Tanh,
        LayerSpec::Gelu,
        LayerSpec::Silu,
        LayerSpec::Identity,
        LayerSpec::LeakyRelu { slope: 0.1 },
        LayerSpec::Clip {
            min: Some(-0.5),
            max: Some(0.5),
        },
        LayerSpec::Clip {
            min: None,
            max: Some(0.25),
        },
        // Kinks at -1 and 1.
        LayerSpec::HardSigmoid {
            alpha: 0.5,
            beta: 0.5,
        },
        LayerSpec::HardSwish,
    ] {
        let (layer, _) = check_layer(spec, Shape::new(2, 3, 4), 3);
        assert_eq!(layer.output_shape(), Shape::new(2, 3, 4));
    }
}

/// PReLU's slopes, one per channel or one for all, of maps and of features: their gradients
/// and the input's.
#[test]
fn prelu() {
    for shared in [false, true] {
        for shape in [Shape::new(3, 2, 4), Shape::flat(5)] {
            let (layer, _) = check_layer(LayerSpec::Prelu { shared }, shape, 3);
            let slopes = if shared { 1 } else { shape.channels };
            assert_eq!(layer.params()[0].value.len(), slopes);
        }
    }
}

/// Padding with a constant, the edge and the mirror image, on sides of different widths: an
/// edge or mirrored pixel gets the gradients of its copies too.
#[test]
fn padding() {
    for mode in [
        PadMode::Constant { value: 0.5 },
        PadMode::Edge,
        PadMode::Reflect,
    ] {
        for pads in [[1, 2, 0, 3], [2, 0, 1, 1]] {
            let (layer, _) = check_layer(LayerSpec::Pad { pads, mode }, Shape::new(2, 3, 4), 2);
            let out = layer.output_shape();
            assert_eq!(
                (out.height, out.width),
                (3 + pads[0] + pads[2], 4 + pads[1] + pads[3])
            );
        }
    }
}

/// Products of two values: a squeeze-and-excitation gate (`[C, 1, 1]` features over the
/// maps), a one-channel map broadcast over four, and a value times itself (read twice by one
/// node): each input's gradient sums over what was broadcast.
#[test]
fn products_of_two_values() {
    check_network(
        "stem: conv 4@3 pad=1, relu, se: mul( | gap, dense 2, relu, dense 4, sigmoid), \
         x: mul(conv 4@1 | conv 1@1), square: mul( | ), gap, head: dense classes",
        Shape::new(2, 5, 4),
        12,
    );
}

/// Local response normalisation, odd and even windows, with a strong enough alpha that the
/// cross-channel terms matter.
#[test]
fn local_response_normalisation() {
    for size in [3, 4, 1] {
        let spec = LayerSpec::Lrn(LrnConfig {
            size,
            alpha: 0.9,
            beta: 0.75,
            bias: 1.5,
        });
        check_layer(spec, Shape::new(5, 2, 3), 2);
    }
}

/// Arithmetic with a constant broadcast over maps and features, every op and both orders.
#[test]
fn constant_operands() {
    for op in BinaryOp::ALL {
        for (operand, shape) in [
            ([3, 1, 1], Shape::new(3, 2, 4)),
            ([1, 2, 4], Shape::new(3, 2, 4)),
            ([3, 2, 1], Shape::new(3, 2, 4)),
            ([1, 1, 1], Shape::new(3, 2, 4)),
            ([5, 1, 1], Shape::flat(5)),
        ] {
            let spec = LayerSpec::ConstantOp { op, operand };
            let (layer, _) = check_layer(spec, shape, 2);
            assert!(layer.params().is_empty(), "the constant is not learnt");
            assert_eq!(
                layer.buffers()[0].value.len(),
                operand.iter().product::<usize>()
            );
        }
    }
}

/// Global max pooling: each map's gradient goes to its largest pixel.
#[test]
fn global_max_pool() {
    let (layer, backward) = check_layer(LayerSpec::GlobalMaxPool, Shape::new(3, 4, 5), 2);
    assert_eq!(layer.output_shape(), Shape::flat(3));
    let nonzero = backward
        .grad_input
        .data()
        .iter()
        .filter(|g| **g != 0.0)
        .count();
    assert_eq!(nonzero, 2 * 3, "one pixel per map");
}

/// Global average pooling.
#[test]
fn global_avg_pool() {
    let (layer, _) = check_layer(LayerSpec::GlobalAvgPool, Shape::new(3, 4, 5), 2);
    assert_eq!(layer.output_shape(), Shape::flat(3));
}

/// Grouped convolutions (2 and 3 groups, with stride and padding), a depthwise one (a group
/// per channel, stride 1 and 2, with and without bias) and dilated ones (2x2 and 2x1).
#[test]
fn grouped_depthwise_and_dilated_convolutions() {
    let grouped =
        |out_channels: usize, kernel: usize, stride: usize, padding: usize, groups: usize| {
            LayerSpec::Conv2d(Conv2dConfig {
                stride: [stride, stride],
                padding: [padding, padding],
                groups,
                ..Conv2dConfig::new(out_channels, [kernel, kernel])
            })
        };
    let (layer, _) = check_layer(grouped(4, 3, 1, 1, 2), Shape::new(6, 5, 6), 2);
    assert_eq!(layer.params()[0].dims, [4, 3, 3, 3]);
    check_layer(grouped(6, 3, 2, 1, 3), Shape::new(3, 7, 6), 2);
    let (layer, _) = check_layer(grouped(5, 3, 1, 1, 5), Shape::new(5, 6, 7), 3);
    assert_eq!(layer.params()[0].dims, [5, 1, 3, 3]);
    check_layer(grouped(4, 5, 1, 2, 4), Shape::new(4, 6, 20), 2);
    check_layer(grouped(4, 3, 2, 1, 4), Shape::new(4, 7, 7), 2);
    let dilated = |dilation: [usize; 2]| {
        LayerSpec::Conv2d(Conv2dConfig {
            padding: [2, 1],
            dilation,
            bias: false,
            ..Conv2dConfig::new(3, [3, 3])
        })
    };
    let (layer, _) = check_layer(dilated([2, 2]), Shape::new(2, 7, 6), 2);
    assert_eq!(layer.output_shape(), Shape::new(3, 7, 4));
    check_layer(dilated([2, 1]), Shape::new(2, 7, 6), 2);
}

// ---------------------------------------------------------------------------------------------
// Loss

/// `softmax_cross_entropy` writes `d(total loss / N) / dlogits`: its gradient matches central
/// differences of the mean loss, and its loss matches PyTorch's definition in f64,
/// `-Σ_k q[k] log softmax(z)[k]` with `q = (1 - ε) one_hot + ε / K`, without smoothing and
/// with it.
#[test]
fn softmax_cross_entropy_gradient_is_the_mean_loss_derivative() {
    let (batch, classes) = (4, 5);
    let mut rng = rng(60);
    let logits = tensor(
        batch,
        Shape::flat(classes),
        uniform(&mut rng, batch * classes, -3.0, 3.0),
    );
    let labels: Vec<usize> = (0..batch).map(|_| rng.random_range(0..classes)).collect();
    for smoothing in [0.0, 0.1] {
        let mut grad = Tensor::zeros(batch, Shape::flat(classes));
        let stats = softmax_cross_entropy(&logits, &labels, smoothing, &mut grad).unwrap();

        let expected_loss: f64 = logits
            .data()
            .chunks(classes)
            .zip(&labels)
            .map(|(row, &label)| {
                let log_sum = row.iter().map(|&z| f64::from(z).exp()).sum::<f64>().ln();
                (0..classes)
                    .map(|k| {
                        let hit = if k == label { 1.0 } else { 0.0 };
                        let target =
                            (1.0 - f64::from(smoothing)) * hit + f64::from(smoothing) / 5.0;
                        target * (log_sum - f64::from(row[k]))
                    })
                    .sum::<f64>()
            })
            .sum();
        assert!(
            (stats.total_loss - expected_loss).abs() < 1e-5 * expected_loss,
            "ε {smoothing}: loss {} against {expected_loss}",
            stats.total_loss
        );

        let mean_loss = |logits: &Tensor| {
            let mut scratch = Tensor::zeros(batch, Shape::flat(classes));
            let stats = softmax_cross_entropy(logits, &labels, smoothing, &mut scratch).unwrap();
            stats.total_loss / batch as f64
        };
        let mut nudged = logits.clone();
        let numeric = central_differences(logits.data(), 1e-2, |i, v| {
            let original = nudged.data()[i];
            nudged.data_mut()[i] = v;
            let loss = mean_loss(&nudged);
            nudged.data_mut()[i] = original;
            loss
        });
        assert_close("dL/dlogits", &widen(grad.data()), &numeric, FLOOR, 1e-2);
        // Each row of the gradient sums to zero: probabilities and the target both sum to one.
        for row in grad.data().chunks(classes) {
            assert!(row.iter().sum::<f32>().abs() < 1e-6);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Whole network

/// Mean cross-entropy of the network on `input`, and a fingerprint of every kink it passed:
/// the sign of every (leaky) ReLU input and the position of every max-pooling window's (and
/// feature map's) maximum.
fn network_loss(
    network: &Network,
    input: &Tensor,
    labels: &[usize],
    workspace: &mut Workspace,
) -> (f64, Vec<f32>) {
    let logits = network.forward(input, workspace, Mode::Train).unwrap();
    let mut grad = Tensor::zeros(logits.batch(), logits.shape());
    let stats = softmax_cross_entropy(logits, labels, 0.0, &mut grad).unwrap();
    let mut kinks = Vec::new();
    for (node, output) in network.nodes().iter().zip(workspace.activations()) {
        let layer = node.layer();
        let layer_input = match node.inputs()[0] {
            0 => input,
            v => &workspace.activations()[v - 1],
        };
        match layer.spec() {
            LayerSpec::Relu => kinks.extend(output.data().iter().map(|&y| f32::from(y > 0.0))),
            LayerSpec::LeakyRelu { .. } => {
                kinks.extend(layer_input.data().iter().map(|&x| f32::from(x > 0.0)))
            }
            LayerSpec::GlobalMaxPool => {
                let plane = layer_input.shape().plane();
                for maps in layer_input.data().chunks_exact(plane) {
                    let best = (0..plane).fold(0, |b, i| if maps[i] > maps[b] { i } else { b });
                    kinks.push(best as f32);
                }
            }
            LayerSpec::MaxPool2d(window) => {
                // Route each output's index to its window's maximum: the routing is the kink.
                let geometry = PoolGeometry {
                    input: layer_input.shape(),
                    output: layer.output_shape(),
                    window,
                };
                let ids: Vec<f32> = (1..=output.data().len()).map(|k| k as f32).collect();
                let ids = tensor(output.batch(), output.shape(), ids);
                let mut routed = Tensor::zeros(layer_input.batch(), layer_input.shape());
                reference::pool_backward(PoolKind::Max, &geometry, layer_input, &ids, &mut routed);
                kinks.extend_from_slice(routed.data());
            }
            _ => {}
        }
    }
    (stats.total_loss / input.batch() as f64, kinks)
}

/// The whole network's backward pass: conv (padding 1), ReLU, max pooling (ceil), conv (stride
/// 2), ReLU, average pooling (ceil), flatten, dense, ReLU, dense, then softmax cross-entropy.
/// Every parameter gradient of every layer matches central differences of the mean loss over a
/// batch of 3 (all 212 entries, within 1e-2; the worst seen is under 1e-3). Each entry is
/// nudged by the largest step that crosses no ReLU kink and moves no max-pooling maximum (the
/// loss is not differentiable across those); the few entries that cross one even at the
/// smallest step are skipped (10 of 212 with these seeds), and must stay under 10%.
#[test]
fn whole_network_gradients_match_finite_differences() {
    check_network(
        "conv 3@3x3 pad=1, relu, maxpool 2 ceil, conv 4@3x3 stride=2, relu, avgpool 2 ceil, \
         dense 5, relu, dense classes",
        Shape::new(2, 9, 9),
        8,
    );
}

/// The same for a residual network: a stem, a block whose input is read twice (by its first
/// convolution and by the addition, so its gradient is the sum of both), with a batch
/// normalisation and an addition each followed by a ReLU (which the training passes compute
/// inside them), a downsampling block
/// with a strided 1x1 shortcut and batch normalisation, an Inception-style concatenation of a
/// 1x1 and a dilated 3x3 branch, a depthwise and a grouped convolution, the smooth
/// activations, global pooling.
#[test]
fn residual_network_gradients_match_finite_differences() {
    check_network(
        "stem: conv 4@3 pad=1, relu, \
         block: (add(conv1: conv 4@3 pad=1, bn1: batchnorm, relu, conv2: conv 4@3 pad=1 | ), \
                 relu), \
         down: (add(conv1: conv 6@3 stride=2 pad=1 nobias, bn1: batchnorm, gelu | \
                    shortcut: (conv 6@1 stride=2 nobias, batchnorm)), silu), \
         mixed: concat(a: conv 2@1 | b: (conv 2@3 pad=2 dilation=2, sigmoid)), \
         dw: conv 4@3 pad=1 groups=4, grouped: conv 4@1 groups=2, leakyrelu 0.1, \
         pool: concat(gap | gmp), head: dense classes",
        Shape::new(2, 8, 7),
        24,
    );
}

/// A value read twice by one node (`add( | )`, the sum of a value with itself) receives both
/// gradients: the convolution's gradients are twice those of the network without the sum and
/// with half its dense weights, and match finite differences.
#[test]
fn a_value_read_twice_gets_both_gradients() {
    check_network(
        "c: conv 2@3 pad=1, twice: add( | ), dense classes",
        Shape::new(1, 5, 4),
        4,
    );
    let gradient_of_conv = |notation: &str, dense_scale: f32| {
        let architecture = cnn::arch::parse(notation, 3).unwrap();
        let mut network = Network::new(&architecture, Shape::new(1, 5, 4)).unwrap();
        network.init_kaiming(&mut rand_chacha::ChaCha8Rng::seed_from_u64(5));
        for node in network.nodes_mut() {
            if node.name() == "head" {
                node.layer_mut().params_mut()[0]
                    .value
                    .iter_mut()
                    .for_each(|w| *w *= dense_scale);
            }
        }
        let input = tensor(2, Shape::new(1, 5, 4), uniform(&mut rng(6), 40, -1.0, 1.0));
        let mut workspace = Workspace::new();
        let mut grads = Gradients::new(&network);
        network
            .forward(&input, &mut workspace, Mode::Train)
            .unwrap();
        let (logits, grad) = workspace.output_and_grad_mut();
        softmax_cross_entropy(logits, &[0, 2], 0.0, grad).unwrap();
        network.backward(&input, &mut workspace, &mut grads);
        let first = grads.iter().next().unwrap().clone();
        first
    };
    let once = gradient_of_conv("c: conv 2@3 pad=1, flatten, head: dense classes", 1.0);
    let twice = gradient_of_conv(
        "c: conv 2@3 pad=1, add( | ), flatten, head: dense classes",
        0.5,
    );
    for (a, b) in once.iter().zip(&twice) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} against {b}");
    }
}

/// The network built from `notation` for `input` images (with 3 classes), holding
/// `expected_params` parameter tensors: every parameter gradient matches finite differences
/// of the mean loss (see [`whole_network_gradients_match_finite_differences`]).
fn check_network(notation: &str, input: Shape, expected_params: usize) {
    let architecture = cnn::arch::parse(notation, 3).unwrap();
    let mut network = Network::new(&architecture, input).unwrap();
    network.init_kaiming(&mut rand_chacha::ChaCha8Rng::seed_from_u64(70));
    // Kaiming leaves biases at zero; random biases make their gradients less special.
    let mut rng = rng(71);
    for param in network.params_mut() {
        if param.name == "bias" {
            param.value = uniform(&mut rng, param.value.len(), -0.2, 0.2);
        }
    }
    let batch = 3;
    let input = tensor(
        batch,
        network.input_shape(),
        uniform(&mut rng, batch * network.input_shape().len(), -1.0, 1.0),
    );
    let labels = [0, 2, 1];

    let mut workspace = Workspace::new();
    let mut grads = Gradients::new(&network);
    network
        .forward(&input, &mut workspace, Mode::Train)
        .unwrap();
    let (logits, grad_logits) = workspace.output_and_grad_mut();
    softmax_cross_entropy(logits, &labels, 0.0, grad_logits).unwrap();
    network.backward(&input, &mut workspace, &mut grads);
    let analytic: Vec<Vec<f32>> = grads.iter().cloned().collect();
    let names: Vec<String> = network
        .params()
        .map(|(layer, p)| format!("{layer}.{}", p.name))
        .collect();
    assert_eq!(names.len(), expected_params, "parameter tensors");

    // The loss is computed in f32, so its rounding noise (about 1e-7 of the loss) divided by the
    // step is the noise of a difference quotient: large steps are precise. But a large step
    // crosses more kinks. So each entry takes the largest step of `STEPS` that crosses none,
    // and the absolute part of the tolerance grows as the step shrinks: errors are relative to
    // max(|a|, |b|, 1e-4 / eps), which is 1e-2 at the largest step.
    const STEPS: [f32; 4] = [1e-2, 3e-3, 1e-3, 3e-4];
    let (_, kinks) = network_loss(&network, &input, &labels, &mut workspace);
    let (mut checked, mut skipped) = (0, 0);
    for (p, (name, analytic)) in names.iter().zip(&analytic).enumerate() {
        let values = network.params().nth(p).unwrap().1.value.clone();
        let mut checked_here = 0;
        for (i, &x) in values.iter().enumerate() {
            let mut at = |v: f32| {
                network.params_mut().nth(p).unwrap().value[i] = v;
                let result = network_loss(&network, &input, &labels, &mut workspace);
                network.params_mut().nth(p).unwrap().value[i] = x;
                result
            };
            let smooth_step = STEPS.iter().find_map(|&eps| {
                let (up, down) = (x + eps, x - eps);
                let ((loss_up, kinks_up), (loss_down, kinks_down)) = (at(up), at(down));
                (kinks_up == kinks && kinks_down == kinks).then(|| {
                    (
                        eps,
                        (loss_up - loss_down) / (f64::from(up) - f64::from(down)),
                    )
                })
            });
            let Some((eps, numeric)) = smooth_step else {
                skipped += 1;
                continue;
            };
            checked_here += 1;
            let analytic = f64::from(analytic[i]);
            let error = common::relative_error(analytic, numeric, 1e-4 / f64::from(eps));
            assert!(
                error <= 1e-2,
                "network {name}[{i}]: backward gives {analytic}, finite differences with step \
                 {eps} give {numeric} (error {error:.2e})"
            );
        }
        assert!(
            checked_here > 0,
            "network {name}: every entry sits at a kink"
        );
        checked += checked_here;
    }
    assert!(
        skipped * 10 <= checked,
        "{skipped} entries skipped for kinks, {checked} checked: too few checked"
    );
}

// ---------------------------------------------------------------------------------------------
// Threads

/// Runs the conv layer's forward and backward on `batch` images inside a rayon pool of
/// `threads` threads; returns output, input gradient, weight gradient and bias gradient.
fn conv_in_pool(
    (layer, input_shape): (&dyn Layer, Shape),
    threads: usize,
    batch: usize,
    seed: u64,
) -> [Vec<f32>; 4] {
    let mut rng = rng(seed);
    let input = tensor(
        batch,
        input_shape,
        uniform(&mut rng, batch * input_shape.len(), -1.0, 1.0),
    );
    let grad_output = tensor(
        batch,
        layer.output_shape(),
        uniform(&mut rng, batch * layer.output_shape().len(), -1.0, 1.0),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut scratch = LayerScratch::default();
        let mut output = Tensor::zeros(batch, layer.output_shape());
        layer.forward_one(&input, &mut output, Mode::Train, &mut scratch);
        let mut param_grads: Vec<Vec<f32>> = layer
            .params()
            .iter()
            .map(|p| vec![0.0; p.value.len()])
            .collect();
        let mut grad_input = Tensor::zeros(batch, input_shape);
        layer.backward_one(
            &input,
            &output,
            &grad_output,
            Some(&mut grad_input),
            &mut param_grads,
            &mut scratch,
        );
        let bias = param_grads.pop().unwrap();
        let weight = param_grads.pop().unwrap();
        [output.into_vec(), grad_input.into_vec(), weight, bias]
    })
}

/// The convolution splits the batch into one chunk per thread and sums per-chunk partial
/// gradients. For batches that do not divide evenly into chunks (1, 2, 4, 5, 7 images on 1, 2
/// and 3 threads), the results are bitwise identical from run to run at one thread count, and
/// agree with the plain reference kernel at every thread count.
#[test]
fn conv_backward_is_deterministic_for_ragged_batches_and_thread_counts() {
    let spec = conv(3, 3, 2, 1, true);
    let input_shape = Shape::new(2, 7, 6);
    let mut layer = spec
        .build(
            "0",
            &[input_shape],
            cnn::kernels::simd::Isa::from_env().unwrap(),
        )
        .unwrap();
    let mut rng = rng(80);
    for param in layer.params_mut() {
        param.value = uniform(&mut rng, param.value.len(), -1.0, 1.0);
    }
    let geometry = ConvGeometry::new(
        input_shape,
        layer.output_shape(),
        Window2d::new([3, 3], [2, 2], [1, 1]),
    );
    for batch in [1, 2, 4, 5, 7] {
        let seed = 100 + batch as u64;
        // The reference result for this batch.
        let mut data_rng = common::rng(seed);
        let input = tensor(
            batch,
            input_shape,
            uniform(&mut data_rng, batch * input_shape.len(), -1.0, 1.0),
        );
        let grad_output = tensor(
            batch,
            layer.output_shape(),
            uniform(&mut data_rng, batch * layer.output_shape().len(), -1.0, 1.0),
        );
        let (weight, bias) = (&layer.params()[0].value[..], &layer.params()[1].value[..]);
        let mut output = Tensor::zeros(batch, layer.output_shape());
        reference::conv2d_forward(&geometry, &input, weight, Some(bias), &mut output);
        let mut grad_input = Tensor::zeros(batch, input_shape);
        let mut grad_weight = vec![0.0; weight.len()];
        let mut grad_bias = vec![0.0; bias.len()];
        reference::conv2d_backward(
            &geometry,
            &input,
            weight,
            &grad_output,
            &mut grad_input,
            &mut grad_weight,
            &mut grad_bias,
        );
        let expected = [
            output.into_vec(),
            grad_input.into_vec(),
            grad_weight,
            grad_bias,
        ];

        for threads in [1, 2, 3] {
            let first = conv_in_pool((&*layer, input_shape), threads, batch, seed);
            let second = conv_in_pool((&*layer, input_shape), threads, batch, seed);
            for (what, ((a, b), e)) in [
                "output",
                "input gradient",
                "weight gradient",
                "bias gradient",
            ]
            .iter()
            .zip(first.iter().zip(&second).zip(&expected))
            {
                let context = format!("{what}, batch {batch}, {threads} threads");
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{context}: two runs differ"
                );
                assert_close(&context, &widen(a), &widen(e), 1.0, 1e-5);
            }
        }
    }
}

/// A training step runs in a team of threads (`train::train_step`), its kernels split over
/// the team instead of the rayon pool. Checked on every preset (`cnn4` has batch
/// normalisation), on 1, 2 and 3 threads, for a batch that does not divide evenly: two steps
/// in a team give the same bits, and the same gradients as the step taken layer by layer on
/// the pool. Those agree to rounding only: a team may split a product differently from the
/// pool, which changes the order of some sums (within 1e-5 of each parameter's largest
/// gradient; about 1e-6 measured).
#[test]
fn a_training_step_in_a_team_matches_the_step_on_the_pool() {
    use cnn::optim::{Optimizer, OptimizerConfig};
    let shape = Shape::new(1, 28, 28);
    let batch = 13;
    for preset in ["xo", "lenet5", "cnn4"] {
        let layers = cnn::arch::parse(&cnn::arch::preset(preset).unwrap(), 10).unwrap();
        let mut start = Network::new(&layers, shape).unwrap();
        start.init_kaiming(&mut rng(90));
        let mut data_rng = rng(91);
        let images = tensor(
            batch,
            shape,
            uniform(&mut data_rng, batch * shape.len(), 0.0, 1.0),
        );
        let labels: Vec<usize> = (0..batch).map(|_| data_rng.random_range(0..10)).collect();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            // The gradients of one step and the parameters after it.
            let step = |in_team: bool| {
                let mut network = Network::new(&layers, shape).unwrap();
                for (to, (_, from)) in network.params_mut().zip(start.params()) {
                    to.value.clone_from(&from.value);
                }
                let mut optimizer = Optimizer::new(OptimizerConfig::sgd(), &network);
                let (mut workspace, mut grads) = (Workspace::new(), Gradients::new(&network));
                pool.install(|| {
                    if in_team {
                        cnn::train::train_step(
                            &mut network,
                            (&mut workspace, &mut grads),
                            &mut optimizer,
                            (&images, &labels),
                            cnn::train::StepSettings {
                                learning_rate: 0.01,
                                weight_decay: 1e-4,
                                label_smoothing: 0.0,
                            },
                        )
                        .unwrap();
                        return;
                    }
                    network
                        .forward(&images, &mut workspace, Mode::Train)
                        .unwrap();
                    network.update_running_statistics(&workspace);
                    let (logits, grad) = workspace.output_and_grad_mut();
                    softmax_cross_entropy(logits, &labels, 0.0, grad).unwrap();
                    network.backward(&images, &mut workspace, &mut grads);
                    optimizer.step(&mut network, &grads, 0.01, 1e-4);
                });
                let params: Vec<u32> = network
                    .tensors()
                    .flat_map(|(_, p)| p.value.iter().map(|v| v.to_bits()))
                    .collect();
                (grads.iter().cloned().collect::<Vec<_>>(), params)
            };
            let context = format!("{preset}, {threads} threads");
            let (team, again, pool_step) = (step(true), step(true), step(false));
            assert!(team.1 == again.1, "{context}: two steps in a team differ");
            for (i, (fast, plain)) in team.0.iter().zip(&pool_step.0).enumerate() {
                let largest = plain.iter().fold(f32::MIN_POSITIVE, |m, g| m.max(g.abs()));
                for (f, p) in fast.iter().zip(plain) {
                    assert!(
                        (f - p).abs() <= 1e-5 * largest,
                        "{context}, parameter {i}: gradient {f} in a team, {p} on the pool"
                    );
                }
            }
        }
    }
}

/// A training step whose ReLUs are computed inside the batch normalisations, additions and
/// convolutions before them gives the bits of the step that runs every node as the graph has it: the same
/// logits, parameter gradients and, for every value both keep, activations.
#[test]
fn fused_training_passes_give_the_bits_of_the_graph_as_it_is() {
    for (preset, shape) in [
        ("resnet20", Shape::new(3, 16, 16)),
        ("fashion-resnet", Shape::new(1, 28, 28)),
        ("lenet5", Shape::new(1, 28, 28)),
        ("cnn4", Shape::new(1, 28, 28)),
    ] {
        let architecture = cnn::arch::parse(&cnn::arch::preset(preset).unwrap(), 10).unwrap();
        let mut network = Network::new(&architecture, shape).unwrap();
        network.init_kaiming(&mut rng(95));
        let batch = 3;
        let images = tensor(
            batch,
            shape,
            uniform(&mut rng(96), batch * shape.len(), 0.0, 1.0),
        );
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let step = |fuse: bool| {
            let (mut workspace, mut grads) = (Workspace::new(), Gradients::new(&network));
            workspace.fuse_training(fuse);
            network
                .forward(&images, &mut workspace, Mode::Train)
                .unwrap();
            let (logits, grad) = workspace.output_and_grad_mut();
            let logits_bits = bits(logits.data());
            softmax_cross_entropy(logits, &[1, 4, 7], 0.0, grad).unwrap();
            network.backward(&images, &mut workspace, &mut grads);
            let activations: Vec<Vec<u32>> = workspace
                .activations()
                .iter()
                .map(|t| t.data().iter().map(|v| v.to_bits()).collect())
                .collect();
            let grads: Vec<Vec<u32>> = grads.iter().map(|g| bits(g)).collect();
            (logits_bits, grads, activations)
        };
        let (fused, unfused) = (step(true), step(false));
        assert!(fused.0 == unfused.0, "{preset}: the logits differ");
        for (i, (f, u)) in fused.1.iter().zip(&unfused.1).enumerate() {
            assert!(
                f == u,
                "{preset}: the gradient of parameter tensor {i} differs"
            );
        }
        let mut kept = 0;
        for (node, (f, u)) in network.nodes().iter().zip(fused.2.iter().zip(&unfused.2)) {
            if f.len() == u.len() {
                assert!(f == u, "{preset}: the output of {} differs", node.name());
                kept += 1;
            }
        }
        // Every value but those fused away is kept: the outputs of the batch normalisations,
        // additions and convolutions that a ReLU reads (alone, in these presets).
        let nodes = network.nodes();
        let fused_away = nodes
            .iter()
            .filter(|n| n.layer().spec() == LayerSpec::Relu)
            .filter(|n| {
                let before = nodes[n.inputs()[0] - 1].layer().spec();
                matches!(
                    before,
                    LayerSpec::BatchNorm2d | LayerSpec::Add | LayerSpec::Conv2d(_)
                )
            })
            .count();
        assert!(fused_away > 0, "{preset}: no ReLU to fuse");
        assert_eq!(kept, nodes.len() - fused_away, "{preset}: values kept");
    }
}

/// The gradient with respect to the network's input, in inference mode (batch normalisation
/// with its running statistics, as attributions differentiate a trained model), matches
/// central differences of `L = sum(logits * R)`. The input is read twice (by a convolution and
/// by the residual addition), so its gradient is the sum of both; smooth activations and
/// average pooling keep `L` differentiable everywhere. Every node's output gradient is shown
/// to the observer once, the logits' being `R`.
#[test]
fn input_gradients_match_finite_differences() {
    let shape = Shape::new(2, 6, 5);
    let architecture = cnn::arch::parse(
        "add(conv 2@3 pad=1, bn: batchnorm, tanh | ), conv 3@3 stride=2 pad=1, gelu, \
         avgpool 2 ceil, dense classes",
        3,
    )
    .unwrap();
    let mut network = Network::new(&architecture, shape).unwrap();
    network.init_kaiming(&mut rand_chacha::ChaCha8Rng::seed_from_u64(80));
    let mut rng = rng(81);
    for node in network.nodes_mut() {
        for buffer in node.layer_mut().buffers_mut() {
            if buffer.name != "num_batches_tracked" {
                buffer.value = uniform(&mut rng, buffer.value.len(), 0.5, 1.5);
            }
        }
    }
    let input = tensor(2, shape, uniform(&mut rng, 2 * shape.len(), -1.0, 1.0));
    let weights = uniform(&mut rng, 2 * 3, -1.0, 1.0);
    let loss = |x: &Tensor| -> f64 {
        let mut workspace = Workspace::new();
        let logits = network.forward(x, &mut workspace, Mode::Infer).unwrap();
        logits
            .data()
            .iter()
            .zip(&weights)
            .map(|(&y, &w)| f64::from(y) * f64::from(w))
            .sum()
    };
    let mut workspace = Workspace::new();
    network
        .forward(&input, &mut workspace, Mode::Infer)
        .unwrap();
    workspace
        .output_and_grad_mut()
        .1
        .data_mut()
        .copy_from_slice(&weights);
    let mut observed = Vec::new();
    let last = network.nodes().len();
    let mut grads = Gradients::new(&network);
    let gradient =
        network.backward_to_input(&input, &mut workspace, &mut grads, |value, gradient| {
            if value == last {
                assert_eq!(gradient.data(), &weights[..], "the logits' gradient");
            }
            observed.push(value);
        });
    assert_eq!(observed, (1..=last).rev().collect::<Vec<_>>());
    let numeric = input_differences(&input, 1e-2, loss);
    assert_close(
        "input gradient",
        &widen(gradient.data()),
        &numeric,
        FLOOR,
        TOLERANCE,
    );
}
