//! A network: a stack of layers, each fed the previous one's output, as the seed stacks
//! convolution, ReLU and pooling. The network holds only parameters; everything that changes
//! during a pass lives in a [`Workspace`], so one network serves many threads at once.

use crate::error::{Error, Result};
use crate::kernels::simd::Isa;
use crate::kernels::team::Team;
use crate::layers::{BackwardPass, Fusion, Layer, LayerScratch, LayerSpec, Mode};
use crate::limits::NetworkBudget;
use crate::tensor::{Param, Shape, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Normal};

#[derive(Debug)]
pub struct Network {
    input_shape: Shape,
    layers: Vec<Box<dyn Layer>>,
}

/// One line of a network's summary (Darknet style): what the layer is, what it outputs, what it
/// costs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LayerSummary {
    pub index: usize,
    pub layer: String,
    pub kind: &'static str,
    pub input: Shape,
    pub output: Shape,
    pub params: usize,
    pub flops: u64,
}

impl Network {
    /// Builds the layers of `architecture` for images of `input_shape`, checking that each layer
    /// fits the one before, with the kernels of the instruction set `CNN_KERNELS` names (the
    /// best this CPU has by default: [`Isa::from_env`]). Parameters start at zero: call
    /// [`Network::init_kaiming`] or load them.
    pub fn new(architecture: &[LayerSpec], input_shape: Shape) -> Result<Self> {
        Network::with_isa(architecture, input_shape, Isa::from_env()?)
    }

    /// [`Network::new`] with the kernels of `isa`, whatever `CNN_KERNELS` says.
    pub fn with_isa(architecture: &[LayerSpec], input_shape: Shape, isa: Isa) -> Result<Self> {
        if architecture.is_empty() {
            return Err(Error::Architecture("it has no layers".into()));
        }
        let mut budget = NetworkBudget::new(architecture.len(), input_shape)?;
        let mut shape = input_shape;
        let mut layers = Vec::with_capacity(architecture.len());
        for (index, spec) in architecture.iter().enumerate() {
            let layer = spec.build(index, shape, isa)?;
            budget.add(index, layer.as_ref())?;
            shape = layer.output_shape();
            layers.push(layer);
        }
        Ok(Network {
            input_shape,
            layers,
        })
    }

    pub fn architecture(&self) -> Vec<LayerSpec> {
        self.layers.iter().map(|l| l.spec()).collect()
    }

    pub fn input_shape(&self) -> Shape {
        self.input_shape
    }

    pub fn output_shape(&self) -> Shape {
        self.layers
            .last()
            .map_or(self.input_shape, |l| l.output_shape())
    }

    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        &mut self.layers
    }

    /// Every parameter with the index of its layer, in PyTorch's `state_dict` order.
    pub fn params(&self) -> impl Iterator<Item = (usize, &Param)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.params().iter().map(move |p| (i, p)))
    }

    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.params_mut().iter_mut())
    }

    /// Every saved tensor with the index of its layer: each layer's parameters, then its
    /// buffers, as PyTorch's `state_dict` orders them.
    pub fn tensors(&self) -> impl Iterator<Item = (usize, &Param)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.params().iter().chain(l.buffers()).map(move |p| (i, p)))
    }

    /// Lets every layer update what it tracks across batches (batch normalisation's running
    /// statistics) from the training forward pass just run in `workspace`.
    pub fn update_running_statistics(&mut self, workspace: &Workspace) {
        for (layer, scratch) in self.layers.iter_mut().zip(&workspace.scratch) {
            layer.update_running_statistics(scratch);
        }
    }

    pub fn param_count(&self) -> usize {
        self.params().map(|(_, p)| p.value.len()).sum()
    }

    /// He (Kaiming) initialisation, suited to ReLU: weights drawn from N(0, 2 / fan_in), where
    /// fan_in is the number of inputs feeding one output; biases zero.
    pub fn init_kaiming(&mut self, rng: &mut impl Rng) {
        for param in self.params_mut() {
            if param.name == "bias" {
                param.value.fill(0.0);
                continue;
            }
            // A one-dimensional weight scales features (batch normalisation): start at 1.
            if param.dims.len() < 2 {
                param.value.fill(1.0);
                continue;
            }
            let fan_in: usize = param.dims[1..].iter().product();
            let normal = Normal::new(0.0, (2.0 / fan_in.max(1) as f32).sqrt())
                .expect("a positive standard deviation");
            for w in &mut param.value {
                *w = normal.sample(rng);
            }
        }
    }

    pub fn summary(&self) -> Vec<LayerSummary> {
        self.layers
            .iter()
            .enumerate()
            .map(|(index, layer)| LayerSummary {
                index,
                layer: layer.spec().to_string(),
                kind: layer.spec().kind(),
                input: layer.input_shape(),
                output: layer.output_shape(),
                params: layer.params().iter().map(|p| p.value.len()).sum(),
                flops: layer.flops_per_image(),
            })
            .collect()
    }

    pub fn flops_per_image(&self) -> u64 {
        self.layers.iter().map(|l| l.flops_per_image()).sum()
    }

    /// Runs `input` (`[N, input_shape]`) through every layer; returns the last layer's output
    /// (`[N, output_shape]`). Every layer's output stays in `workspace` for backward and for
    /// showing feature maps.
    pub fn forward<'w>(
        &self,
        input: &Tensor,
        workspace: &'w mut Workspace,
        mode: Mode,
    ) -> Result<&'w Tensor> {
        self.check_input(input)?;
        workspace.fit(self.layers.len());
        let batch = input.batch();
        for (i, layer) in self.layers.iter().enumerate() {
            workspace.scratch[i].seed = workspace
                .step_seed
                .wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (done, rest) = workspace.activations.split_at_mut(i);
            let layer_input = done.last().unwrap_or(input);
            let output = &mut rest[0];
            output.reshape(batch, layer.output_shape());
            layer.forward(layer_input, output, mode, &mut workspace.scratch[i]);
        }
        Ok(workspace.output())
    }

    /// Runs `input` through the network for prediction only and returns the logits
    /// (`[N, output_shape]`), as fast as the engine can: a ReLU (and a 2x2 max pooling) after
    /// a convolution is computed inside it, and a large batch is cut into sub-batches of [`SUB_BATCH`] images that each
    /// thread takes through every layer in turn, so that the activations stay in the core's
    /// cache. Unlike [`Network::forward`], the other layers' outputs are not kept.
    pub fn infer<'w>(&self, input: &Tensor, workspace: &'w mut Workspace) -> Result<&'w Tensor> {
        self.check_input(input)?;
        crate::kernels::on_pool(|| self.infer_checked(input, workspace));
        Ok(workspace.output())
    }

    fn infer_checked(&self, input: &Tensor, workspace: &mut Workspace) {
        let batch = input.batch();
        let threads = rayon::current_num_threads().max(1);
        if batch < 2 * SUB_BATCH {
            // Too few images to share out: every thread works on each layer in turn, when
            // the layers are large enough to split at all.
            if self.flops_per_image() as usize / 2 * batch >= TEAM_MIN_PASS_WORK {
                Team::run(|| self.infer_whole(input, workspace));
            } else {
                self.infer_whole(input, workspace);
            }
            return;
        }
        let Workspace {
            activations,
            sub_batches,
            ..
        } = workspace;
        activations.resize_with(self.layers.len(), Tensor::empty);
        let output = activations.last_mut().expect("a network has layers");
        output.reshape(batch, self.output_shape());
        sub_batches.resize_with(threads, Workspace::default);
        let (in_len, out_len) = (self.input_shape.len(), self.output_shape().len());
        let per_thread = batch.div_ceil(threads);
        use rayon::prelude::*;
        output
            .data_mut()
            .par_chunks_mut(per_thread * out_len)
            .zip(input.data().par_chunks(per_thread * in_len))
            .zip(sub_batches.par_iter_mut())
            .for_each(|((logits, images), workspace)| {
                for (logits, images) in logits
                    .chunks_mut(SUB_BATCH * out_len)
                    .zip(images.chunks(SUB_BATCH * in_len))
                {
                    let mut staged = std::mem::take(&mut workspace.staged_input);
                    staged.reshape(images.len() / in_len, self.input_shape);
                    staged.data_mut().copy_from_slice(images);
                    self.infer_whole(&staged, workspace);
                    logits.copy_from_slice(workspace.output().data());
                    workspace.staged_input = staged;
                }
            });
    }

    /// [`Network::infer`] on the whole batch at once, each layer splitting its own work.
    fn infer_whole(&self, input: &Tensor, workspace: &mut Workspace) {
        workspace.fit(self.layers.len());
        let batch = input.batch();
        let mut i = 0;
        while i < self.layers.len() {
            let layer = &self.layers[i];
            let (done, rest) = workspace.activations.split_at_mut(i);
            let layer_input = done.last().unwrap_or(input);
            let fused = self.fusion_after(i);
            if fused != Fusion::default() {
                // Written where the last fused layer's output goes; the others are skipped.
                let last = i + usize::from(fused.relu) + usize::from(fused.max_pool);
                let output = &mut rest[last - i];
                output.reshape(batch, self.layers[last].output_shape());
                if layer.forward_fused(layer_input, output, fused, &mut workspace.pass_scratch) {
                    i = last + 1;
                    continue;
                }
            }
            let output = &mut rest[0];
            output.reshape(batch, layer.output_shape());
            layer.forward(
                layer_input,
                output,
                Mode::Infer,
                &mut workspace.pass_scratch,
            );
            i += 1;
        }
    }

    /// Which of the layers after layer `i` could be computed with it: a ReLU, then a 2x2
    /// max pooling with stride 2, no padding, and no partial windows.
    fn fusion_after(&self, i: usize) -> Fusion {
        let spec = |k: usize| self.layers.get(i + k).map(|l| l.spec());
        if spec(1) != Some(LayerSpec::Relu) {
            return Fusion::default();
        }
        let shape = self.layers[i].output_shape();
        let max_pool = matches!(spec(2), Some(LayerSpec::MaxPool2d(w))
            if w.kernel == [2, 2] && w.stride == [2, 2] && w.padding == [0, 0]
                && (!w.ceil_mode || (shape.height.is_multiple_of(2) && shape.width.is_multiple_of(2))));
        Fusion {
            relu: true,
            max_pool,
        }
    }

    fn check_input(&self, input: &Tensor) -> Result<()> {
        if input.shape() != self.input_shape {
            return Err(Error::Invalid(format!(
                "the network takes {} images, got {}",
                self.input_shape,
                input.shape()
            )));
        }
        Ok(())
    }

    /// Back-propagates the gradient that the loss left in [`Workspace::output_and_grad_mut`]
    /// through every layer, adding each parameter's gradient to `grads`. Call after
    /// [`Network::forward`] with the same `input` and `workspace`.
    pub fn backward(&self, input: &Tensor, workspace: &mut Workspace, grads: &mut Gradients) {
        let Workspace {
            activations,
            grad_output,
            grad_input,
            scratch,
            ..
        } = workspace;
        let (mut current, mut next) = (grad_output, grad_input);
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let layer_input = if i == 0 { input } else { &activations[i - 1] };
            let grad_input = if i == 0 {
                None
            } else {
                next.reshape(layer_input.batch(), layer.input_shape());
                Some(&mut *next)
            };
            layer.backward(
                BackwardPass {
                    input: layer_input,
                    output: &activations[i],
                    grad_output: current,
                    grad_input,
                },
                &mut grads.layers[i],
                &mut scratch[i],
            );
            std::mem::swap(&mut current, &mut next);
        }
    }
}

/// Everything that changes during a pass: each layer's output, the gradient flowing back, and
/// each layer's scratch buffers. Reused from batch to batch, so steady-state training does not
/// allocate. One per thread when a network is shared.
#[derive(Debug, Default)]
pub struct Workspace {
    activations: Vec<Tensor>,
    grad_output: Tensor,
    grad_input: Tensor,
    scratch: Vec<LayerScratch>,
    /// The one scratch buffer that every layer of [`Network::infer`] uses in turn: nothing
    /// has to outlive a layer there, and one buffer instead of one per layer keeps a pass's
    /// memory in the cores' caches (measured on `cnn4` at batch 1: 3-4% faster).
    pass_scratch: LayerScratch,
    step_seed: u64,
    /// One workspace per thread for [`Network::infer`]'s sub-batches, and the copy of a
    /// sub-batch's images that each one runs on.
    sub_batches: Vec<Workspace>,
    staged_input: Tensor,
}

/// Images per sub-batch in [`Network::infer`]: small enough that a sub-batch's activations
/// stay in a core's L2 cache, large enough that each layer's work is not all overhead
/// (measured with `cnn bench --phases throughput`).
pub const SUB_BATCH: usize = 16;

/// Multiply-adds of a pass below which [`Network::infer`] forms no [`Team`]: forming one costs
/// about 2 us (LeNet-5 at batch 1, 0.4M multiply-adds: 14 us alone, 16 us with a team).
const TEAM_MIN_PASS_WORK: usize = 1 << 21;

impl Default for Tensor {
    fn default() -> Self {
        Tensor::empty()
    }
}

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    /// Seeds the randomness of the next forward passes (dropout): the trainer sets one per
    /// step, so masks differ between steps and replay exactly.
    pub fn set_step_seed(&mut self, seed: u64) {
        self.step_seed = seed;
    }

    fn fit(&mut self, layers: usize) {
        self.activations.resize_with(layers, Tensor::empty);
        self.scratch.resize_with(layers, LayerScratch::default);
    }

    /// Output of every layer from the last forward pass.
    pub fn activations(&self) -> &[Tensor] {
        &self.activations
    }

    /// Output of the last layer (the logits).
    pub fn output(&self) -> &Tensor {
        self.activations.last().expect("forward ran")
    }

    /// The logits, and the buffer where the loss writes dL/dlogits for [`Network::backward`].
    pub fn output_and_grad_mut(&mut self) -> (&Tensor, &mut Tensor) {
        let output = self.activations.last().expect("forward ran");
        self.grad_output.reshape(output.batch(), output.shape());
        (output, &mut self.grad_output)
    }
}

/// One gradient buffer per parameter, in the network's parameter order.
#[derive(Clone, Debug)]
pub struct Gradients {
    layers: Vec<Vec<Vec<f32>>>,
}

impl Gradients {
    pub fn new(network: &Network) -> Self {
        Gradients {
            layers: network
                .layers
                .iter()
                .map(|l| {
                    l.params()
                        .iter()
                        .map(|p| vec![0.0; p.value.len()])
                        .collect()
                })
                .collect(),
        }
    }

    pub fn zero(&mut self) {
        self.iter_mut().for_each(|g| g.fill(0.0));
    }

    /// Gradients in the order of [`Network::params`].
    pub fn iter(&self) -> impl Iterator<Item = &Vec<f32>> {
        self.layers.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        self.layers.iter_mut().flatten()
    }
}
