//! Layers (the graph's ops): each a thin description of shapes and parameters, with its
//! forward and backward passes side by side, calling the kernels in [`crate::kernels`].
//!
//! The contract, for every layer:
//! - `forward` reads `inputs` (each `[N, input shape]`; one for most layers, two or more for
//!   `add` and `concat`) and overwrites `output` (`[N, output_shape]`, already sized by the
//!   caller).
//! - `backward` *adds* the gradient of the loss with respect to each parameter to
//!   `param_grads` (gradients accumulate; the trainer zeroes them once per step) and *writes*
//!   the gradient with respect to each input into its `grad_inputs` entry when that is asked
//!   for. A value read by several nodes gets the sum of their gradients: the executor
//!   ([`crate::network::Network::backward`]) lets the first writer write and adds the others.
//! - Layers hold no mutable state during a pass: buffers live in the caller's [`LayerScratch`],
//!   so one network serves many threads at once. The one exception is between passes: after a
//!   training forward pass the trainer calls [`Layer::update_running_statistics`] (batch
//!   normalisation's running mean and variance; a no-op for every other layer).
//! - Randomness in a forward pass (dropout) comes from [`LayerScratch::seed`], which the
//!   network sets per node and per step from [`crate::Workspace::set_step_seed`].

mod activation;
mod add;
mod batchnorm;
mod concat;
mod constant_op;
mod conv;
mod dense;
mod dropout;
mod flatten;
mod global_pool;
mod lrn;
mod mul;
mod pad;
mod pool;
mod prelu;
mod reshape;
mod spec;

pub use activation::{Activation, ActivationKind};
pub use add::Add;
pub use batchnorm::{BatchNorm2d, EPSILON as BATCH_NORM_EPSILON, MOMENTUM as BATCH_NORM_MOMENTUM};
pub use concat::Concat;
pub use constant_op::{BinaryOp, ConstantOp};
pub use conv::Conv2d;
pub use dense::Dense;
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use global_pool::GlobalPool;
pub use lrn::{Lrn, LrnConfig};
pub use mul::Multiply;
pub use pad::{Pad, PadMode, Pads};
pub use pool::Pool2d;
pub use prelu::Prelu;
pub use reshape::Reshape;
pub use spec::{Conv2dConfig, DenseConfig, LayerSpec};

use crate::arithmetic::{Arithmetic, Cell};
use crate::kernels::Scratch;
use crate::tensor::{Param, Shape, Tensor};

/// The nodes after a node that [`Layer::forward_fused`] computes with it (at inference any of
/// them; while training a ReLU alone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fusion {
    /// A residual connection's addition before the ReLU: the output holds the other summand,
    /// and the layer adds its result to it.
    pub accumulate: bool,
    /// A ReLU.
    pub relu: bool,
    /// Then a 2x2 max pooling with stride 2, no padding, no partial windows.
    pub max_pool: bool,
}

impl Fusion {
    /// A ReLU alone: what the training passes fuse.
    pub const RELU: Fusion = Fusion {
        accumulate: false,
        relu: true,
        max_pool: false,
    };
}

/// Layers such as dropout behave differently while training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Infer,
}

/// Buffers one layer reuses from batch to batch (im2col columns, batch statistics...). Owned by
/// the caller's workspace, not by the layer.
#[derive(Debug, Default)]
pub struct LayerScratch {
    /// What a layer keeps from its forward pass for its backward pass (batch statistics,
    /// dropout masks).
    pub buffer: Vec<f32>,
    /// The kernels' own buffers.
    pub kernel: Scratch,
    /// Seed of this layer's randomness for the current step (dropout masks).
    pub seed: u64,
    /// The output gradient through a ReLU computed inside the layer, for a backward pass that
    /// reads it more than once (a convolution's).
    pub gated: Tensor,
}

/// What a backward pass reads and writes.
pub struct BackwardPass<'p, 'a> {
    /// What the forward pass read, one `[N, input shape]` per input.
    pub inputs: &'p [&'a Tensor],
    /// `[N, output_shape]`: what the forward pass wrote.
    pub output: &'a Tensor,
    /// `[N, output_shape]`: dL/doutput.
    pub grad_output: &'a Tensor,
    /// dL/dinput per input, `None` where nobody needs it (the network's input).
    pub grad_inputs: &'p mut [Option<&'a mut Tensor>],
    /// The forward pass ended in a ReLU computed inside the layer ([`Layer::trains_with_relu`]):
    /// `output` and `grad_output` are the ReLU's, and the gradient passes only where `output`
    /// is positive.
    pub relu: bool,
}

impl<'a> BackwardPass<'_, 'a> {
    /// The first (for most layers, the only) input.
    pub fn input(&self) -> &'a Tensor {
        self.inputs[0]
    }

    /// Where the first input's gradient goes, if it is asked for.
    pub fn grad_input(&mut self) -> Option<&mut Tensor> {
        self.grad_inputs.first_mut().and_then(|g| g.as_deref_mut())
    }
}

pub trait Layer: Send + Sync + std::fmt::Debug {
    /// The serialisable description this layer was built from.
    fn spec(&self) -> LayerSpec;
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
    /// The value every entry of parameter `param` starts at, when it is not drawn at random
    /// (PReLU's slopes: PyTorch's 0.25); `None` for the usual rule (see
    /// [`crate::Network::init_kaiming`]).
    fn initial_value(&self, _param: &str) -> Option<f32> {
        None
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
    fn forward(
        &self,
        inputs: &[&Tensor],
        output: &mut Tensor,
        mode: Mode,
        scratch: &mut LayerScratch,
    );
    /// How the inference forward pass computes `cell` of the first sample's output from
    /// `inputs` (what `forward` read), in plain loops: see [`crate::arithmetic`]. `None` for a
    /// layer that cannot show it.
    fn arithmetic(&self, _inputs: &[&Tensor], _cell: Cell) -> Option<Arithmetic> {
        None
    }
    /// This layer's forward pass followed by the nodes in `fused` (a residual addition, a
    /// ReLU, then a 2x2 max pooling), in one pass over the output, when the layer can fuse
    /// them (convolution: all; addition and batch normalisation: the ReLU); `false`, with
    /// nothing written, when it cannot. `output` has the shape of the last fused node's output.
    /// Used by [`crate::Network::infer`], and by the training pass for a ReLU where
    /// [`Layer::trains_with_relu`].
    fn forward_fused(
        &self,
        _inputs: &[&Tensor],
        _output: &mut Tensor,
        _mode: Mode,
        _fused: Fusion,
        _scratch: &mut LayerScratch,
    ) -> bool {
        false
    }
    /// Whether the training passes may compute a ReLU that alone reads this layer's output
    /// inside the layer: [`Layer::forward_fused`] with `Mode::Train` and a ReLU, and
    /// `backward` of a [`BackwardPass::relu`] pass. A pass over the values and a value saved
    /// for each, forward and backward.
    fn trains_with_relu(&self) -> bool {
        false
    }
    fn backward(
        &self,
        pass: BackwardPass<'_, '_>,
        param_grads: &mut [Vec<f32>],
        scratch: &mut LayerScratch,
    );
}

/// One-input calls of a layer, for tests and tools that drive a layer alone.
pub trait SingleInput {
    /// [`Layer::forward`] of one input.
    fn forward_one(
        &self,
        input: &Tensor,
        output: &mut Tensor,
        mode: Mode,
        scratch: &mut LayerScratch,
    );
    /// [`Layer::backward`] of one input: `grad_input`, when given, receives dL/dinput.
    #[allow(clippy::too_many_arguments)]
    fn backward_one(
        &self,
        input: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut Tensor>,
        param_grads: &mut [Vec<f32>],
        scratch: &mut LayerScratch,
    );
}

impl<L: Layer + ?Sized> SingleInput for L {
    fn forward_one(
        &self,
        input: &Tensor,
        output: &mut Tensor,
        mode: Mode,
        scratch: &mut LayerScratch,
    ) {
        self.forward(&[input], output, mode, scratch);
    }

    fn backward_one(
        &self,
        input: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut Tensor>,
        param_grads: &mut [Vec<f32>],
        scratch: &mut LayerScratch,
    ) {
        let mut grad_inputs = [grad_input];
        self.backward(
            BackwardPass {
                inputs: &[input],
                output,
                grad_output,
                grad_inputs: &mut grad_inputs,
                relu: false,
            },
            param_grads,
            scratch,
        );
    }
}
