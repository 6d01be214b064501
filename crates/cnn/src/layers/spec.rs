//! Architectures as data: what each layer is, independent of any input shape. Serialised into
//! model files (key `architecture`), so a model file rebuilds its own network.

use super::{
    Activation, ActivationKind, Add, BatchNorm2d, BinaryOp, Concat, ConstantOp, Conv2d, Dense,
    Dropout, Flatten, GlobalPool, Layer, Lrn, LrnConfig, Multiply, Pad, PadMode, Pads, Pool2d,
    Prelu, Reshape,
};
use crate::error::{Error, Result};
use crate::kernels::pool::PoolKind;
use crate::kernels::simd::Isa;
use crate::tensor::Shape;
use crate::window::Window2d;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A convolution, as PyTorch's `nn.Conv2d(in, out_channels, kernel, stride, padding,
/// dilation, groups, bias)`. `dilation` and `groups` are written into model files only when
/// they are not 1, so that files of plain convolutions are as before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conv2dConfig {
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    #[serde(default = "unit_pair", skip_serializing_if = "is_unit_pair")]
    pub dilation: [usize; 2],
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub groups: usize,
    pub bias: bool,
}

impl Conv2dConfig {
    /// `out_channels` outputs, a `kernel` window, stride 1, no padding, no dilation, one group,
    /// a bias.
    pub fn new(out_channels: usize, kernel: [usize; 2]) -> Self {
        Conv2dConfig {
            out_channels,
            kernel,
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        }
    }
}

fn unit_pair() -> [usize; 2] {
    [1, 1]
}

fn is_unit_pair(pair: &[usize; 2]) -> bool {
    *pair == [1, 1]
}

fn one() -> usize {
    1
}

fn is_one(value: &usize) -> bool {
    *value == 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenseConfig {
    pub out_features: usize,
    pub bias: bool,
}

/// One layer (a node's op) of an architecture. In a plain stack, index `i` in the list is
/// module `i` of PyTorch's `nn.Sequential`, which is where the parameter names `"<i>.weight"`
/// come from; in a graph the node's name is its module path.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerSpec {
    Conv2d(Conv2dConfig),
    Relu,
    MaxPool2d(Window2d),
    AvgPool2d(Window2d),
    Flatten,
    Dense(DenseConfig),
    /// Batch normalisation per channel (PyTorch's `BatchNorm2d`, eps 1e-5, momentum 0.1).
    #[serde(rename = "batchnorm2d")]
    BatchNorm2d,
    /// Zeroes each value with probability `rate` while training.
    Dropout {
        rate: f32,
    },
    /// The mean of each feature map: `C x H x W` to `C`.
    #[serde(rename = "global_avg_pool")]
    GlobalAvgPool,
    /// The maximum of each feature map: `C x H x W` to `C`.
    #[serde(rename = "global_max_pool")]
    GlobalMaxPool,
    /// `x` for `x > 0`, else `slope * x`.
    LeakyRelu {
        slope: f32,
    },
    Sigmoid,
    Tanh,
    /// The exact GELU, `x * Φ(x)` (PyTorch's default).
    Gelu,
    /// `x * sigmoid(x)`.
    Silu,
    /// `x` (a named place in a graph).
    Identity,
    /// `x` held within `[min, max]` (`hardtanh`; ReLU6 is `[0, 6]`); `None` is no bound.
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    /// `alpha * x + beta` held within `[0, 1]`.
    #[serde(rename = "hardsigmoid")]
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x * hardsigmoid(x)` (alpha 1/6, beta 1/2).
    #[serde(rename = "hardswish")]
    HardSwish,
    /// `x` for `x > 0`, else `a * x` with `a` learnt: one per channel, or one shared by all.
    Prelu {
        shared: bool,
    },
    /// Local response normalisation across channels.
    Lrn(LrnConfig),
    /// The same values as `C x H x W` maps of `shape`.
    Reshape {
        shape: [usize; 3],
    },
    /// Each map padded by `pads` pixels `[top, left, bottom, right]`, filled as `mode` says.
    Pad {
        pads: Pads,
        #[serde(flatten)]
        mode: PadMode,
    },
    /// `x op c` with a constant `c` (the buffer `constant`, not learnt) of `operand` sizes
    /// (`C x H x W`, each the input's or 1), broadcast over the input.
    ConstantOp {
        op: BinaryOp,
        operand: [usize; 3],
    },
    /// The sum of two or more inputs of one shape (a residual connection).
    Add,
    /// The inputs' channels one after another (same height and width).
    Concat,
    /// The product of two inputs, broadcast (a channel gate `[C, 1, 1]` over `[C, H, W]` maps).
    Mul,
}

impl LayerSpec {
    /// Short name used in summaries and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Conv2d(_) => "conv2d",
            LayerSpec::Relu => "relu",
            LayerSpec::MaxPool2d(_) => "maxpool2d",
            LayerSpec::AvgPool2d(_) => "avgpool2d",
            LayerSpec::Flatten => "flatten",
            LayerSpec::Dense(_) => "dense",
            LayerSpec::BatchNorm2d => "batchnorm2d",
            LayerSpec::Dropout { .. } => "dropout",
            LayerSpec::GlobalAvgPool => "gap",
            LayerSpec::GlobalMaxPool => "gmp",
            LayerSpec::LeakyRelu { .. } => "leaky_relu",
            LayerSpec::Sigmoid => "sigmoid",
            LayerSpec::Tanh => "tanh",
            LayerSpec::Gelu => "gelu",
            LayerSpec::Silu => "silu",
            LayerSpec::Identity => "identity",
            LayerSpec::Clip { .. } => "clip",
            LayerSpec::HardSigmoid { .. } => "hardsigmoid",
            LayerSpec::HardSwish => "hardswish",
            LayerSpec::Prelu { .. } => "prelu",
            LayerSpec::ConstantOp { .. } => "constant",
            LayerSpec::Pad { .. } => "pad",
            LayerSpec::Reshape { .. } => "reshape",
            LayerSpec::Lrn(_) => "lrn",
            LayerSpec::Add => "add",
            LayerSpec::Concat => "concat",
            LayerSpec::Mul => "mul",
        }
    }

    /// Whether the op reads `C x H x W` feature maps: PyTorch's module of the same name
    /// (`Conv2d`, `MaxPool2d`, `AvgPool2d`, `BatchNorm2d`, the global pools) needs a 4-D input.
    pub fn needs_maps(&self) -> bool {
        matches!(
            self,
            LayerSpec::Conv2d(_)
                | LayerSpec::Pad { .. }
                | LayerSpec::Lrn(_)
                | LayerSpec::MaxPool2d(_)
                | LayerSpec::AvgPool2d(_)
                | LayerSpec::BatchNorm2d
                | LayerSpec::GlobalAvgPool
                | LayerSpec::GlobalMaxPool
        )
    }

    /// Whether the op's output is flat features (`[N, F]`, 2-D in PyTorch).
    pub fn flattens(&self) -> bool {
        matches!(
            self,
            LayerSpec::Flatten
                | LayerSpec::Dense(_)
                | LayerSpec::GlobalAvgPool
                | LayerSpec::GlobalMaxPool
        )
    }

    /// Whether the op's output is flat features, given which of its inputs are: after a
    /// flatten, features stay features until a reshape makes maps of them (or a product with
    /// maps broadcasts them).
    pub fn output_flat(&self, flat_inputs: &[bool]) -> bool {
        match self {
            LayerSpec::Reshape { .. } => false,
            LayerSpec::Mul => flat_inputs.iter().all(|&f| f),
            _ => self.flattens() || flat_inputs.iter().any(|&f| f),
        }
    }

    /// How many inputs the op takes: exactly one, or (`add`, `concat`) several.
    pub fn takes_several_inputs(&self) -> bool {
        matches!(self, LayerSpec::Add | LayerSpec::Concat | LayerSpec::Mul)
    }

    /// Builds the layer for inputs of `inputs` shapes, with zeroed parameters, its kernels to
    /// run with `isa`. `node` is the node's name, given in the error when the inputs do not
    /// fit.
    pub fn build(&self, node: &str, inputs: &[Shape], isa: Isa) -> Result<Box<dyn Layer>> {
        let shapes = inputs
            .iter()
            .map(Shape::to_string)
            .collect::<Vec<_>>()
            .join(" and ");
        let misfit = |reason: String| Error::Shape {
            node: node.to_string(),
            kind: self.to_string(),
            input: shapes.clone(),
            reason,
        };
        if inputs.iter().any(Shape::is_empty) {
            return Err(misfit("the input is empty".into()));
        }
        if !self.takes_several_inputs() && inputs.len() != 1 {
            return Err(misfit(format!("it takes one input, not {}", inputs.len())));
        }
        let input = inputs[0];
        let activation = |kind| -> Box<dyn Layer> { Box::new(Activation::new(kind, input)) };
        let layer: Box<dyn Layer> = match *self {
            LayerSpec::Conv2d(config) => Box::new(Conv2d::new(config, input, isa).map_err(misfit)?),
            LayerSpec::Relu => activation(ActivationKind::Relu),
            LayerSpec::LeakyRelu { slope } => activation(ActivationKind::LeakyRelu { slope }),
            LayerSpec::Sigmoid => activation(ActivationKind::Sigmoid),
            LayerSpec::Tanh => activation(ActivationKind::Tanh),
            LayerSpec::Gelu => activation(ActivationKind::Gelu),
            LayerSpec::Silu => activation(ActivationKind::Silu),
            LayerSpec::Identity => activation(ActivationKind::Identity),
            LayerSpec::Clip { min, max } => {
                if min
                    .zip(max)
                    .is_some_and(|(low, high)| low.is_nan() || high.is_nan() || low > high)
                {
                    return Err(misfit("its bounds are the wrong way round".into()));
                }
                activation(ActivationKind::Clip { min, max })
            }
            LayerSpec::HardSigmoid { alpha, beta } => {
                activation(ActivationKind::HardSigmoid { alpha, beta })
            }
            LayerSpec::HardSwish => activation(ActivationKind::HardSwish),
            LayerSpec::Prelu { shared } => Box::new(Prelu::new(shared, input)),
            LayerSpec::ConstantOp { op, operand } => {
                Box::new(ConstantOp::new(op, operand, input).map_err(misfit)?)
            }
            LayerSpec::Pad { pads, mode } => Box::new(Pad::new(pads, mode, input).map_err(misfit)?),
            LayerSpec::Reshape { shape } => Box::new(Reshape::new(shape, input).map_err(misfit)?),
            LayerSpec::Lrn(config) => Box::new(Lrn::new(config, input).map_err(misfit)?),
            LayerSpec::MaxPool2d(window) => {
                Box::new(Pool2d::new(PoolKind::Max, window, input, isa).map_err(misfit)?)
            }
            LayerSpec::AvgPool2d(window) => {
                Box::new(Pool2d::new(PoolKind::Average, window, input, isa).map_err(misfit)?)
            }
            LayerSpec::Flatten => Box::new(Flatten::new(input)),
            LayerSpec::Dense(config) => Box::new(Dense::new(config, input).map_err(misfit)?),
            LayerSpec::BatchNorm2d => Box::new(BatchNorm2d::new(input, isa)),
            LayerSpec::Dropout { rate } => Box::new(Dropout::new(rate, input).map_err(misfit)?),
            LayerSpec::GlobalAvgPool => Box::new(GlobalPool::new(PoolKind::Average, input)),
            LayerSpec::GlobalMaxPool => Box::new(GlobalPool::new(PoolKind::Max, input)),
            LayerSpec::Add => Box::new(Add::new(inputs).map_err(misfit)?),
            LayerSpec::Concat => Box::new(Concat::new(inputs).map_err(misfit)?),
            LayerSpec::Mul => Box::new(Multiply::new(inputs).map_err(misfit)?),
        };
        Ok(layer)
    }
}

/// `3` for `[3, 3]`, `3x5` for `[3, 5]`: sizes as the notation writes them.
fn pair(v: [usize; 2]) -> String {
    if v[0] == v[1] {
        v[0].to_string()
    } else {
        format!("{}x{}", v[0], v[1])
    }
}

fn fmt_window(f: &mut fmt::Formatter<'_>, w: &Window2d, conv: bool) -> fmt::Result {
    if conv {
        write!(f, "{}x{}", w.kernel[0], w.kernel[1])?;
    } else {
        write!(f, " {}", pair(w.kernel))?;
    }
    let default_stride = if conv { [1, 1] } else { w.kernel };
    if w.stride != default_stride {
        write!(f, " stride={}", pair(w.stride))?;
    }
    if w.padding != [0, 0] {
        write!(f, " pad={}", pair(w.padding))?;
    }
    if w.ceil_mode {
        write!(f, " ceil")?;
    }
    Ok(())
}

impl fmt::Display for LayerSpec {
    /// The layer in the text notation (see [`crate::arch`]); parsing it gives the layer back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerSpec::Conv2d(c) => {
                write!(f, "conv {}@", c.out_channels)?;
                fmt_window(f, &Window2d::new(c.kernel, c.stride, c.padding), true)?;
                if c.dilation != [1, 1] {
                    write!(f, " dilation={}", pair(c.dilation))?;
                }
                if c.groups != 1 {
                    write!(f, " groups={}", c.groups)?;
                }
                if !c.bias {
                    write!(f, " nobias")?;
                }
                Ok(())
            }
            LayerSpec::Relu => write!(f, "relu"),
            LayerSpec::MaxPool2d(w) => {
                write!(f, "maxpool")?;
                fmt_window(f, w, false)
            }
            LayerSpec::AvgPool2d(w) => {
                write!(f, "avgpool")?;
                fmt_window(f, w, false)
            }
            LayerSpec::Flatten => write!(f, "flatten"),
            LayerSpec::Dense(d) => {
                write!(f, "dense {}", d.out_features)?;
                if !d.bias {
                    write!(f, " nobias")?;
                }
                Ok(())
            }
            LayerSpec::BatchNorm2d => write!(f, "batchnorm"),
            LayerSpec::Dropout { rate } => write!(f, "dropout {rate}"),
            LayerSpec::GlobalAvgPool => write!(f, "gap"),
            LayerSpec::GlobalMaxPool => write!(f, "gmp"),
            LayerSpec::LeakyRelu { slope } => write!(f, "leakyrelu {slope}"),
            LayerSpec::Sigmoid => write!(f, "sigmoid"),
            LayerSpec::Tanh => write!(f, "tanh"),
            LayerSpec::Gelu => write!(f, "gelu"),
            LayerSpec::Silu => write!(f, "silu"),
            LayerSpec::Identity => write!(f, "identity"),
            LayerSpec::Clip { min, max } => write!(
                f,
                "clip {} {}",
                min.unwrap_or(f32::NEG_INFINITY),
                max.unwrap_or(f32::INFINITY)
            ),
            LayerSpec::HardSigmoid { alpha, beta } => write!(f, "hardsigmoid {alpha} {beta}"),
            LayerSpec::HardSwish => write!(f, "hardswish"),
            LayerSpec::Prelu { shared: false } => write!(f, "prelu"),
            LayerSpec::Prelu { shared: true } => write!(f, "prelu shared"),
            LayerSpec::ConstantOp { op, operand } => {
                let [c, h, w] = operand;
                write!(f, "constant {} {c}x{h}x{w}", op.name())
            }
            LayerSpec::Reshape { shape: [c, h, w] } => write!(f, "reshape {c}x{h}x{w}"),
            LayerSpec::Lrn(LrnConfig {
                size,
                alpha,
                beta,
                bias,
            }) => write!(f, "lrn {size} {alpha} {beta} {bias}"),
            LayerSpec::Pad { pads, mode } => {
                let [top, left, bottom, right] = pads;
                write!(f, "pad {top} {left} {bottom} {right}")?;
                match *mode {
                    PadMode::Constant { value: 0.0 } => Ok(()),
                    PadMode::Constant { value } => write!(f, " value={value}"),
                    PadMode::Edge => write!(f, " edge"),
                    PadMode::Reflect => write!(f, " reflect"),
                }
            }
            LayerSpec::Add => write!(f, "add"),
            LayerSpec::Concat => write!(f, "concat"),
            LayerSpec::Mul => write!(f, "mul"),
        }
    }
}
