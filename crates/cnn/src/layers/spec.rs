//! Architectures as data: what each layer is, independent of any input shape. Serialised into
//! model files (key `architecture`), so a model file rebuilds its own network.

use super::{BatchNorm2d, Conv2d, Dense, Dropout, Flatten, GlobalAvgPool, Layer, Pool2d, Relu};
use crate::error::{Error, Result};
use crate::kernels::pool::PoolKind;
use crate::kernels::simd::Isa;
use crate::tensor::Shape;
use crate::window::Window2d;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conv2dConfig {
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenseConfig {
    pub out_features: usize,
    pub bias: bool,
}

/// One layer of an architecture. Index `i` in a list of these is module `i` of PyTorch's
/// `nn.Sequential`, which is where the parameter names `"<i>.weight"` come from.
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
        }
    }

    /// Whether the layer reads `C x H x W` feature maps: PyTorch's module of the same name
    /// (`Conv2d`, `MaxPool2d`, `AvgPool2d`, `BatchNorm2d`, `AdaptiveAvgPool2d`) needs a 4-D input.
    pub fn needs_maps(&self) -> bool {
        matches!(
            self,
            LayerSpec::Conv2d(_)
                | LayerSpec::MaxPool2d(_)
                | LayerSpec::AvgPool2d(_)
                | LayerSpec::BatchNorm2d
                | LayerSpec::GlobalAvgPool
        )
    }

    /// Whether the layer's output is flat features (`[N, F]`, 2-D in PyTorch).
    pub fn flattens(&self) -> bool {
        matches!(
            self,
            LayerSpec::Flatten | LayerSpec::Dense(_) | LayerSpec::GlobalAvgPool
        )
    }

    /// Builds the layer for an input of `input` shape, with zeroed parameters, its kernels to
    /// run with `isa`. `index` is the layer's position, named in the error when the input does
    /// not fit.
    pub fn build(&self, index: usize, input: Shape, isa: Isa) -> Result<Box<dyn Layer>> {
        let misfit = |reason: String| Error::Shape {
            index,
            kind: self.to_string(),
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(misfit("the input is empty".into()));
        }
        let layer: Box<dyn Layer> = match *self {
            LayerSpec::Conv2d(config) => Box::new(Conv2d::new(config, input, isa).map_err(misfit)?),
            LayerSpec::Relu => Box::new(Relu::new(input)),
            LayerSpec::MaxPool2d(window) => {
                Box::new(Pool2d::new(PoolKind::Max, window, input).map_err(misfit)?)
            }
            LayerSpec::AvgPool2d(window) => {
                Box::new(Pool2d::new(PoolKind::Average, window, input).map_err(misfit)?)
            }
            LayerSpec::Flatten => Box::new(Flatten::new(input)),
            LayerSpec::Dense(config) => Box::new(Dense::new(config, input).map_err(misfit)?),
            LayerSpec::BatchNorm2d => Box::new(BatchNorm2d::new(input)),
            LayerSpec::Dropout { rate } => Box::new(Dropout::new(rate, input).map_err(misfit)?),
            LayerSpec::GlobalAvgPool => Box::new(GlobalAvgPool::new(input)),
        };
        Ok(layer)
    }
}

/// Refuses a layer that needs feature maps ([`LayerSpec::needs_maps`]) after one that has
/// flattened them: this engine would run it on `F x 1 x 1` maps, but a PyTorch
/// `nn.Sequential` of the same modules cannot run at all.
pub fn check_layer_order(architecture: &[LayerSpec]) -> Result<()> {
    let mut flattened_at = None;
    for (index, spec) in architecture.iter().enumerate() {
        if let Some(flat) = flattened_at {
            if spec.needs_maps() {
                return Err(Error::Architecture(format!(
                    "layer {index} ({spec}) needs C x H x W feature maps, but layer {flat} \
                     ({}) has already flattened them into features; move it before layer {flat}",
                    architecture[flat]
                )));
            }
        }
        if spec.flattens() && flattened_at.is_none() {
            flattened_at = Some(index);
        }
    }
    Ok(())
}

fn fmt_window(f: &mut fmt::Formatter<'_>, w: &Window2d, conv: bool) -> fmt::Result {
    let pair = |v: [usize; 2]| {
        if v[0] == v[1] {
            v[0].to_string()
        } else {
            format!("{}x{}", v[0], v[1])
        }
    };
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
        }
    }
}
