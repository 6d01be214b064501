//! Activations, applied value by value: ReLU, f(x) = max(0, x), keeps the matches and drops the
//! anti-matches; the others are the smooth or leaky variants modern CNNs use, with PyTorch's
//! definitions (GELU is the exact one, with erf, PyTorch's default).

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::kernels::{for_each_item_run, relu_gradient};
use crate::tensor::{Shape, Tensor};

/// Values handled as one unit of parallel work.
const BLOCK: usize = 4096;

/// Which function, with its parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActivationKind {
    Relu,
    /// `x` for `x > 0`, else `slope * x` (PyTorch's `negative_slope`, 0.01 by default).
    LeakyRelu {
        slope: f32,
    },
    Sigmoid,
    Tanh,
    /// `x * Φ(x)`, `Φ` the standard normal's distribution function.
    Gelu,
    /// `x * sigmoid(x)` (also called swish).
    Silu,
    /// `x`: a named place in the graph, nothing more.
    Identity,
    /// `x` held within `[min, max]` (PyTorch's `hardtanh`; ReLU6 is `[0, 6]`); a missing bound
    /// is no bound.
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    /// `alpha * x + beta` held within `[0, 1]` (PyTorch's `hardsigmoid` is alpha 1/6, beta
    /// 1/2; ONNX's default alpha is 0.2).
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x * hardsigmoid(x)` with alpha 1/6, beta 1/2 (MobileNetV3's activation).
    HardSwish,
}

impl ActivationKind {
    #[inline]
    fn apply(self, x: f32) -> f32 {
        match self {
            ActivationKind::Relu => x.max(0.0),
            ActivationKind::LeakyRelu { slope } => {
                if x > 0.0 {
                    x
                } else {
                    slope * x
                }
            }
            ActivationKind::Sigmoid => sigmoid(x),
            ActivationKind::Tanh => x.tanh(),
            ActivationKind::Gelu => x * normal_cdf(x),
            ActivationKind::Silu => x * sigmoid(x),
            ActivationKind::Identity => x,
            ActivationKind::Clip { min, max } => clip(
                x,
                min.unwrap_or(f32::NEG_INFINITY),
                max.unwrap_or(f32::INFINITY),
            ),
            ActivationKind::HardSigmoid { alpha, beta } => clip(alpha * x + beta, 0.0, 1.0),
            ActivationKind::HardSwish => x * clip(x * HARD_SWISH_ALPHA + 0.5, 0.0, 1.0),
        }
    }

    /// dy/dx at input `x` with output `y`.
    #[inline]
    fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            // At exactly 0 the gradient is 0, as in PyTorch.
            ActivationKind::Relu => f32::from(u8::from(x > 0.0)),
            ActivationKind::LeakyRelu { slope } => {
                if x > 0.0 {
                    1.0
                } else {
                    slope
                }
            }
            ActivationKind::Sigmoid => y * (1.0 - y),
            ActivationKind::Tanh => 1.0 - y * y,
            ActivationKind::Gelu => {
                let density = (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt();
                normal_cdf(x) + x * density
            }
            ActivationKind::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            ActivationKind::Identity => 1.0,
            // At the bounds the gradient is 0, as for PyTorch's `hardtanh` and `hardsigmoid`.
            ActivationKind::Clip { min, max } => f32::from(u8::from(
                min.is_none_or(|m| x > m) && max.is_none_or(|m| x < m && m >= min.unwrap_or(m)),
            )),
            ActivationKind::HardSigmoid { alpha, beta } => {
                let z = alpha * x + beta;
                if z > 0.0 && z < 1.0 {
                    alpha
                } else {
                    0.0
                }
            }
            // PyTorch's: 0 below -3, 1 above 3, x / 3 + 1/2 between (both ends included).
            ActivationKind::HardSwish => {
                if x < -3.0 {
                    0.0
                } else if x <= 3.0 {
                    x / 3.0 + 0.5
                } else {
                    1.0
                }
            }
        }
    }
}

/// PyTorch's `hardswish` and `hardsigmoid` slope.
const HARD_SWISH_ALPHA: f32 = 1.0 / 6.0;

/// `min(max(x, low), high)`, as ONNX defines it (with `low > high`, `high` everywhere); NaN
/// stays NaN.
#[inline]
fn clip(x: f32, low: f32, high: f32) -> f32 {
    let y = if x < low { low } else { x };
    if y > high {
        high
    } else {
        y
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + libm::erff(x / std::f32::consts::SQRT_2))
}

#[derive(Debug)]
pub struct Activation {
    kind: ActivationKind,
    shape: Shape,
}

impl Activation {
    pub fn new(kind: ActivationKind, shape: Shape) -> Self {
        Activation { kind, shape }
    }

    pub fn kind(&self) -> ActivationKind {
        self.kind
    }
}

impl Layer for Activation {
    fn spec(&self) -> LayerSpec {
        match self.kind {
            ActivationKind::Relu => LayerSpec::Relu,
            ActivationKind::LeakyRelu { slope } => LayerSpec::LeakyRelu { slope },
            ActivationKind::Sigmoid => LayerSpec::Sigmoid,
            ActivationKind::Tanh => LayerSpec::Tanh,
            ActivationKind::Gelu => LayerSpec::Gelu,
            ActivationKind::Silu => LayerSpec::Silu,
            ActivationKind::Identity => LayerSpec::Identity,
            ActivationKind::Clip { min, max } => LayerSpec::Clip { min, max },
            ActivationKind::HardSigmoid { alpha, beta } => LayerSpec::HardSigmoid { alpha, beta },
            ActivationKind::HardSwish => LayerSpec::HardSwish,
        }
    }

    fn output_shape(&self) -> Shape {
        self.shape
    }

    fn flops_per_image(&self) -> u64 {
        match self.kind {
            ActivationKind::Identity => 0,
            _ => self.shape.len() as u64,
        }
    }

    /// Any shape to the same shape.
    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let input = inputs[0].sample(0)[cell.offset(self.shape)];
        let (name, formula) = match self.kind {
            ActivationKind::Relu => ("relu", "max(0, x)"),
            ActivationKind::LeakyRelu { .. } => ("leaky_relu", "x if x > 0, else slope * x"),
            ActivationKind::Sigmoid => ("sigmoid", "1 / (1 + e^-x)"),
            ActivationKind::Tanh => ("tanh", "tanh(x)"),
            ActivationKind::Gelu => ("gelu", "x * Phi(x)"),
            ActivationKind::Silu => ("silu", "x * sigmoid(x)"),
            ActivationKind::Identity => ("identity", "x"),
            ActivationKind::Clip { .. } => ("clip", "x held within [min, max]"),
            ActivationKind::HardSigmoid { .. } => {
                ("hardsigmoid", "alpha * x + beta held within [0, 1]")
            }
            ActivationKind::HardSwish => ("hardswish", "x * (x / 6 + 1/2 held within [0, 1])"),
        };
        Some(Arithmetic::Function {
            name,
            formula,
            input,
            result: self.kind.apply(input),
        })
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        let (input, out) = (inputs[0].data(), output.data_mut());
        // The function is chosen outside the loop, so that ReLU's loop is compiled for ReLU
        // alone (and vectorised); the cheap piecewise-linear ones likewise.
        match self.kind {
            ActivationKind::Relu => map(input, out, |x| x.max(0.0)),
            // Each variant rebuilt inside its own closure, so that the match folds away and the
            // loop is compiled for that function alone.
            ActivationKind::Clip { min, max } => map(input, out, move |x| {
                ActivationKind::Clip { min, max }.apply(x)
            }),
            ActivationKind::HardSigmoid { alpha, beta } => map(input, out, move |x| {
                ActivationKind::HardSigmoid { alpha, beta }.apply(x)
            }),
            ActivationKind::HardSwish => map(input, out, |x| ActivationKind::HardSwish.apply(x)),
            ActivationKind::LeakyRelu { slope } => map(input, out, move |x| {
                ActivationKind::LeakyRelu { slope }.apply(x)
            }),
            kind => map(input, out, move |x| kind.apply(x)),
        }
    }

    fn backward(&self, mut pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        let (input, output, grad_output, kind) =
            (pass.input(), pass.output, pass.grad_output, self.kind);
        let values = [input.data(), output.data(), grad_output.data()];
        if let Some(grad_input) = pass.grad_input() {
            let grad = grad_input.data_mut();
            match kind {
                // The gradient passes where the input was positive, which is where the output
                // is (at exactly 0 it is 0, as in PyTorch).
                ActivationKind::Relu => relu_gradient(grad_output.data(), output.data(), grad),
                kind => map_gradient(values, grad, move |x, y, dy| dy * kind.derivative(x, y)),
            }
        }
    }
}

/// `out[i] = f(input[i])`, in blocks over the pool.
#[inline(always)]
fn map(input: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    for_each_item_run(out, BLOCK, BLOCK, |first, out| {
        let x = &input[first * BLOCK..first * BLOCK + out.len()];
        for (y, &x) in out.iter_mut().zip(x) {
            *y = f(x);
        }
    });
}

/// `grad[i] = f(x[i], y[i], dy[i])` for the `[input, output, output gradient]` values, in
/// blocks over the pool.
#[inline(always)]
fn map_gradient(values: [&[f32]; 3], grad: &mut [f32], f: impl Fn(f32, f32, f32) -> f32 + Sync) {
    for_each_item_run(grad, BLOCK, BLOCK, |first, grad| {
        let range = first * BLOCK..first * BLOCK + grad.len();
        let [xs, ys, dys] = values.map(|v| &v[range.clone()]);
        for (((dx, &x), &y), &dy) in grad.iter_mut().zip(xs).zip(ys).zip(dys) {
            *dx = f(x, y, dy);
        }
    });
}
