//! Layers: each a thin description of shapes and parameters, with its forward and backward
//! passes side by side, calling the kernels in [`crate::kernels`].
//!
//! The contract, for every layer:
//! - `forward` reads `input` (`[N, input_shape]`) and overwrites `output` (`[N, output_shape]`,
//!   already sized by the caller).
//! - `backward` *adds* the gradient of the loss with respect to each parameter to
//!   `param_grads` (gradients accumulate; the trainer zeroes them once per step) and
//!   *writes* the gradient with respect to its input into `grad_input` when that is asked for.
//! - Layers hold no mutable state during a pass: buffers live in the caller's [`LayerScratch`],
//!   so one network serves many threads at once. The one exception is between passes: after a
//!   training forward pass the trainer calls [`Layer::update_running_statistics`] (batch
//!   normalisation's running mean and variance; a no-op for every other layer).
//! - Randomness in a forward pass (dropout) comes from [`LayerScratch::seed`], which the
//!   network sets per layer and per step from [`crate::Workspace::set_step_seed`].

mod activation;
mod batchnorm;
mod conv;
mod dense;
mod dropout;
mod flatten;
mod global_pool;
mod pool;
mod spec;

pub use activation::Relu;
pub use batchnorm::{BatchNorm2d, EPSILON as BATCHNORM_EPSILON, MOMENTUM as BATCHNORM_MOMENTUM};
pub use conv::Conv2d;
pub use dense::Dense;
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use global_pool::GlobalAvgPool;
pub use pool::Pool2d;
pub use spec::{check_layer_order, Conv2dConfig, DenseConfig, LayerSpec};

use crate::tensor::{Param, Shape, Tensor};

/// The layers after a convolution that [`Layer::forward_fused`] computes with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fusion {
    /// A ReLU.
    pub relu: bool,
    /// Then a 2x2 max pooling with stride 2, no padding, no partial windows.
    pub max_pool: bool,
}

/// Layers such as dropout behave differently while training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Infer,
}

/// Buffers one layer reuses from batch to batch (im2col columns, partial sums...). Owned by
/// the caller's workspace, not by the layer.
#[derive(Debug, Default)]
pub struct LayerScratch {
    pub buffer: Vec<f32>,
    /// Seed of this layer's randomness for the current step (dropout masks).
    pub seed: u64,
}

/// What a backward pass reads and writes.
pub struct BackwardPass<'a> {
    /// `[N, input_shape]`: what the forward pass read.
    pub input: &'a Tensor,
    /// `[N, output_shape]`: what the forward pass wrote.
    pub output: &'a Tensor,
    /// `[N, output_shape]`: dL/doutput.
    pub grad_output: &'a Tensor,
    /// `[N, input_shape]`: dL/dinput, or `None` for the first layer, which nobody reads.
    pub grad_input: Option<&'a mut Tensor>,
}

pub trait Layer: Send + Sync + std::fmt::Debug {
    /// The serialisable description this layer was built from.
    fn spec(&self) -> LayerSpec;
    fn input_shape(&self) -> Shape;
    fn output_shape(&self) -> Shape;
    /// Learnable tensors in PyTorch's order and layout (`weight`, then `bias`).
    fn params(&self) -> &[Param] {
        &[]
    }
    fn params_mut(&mut self) -> &mut [Param] {
        &mut []
    }
    /// State that is saved but not learnt (batch normalisation's `running_mean`,
    /// `running_var`, `num_batches_tracked`), in PyTorch's order, after the parameters.
    fn buffers(&self) -> &[Param] {
        &[]
    }
    fn buffers_mut(&mut self) -> &mut [Param] {
        &mut []
    }
    /// Called by the trainer after each training forward pass, with that pass's scratch.
    fn update_running_statistics(&mut self, _scratch: &LayerScratch) {}
    /// Floating-point operations for one image's forward pass (a multiply-add counts two).
    fn flops_per_image(&self) -> u64;
    /// Which kernel computes this layer, as `cnn bench` prints it: `avx2 winograd` for a
    /// convolution (instruction set and algorithm), `gemm` for a product, `loops` for plain
    /// loops.
    fn kernel(&self) -> String {
        "loops".into()
    }
    fn forward(&self, input: &Tensor, output: &mut Tensor, mode: Mode, scratch: &mut LayerScratch);
    /// This layer's inference forward pass followed by the layers in `fused` (a ReLU, then a
    /// 2x2 max pooling), in one pass over the output, when the layer can fuse them
    /// (convolution); `false`, with nothing written, when it cannot. `output` has the shape
    /// of the last fused layer's output. Used by [`crate::Network::infer`].
    fn forward_fused(
        &self,
        _input: &Tensor,
        _output: &mut Tensor,
        _fused: Fusion,
        _scratch: &mut LayerScratch,
    ) -> bool {
        false
    }
    fn backward(
        &self,
        pass: BackwardPass<'_>,
        param_grads: &mut [Vec<f32>],
        scratch: &mut LayerScratch,
    );
}
