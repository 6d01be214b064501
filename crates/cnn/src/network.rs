//! A network: a graph of nodes ([`crate::graph`]), each a layer fed the outputs of earlier
//! nodes (a plain stack being the graph in which each reads the one before, as the seed stacks
//! convolution, ReLU and pooling). The network holds only parameters; everything that changes
//! during a pass lives in a [`Workspace`], so one network serves many threads at once.
//!
//! One executor runs the three passes:
//! - [`Network::forward`] computes every node in order and keeps every node's output (for the
//!   backward pass, and for showing feature maps);
//! - [`Network::backward`] goes back through the nodes, each writing the gradient of its
//!   inputs; a value read by several nodes (a residual block's input) receives the sum: the
//!   first gradient computed is written in place, the later ones are added to it;
//! - [`Network::infer`] runs a plan made once ([`plan`]): the graph rewritten where a value has
//!   one reader (a ReLU and 2x2 max pooling computed inside the convolution before them, a
//!   ReLU inside an addition or a batch normalisation, a batch normalisation folded into the
//!   convolution before it),
//!   each value in a buffer shared with values whose lifetimes do not overlap.
//!
//! The training passes run a rewrite of their own: a ReLU that alone reads a convolution's, a
//! batch normalisation's or an addition's output is computed inside that node, forward and
//! backward.
//! Gradient buffers are planned from the values' lifetimes in the backward pass, so a plain
//! stack needs two of them.

mod plan;

use crate::error::{Error, Result};
use crate::graph::{Architecture, NodeSpec, INPUT};
use crate::kernels::simd::Isa;
use crate::kernels::team::Team;
use crate::layers::{BackwardPass, Fusion, Layer, LayerScratch, Mode};
use crate::limits::NetworkBudget;
use crate::tensor::{Param, Shape, Tensor};
use plan::{plan_buffers, InferencePlan, TrainingPlan};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use smallvec::SmallVec;
use std::sync::OnceLock;

/// A value of the graph: 0 is the network's input, `k + 1` node `k`'s output.
type Value = usize;

/// The inputs of one node, as tensors (most nodes read one, an addition two).
type Inputs<'a> = SmallVec<[&'a Tensor; 4]>;

#[derive(Debug)]
pub struct Network {
    input_shape: Shape,
    /// The instruction set of the nodes' kernels.
    isa: Isa,
    nodes: Vec<Node>,
    /// The values the network gives besides the last node's (an ONNX file's other outputs),
    /// and where the last node's comes among them.
    extra_outputs: Vec<Value>,
    main_output_position: usize,
    /// Whether each node's output reaches the last node's, so that the loss depends on it (the
    /// backward pass runs those only).
    trained: Vec<bool>,
    /// How a training pass runs the graph (ReLUs fused into the nodes before them), and how a
    /// backward pass after an inference forward pass does (every value kept, for
    /// attributions).
    training: TrainingPlan,
    unfused: TrainingPlan,
    /// Made on the first inference, forgotten whenever the parameters may change.
    inference: OnceLock<InferencePlan>,
}

/// One node: its name, its layer, and the values it reads.
#[derive(Debug)]
pub struct Node {
    name: String,
    layer: Box<dyn Layer>,
    inputs: Vec<Value>,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn layer(&self) -> &dyn Layer {
        self.layer.as_ref()
    }

    pub fn layer_mut(&mut self) -> &mut dyn Layer {
        self.layer.as_mut()
    }

    /// The values it reads: 0 for the network's input, `k + 1` for node `k`'s output.
    pub fn inputs(&self) -> &[usize] {
        &self.inputs
    }
}

/// One line of a network's summary (Darknet style): what the node is, what it reads, what it
/// outputs, what it costs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LayerSummary {
    pub index: usize,
    /// The node's name (its module path; the index for a plain stack).
    pub name: String,
    pub layer: String,
    pub kind: &'static str,
    /// The names of the values it reads (`input` for the network's input).
    pub inputs: Vec<String>,
    /// The shape of its first input.
    pub input: Shape,
    pub output: Shape,
    pub params: usize,
    pub flops: u64,
}

impl Network {
    /// Builds the nodes of `architecture` for images of `input_shape`, checking the graph
    /// ([`Architecture::validate`]) and that each node fits its inputs (the error names the node and the shapes), with the
    /// kernels of the instruction set `CNN_KERNELS` names (the best this CPU has by default:
    /// [`Isa::from_env`]). Parameters start at zero: call [`Network::init_kaiming`] or load
    /// them.
    pub fn new(architecture: &Architecture, input_shape: Shape) -> Result<Self> {
        Network::with_isa(architecture, input_shape, Isa::from_env()?)
    }

    /// [`Network::new`] with the kernels of `isa`, whatever `CNN_KERNELS` says.
    pub fn with_isa(architecture: &Architecture, input_shape: Shape, isa: Isa) -> Result<Self> {
        architecture.validate()?;
        let mut budget = NetworkBudget::new(architecture.nodes.len(), input_shape)?;
        let value_of = |name: &str, names: &[String]| -> Value {
            if name == INPUT {
                0
            } else {
                names.iter().position(|n| n == name).expect("validated") + 1
            }
        };
        let mut names: Vec<String> = Vec::with_capacity(architecture.nodes.len());
        let mut shapes = vec![input_shape];
        let mut nodes = Vec::with_capacity(architecture.nodes.len());
        for NodeSpec { name, op, inputs } in &architecture.nodes {
            let inputs: Vec<Value> = inputs.iter().map(|i| value_of(i, &names)).collect();
            let input_shapes: Vec<Shape> = inputs.iter().map(|&v| shapes[v]).collect();
            let layer = op.build(name, &input_shapes, isa)?;
            budget.add(name, &input_shapes, layer.as_ref())?;
            shapes.push(layer.output_shape());
            names.push(name.clone());
            nodes.push(Node {
                name: name.clone(),
                layer,
                inputs,
            });
        }
        let last = nodes.len();
        let outputs: Vec<Value> = architecture
            .output_names()
            .iter()
            .map(|name| value_of(name, &names))
            .collect();
        let main_output_position = outputs.iter().position(|&v| v == last).expect("validated");
        let extra_outputs: Vec<Value> = outputs.into_iter().filter(|&v| v != last).collect();
        let mut trained = vec![false; nodes.len()];
        trained[last - 1] = true;
        for i in (0..nodes.len()).rev() {
            if trained[i] {
                for &v in nodes[i].inputs.iter().filter(|&&v| v > 0) {
                    trained[v - 1] = true;
                }
            }
        }
        let outputs: Vec<Value> = std::iter::once(last)
            .chain(extra_outputs.iter().copied())
            .collect();
        let [training, unfused] = [true, false]
            .map(|fuse| TrainingPlan::new(&nodes, (&trained, &outputs), &shapes, fuse));
        Ok(Network {
            input_shape,
            isa,
            nodes,
            extra_outputs,
            main_output_position,
            trained,
            training,
            unfused,
            inference: OnceLock::new(),
        })
    }

    pub fn architecture(&self) -> Architecture {
        let outputs = if self.extra_outputs.is_empty() {
            Vec::new()
        } else {
            self.output_values()
                .map(|v| self.value_name(v).to_string())
                .collect()
        };
        Architecture {
            outputs,
            nodes: self
                .nodes
                .iter()
                .map(|node| NodeSpec {
                    name: node.name.clone(),
                    op: node.layer.spec(),
                    inputs: node
                        .inputs
                        .iter()
                        .map(|&v| self.value_name(v).to_string())
                        .collect(),
                })
                .collect(),
        }
    }

    fn value_name(&self, value: Value) -> &str {
        match value {
            0 => INPUT,
            v => &self.nodes[v - 1].name,
        }
    }

    pub(crate) fn value_shape(&self, value: Value) -> Shape {
        match value {
            0 => self.input_shape,
            v => self.nodes[v - 1].layer.output_shape(),
        }
    }

    /// The index of the node named `name_or_index`, or with that index.
    pub fn find_node(&self, name_or_index: &str) -> Result<usize> {
        if let Some(i) = self.nodes.iter().position(|n| n.name() == name_or_index) {
            return Ok(i);
        }
        match name_or_index.parse::<usize>() {
            Ok(i) if i < self.nodes.len() => Ok(i),
            _ => Err(Error::Invalid(format!(
                "no node {name_or_index:?}: give a name or an index from 0 to {} (see `cnn info`)",
                self.nodes.len().saturating_sub(1)
            ))),
        }
    }

    pub fn input_shape(&self) -> Shape {
        self.input_shape
    }

    pub fn output_shape(&self) -> Shape {
        self.nodes
            .last()
            .map_or(self.input_shape, |n| n.layer.output_shape())
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The values the network gives besides the last node's (see [`Node::inputs`]).
    pub fn extra_outputs(&self) -> &[usize] {
        &self.extra_outputs
    }

    /// Every value the network gives, in order: the last node's among the others.
    fn output_values(&self) -> impl Iterator<Item = Value> + '_ {
        let (before, after) = self.extra_outputs.split_at(self.main_output_position);
        before
            .iter()
            .copied()
            .chain([self.nodes.len()])
            .chain(after.iter().copied())
    }

    /// The names of the nodes whose outputs the network gives, in order.
    pub fn output_names(&self) -> Vec<&str> {
        self.output_values().map(|v| self.value_name(v)).collect()
    }

    /// The nodes, to change their parameters: forgets the inference plan, which holds
    /// parameters derived from them.
    pub fn nodes_mut(&mut self) -> &mut [Node] {
        self.inference = OnceLock::new();
        &mut self.nodes
    }

    /// Every parameter with the name of its node, in PyTorch's `state_dict` order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Param)> {
        self.nodes
            .iter()
            .flat_map(|n| n.layer.params().iter().map(move |p| (n.name.as_str(), p)))
    }

    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.nodes_mut()
            .iter_mut()
            .flat_map(|n| n.layer.params_mut().iter_mut())
    }

    /// Every saved tensor with the name of its node: each node's parameters, then its
    /// buffers, as PyTorch's `state_dict` orders them.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &Param)> {
        self.nodes.iter().flat_map(|n| {
            n.layer
                .params()
                .iter()
                .chain(n.layer.buffers())
                .map(move |p| (n.name.as_str(), p))
        })
    }

    /// Lets every layer update what it tracks across batches (batch normalisation's running
    /// statistics) from the training forward pass just run in `workspace`.
    pub fn update_running_statistics(&mut self, workspace: &Workspace) {
        self.inference = OnceLock::new();
        for (node, scratch) in self.nodes.iter_mut().zip(&workspace.scratch) {
            node.layer.update_running_statistics(scratch);
        }
    }

    pub fn param_count(&self) -> usize {
        self.params().map(|(_, p)| p.value.len()).sum()
    }

    /// He (Kaiming) initialisation, suited to ReLU: weights drawn from N(0, 2 / fan_in), where
    /// fan_in is the number of inputs feeding one output; biases zero; a parameter its layer
    /// gives an initial value (PReLU's slopes), that value.
    pub fn init_kaiming(&mut self, rng: &mut impl Rng) {
        let nodes = self.nodes_mut().iter_mut();
        for layer in nodes.map(|n| &mut n.layer) {
            let initial: Vec<Option<f32>> = layer
                .params()
                .iter()
                .map(|p| layer.initial_value(p.name))
                .collect();
            for (param, initial) in layer.params_mut().iter_mut().zip(initial) {
                init_param(param, initial, rng);
            }
        }
    }

    pub fn summary(&self) -> Vec<LayerSummary> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(index, node)| LayerSummary {
                index,
                name: node.name.clone(),
                layer: node.layer.spec().to_string(),
                kind: node.layer.spec().kind(),
                inputs: node
                    .inputs
                    .iter()
                    .map(|&v| self.value_name(v).to_string())
                    .collect(),
                input: self.value_shape(node.inputs[0]),
                output: node.layer.output_shape(),
                params: node.layer.params().iter().map(|p| p.value.len()).sum(),
                flops: node.layer.flops_per_image(),
            })
            .collect()
    }

    pub fn flops_per_image(&self) -> u64 {
        self.nodes.iter().map(|n| n.layer.flops_per_image()).sum()
    }

    /// Runs `input` (`[N, input_shape]`) through every node; returns the last node's output
    /// (`[N, output_shape]`). Every node's output stays in `workspace` for backward and for
    /// showing feature maps, except, after a training pass, the values that a ReLU computed
    /// inside the node before it read (see [`Workspace::fuse_training`]): those are left as
    /// they were.
    pub fn forward<'w>(
        &self,
        input: &Tensor,
        workspace: &'w mut Workspace,
        mode: Mode,
    ) -> Result<&'w Tensor> {
        self.check_input(input)?;
        workspace.fit(self.nodes.len());
        workspace.fused = mode == Mode::Train && !workspace.unfused_training;
        let plan = self.training_plan(workspace);
        let batch = input.batch();
        for (i, node) in self.nodes.iter().enumerate() {
            workspace.scratch[i].seed = workspace
                .step_seed
                .wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            if plan.fused_away[i] {
                continue;
            }
            let (done, rest) = workspace.activations.split_at_mut(i);
            let inputs: Inputs<'_> = node
                .inputs
                .iter()
                .map(|&v| if v == 0 { input } else { &done[v - 1] })
                .collect();
            let scratch = &mut workspace.scratch[i];
            match plan.relu_after[i] {
                None => {
                    let output = &mut rest[0];
                    output.reshape(batch, node.layer.output_shape());
                    node.layer.forward(&inputs, output, mode, scratch);
                }
                Some(relu) => {
                    let output = &mut rest[relu - i];
                    output.reshape(batch, node.layer.output_shape());
                    let fused =
                        node.layer
                            .forward_fused(&inputs, output, mode, Fusion::RELU, scratch);
                    assert!(fused, "a layer that trains with a ReLU computes it");
                }
            }
        }
        Ok(workspace.output())
    }

    /// The plan of the last forward pass in `workspace`.
    fn training_plan(&self, workspace: &Workspace) -> &TrainingPlan {
        if workspace.fused {
            &self.training
        } else {
            &self.unfused
        }
    }

    /// Runs `input` through the network for prediction only and returns the logits
    /// (`[N, output_shape]`), as fast as the engine can: by the inference plan (fused and
    /// folded nodes, shared buffers), and a large batch cut into sub-batches of
    /// [`SUB_BATCH`] images that each thread takes through every node in turn, so that the
    /// activations stay in the core's cache. Unlike [`Network::forward`], the nodes' outputs
    /// are not kept.
    pub fn infer<'w>(&self, input: &Tensor, workspace: &'w mut Workspace) -> Result<&'w Tensor> {
        self.check_input(input)?;
        let plan = self.inference.get_or_init(|| InferencePlan::new(self));
        crate::kernels::on_pool(|| self.infer_checked(plan, input, workspace));
        Ok(&workspace.logits)
    }

    /// [`Network::infer`] that returns every output the network gives, in the order of
    /// [`Network::output_names`] (the logits among them).
    pub fn infer_outputs<'w>(
        &self,
        input: &Tensor,
        workspace: &'w mut Workspace,
    ) -> Result<Vec<&'w Tensor>> {
        self.infer(input, workspace)?;
        let workspace = &*workspace;
        let mut outputs: Vec<&Tensor> = workspace.extra_outputs.iter().collect();
        outputs.insert(self.main_output_position, &workspace.logits);
        Ok(outputs)
    }

    fn infer_checked(&self, plan: &InferencePlan, input: &Tensor, workspace: &mut Workspace) {
        let batch = input.batch();
        let threads = rayon::current_num_threads().max(1);
        if batch < 2 * SUB_BATCH {
            // Too few images to share out: every thread works on each node in turn, when the
            // nodes are large enough to split at all.
            if self.flops_per_image() as usize / 2 * batch >= TEAM_MIN_PASS_WORK {
                Team::run(|| plan.run(self, input, workspace));
            } else {
                plan.run(self, input, workspace);
            }
            let mut extra = std::mem::take(&mut workspace.extra_outputs);
            extra.resize_with(self.extra_outputs.len(), Tensor::empty);
            for (copy, output) in extra.iter_mut().zip(plan.extra_outputs(workspace)) {
                copy.reshape(batch, output.shape());
                copy.data_mut().copy_from_slice(output.data());
            }
            workspace.extra_outputs = extra;
            return;
        }
        let Workspace {
            logits,
            extra_outputs,
            sub_batches,
            ..
        } = workspace;
        logits.reshape(batch, self.output_shape());
        extra_outputs.resize_with(self.extra_outputs.len(), Tensor::empty);
        for (tensor, &v) in extra_outputs.iter_mut().zip(&self.extra_outputs) {
            tensor.reshape(batch, self.value_shape(v));
        }
        sub_batches.resize_with(threads, Workspace::default);
        let (in_len, out_len) = (self.input_shape.len(), self.output_shape().len());
        let per_thread = batch.div_ceil(threads);
        // Each thread's share of the other outputs.
        let mut shares: Vec<SmallVec<[&mut [f32]; 2]>> = Vec::new();
        shares.resize_with(threads, SmallVec::new);
        for tensor in extra_outputs.iter_mut() {
            let len = tensor.shape().len();
            for (share, part) in shares
                .iter_mut()
                .zip(tensor.data_mut().chunks_mut(per_thread * len))
            {
                share.push(part);
            }
        }
        use rayon::prelude::*;
        logits
            .data_mut()
            .par_chunks_mut(per_thread * out_len)
            .zip(input.data().par_chunks(per_thread * in_len))
            .zip(sub_batches.par_iter_mut().zip(shares.par_iter_mut()))
            .for_each(|((logits, images), (workspace, share))| {
                for (s, (logits, images)) in logits
                    .chunks_mut(SUB_BATCH * out_len)
                    .zip(images.chunks(SUB_BATCH * in_len))
                    .enumerate()
                {
                    let mut staged = std::mem::take(&mut workspace.staged_input);
                    staged.reshape(images.len() / in_len, self.input_shape);
                    staged.data_mut().copy_from_slice(images);
                    plan.run(self, &staged, workspace);
                    logits.copy_from_slice(workspace.logits.data());
                    for (part, output) in share.iter_mut().zip(plan.extra_outputs(workspace)) {
                        let len = output.data().len();
                        part[s * SUB_BATCH * output.shape().len()..][..len]
                            .copy_from_slice(output.data());
                    }
                    workspace.staged_input = staged;
                }
            });
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
    /// through every node, adding each parameter's gradient to `grads`. Call after
    /// [`Network::forward`] with the same `input` and `workspace`.
    pub fn backward(&self, input: &Tensor, workspace: &mut Workspace, grads: &mut Gradients) {
        self.backward_observed(input, workspace, grads, false, &mut |_, _| {});
    }

    /// [`Network::backward`] that also returns dL/d(input), and shows `observe` the gradient
    /// of each node's output as soon as it is complete (before its buffer is reused), with the
    /// value's number as in [`Node::inputs`]. What attributions need: the gradient of a class
    /// score with respect to the picture (saliency, integrated gradients) or to a layer's maps
    /// (Grad-CAM).
    pub fn backward_to_input<'w>(
        &self,
        input: &Tensor,
        workspace: &'w mut Workspace,
        grads: &mut Gradients,
        mut observe: impl FnMut(usize, &Tensor),
    ) -> &'w Tensor {
        self.backward_observed(input, workspace, grads, true, &mut observe);
        let slot = self.training_plan(workspace).gradient_buffers.1.len();
        let gradient = &mut workspace.gradients[slot];
        if !workspace.gradient_written[0] {
            // No node reads the input: its gradient is zero.
            gradient.reshape(input.batch(), self.input_shape);
            gradient.data_mut().fill(0.0);
        }
        gradient
    }

    fn backward_observed(
        &self,
        input: &Tensor,
        workspace: &mut Workspace,
        grads: &mut Gradients,
        input_gradient: bool,
        observe: &mut dyn FnMut(usize, &Tensor),
    ) {
        let batch = input.batch();
        let plan = self.training_plan(workspace);
        // The input's gradient, when asked for, gets a buffer of its own after the planned ones.
        let planned = plan.gradient_buffers.1.len();
        let input_buffer = input_gradient.then_some(planned);
        let buffer_of = |v: Value| {
            if v == 0 {
                input_buffer
            } else {
                plan.gradient_buffers.0[v]
            }
        };
        let Workspace {
            activations,
            grad_output,
            gradients,
            gradient_parts,
            gradient_written,
            scratch,
            ..
        } = workspace;
        gradients.resize_with(planned + usize::from(input_gradient), Tensor::empty);
        gradient_written.clear();
        gradient_written.resize(self.nodes.len() + 1, false);
        for (i, node) in self.nodes.iter().enumerate().rev() {
            if !self.trained[i] || plan.fused_away[i] {
                // The loss does not depend on it (its gradients are zero), or the node before
                // it computes it.
                continue;
            }
            // The value the node computes: its own, or that of the ReLU it computes too.
            let value = plan.relu_after[i].unwrap_or(i) + 1;
            // This node's output gradient: the loss's for the last node, else its buffer (every
            // reader of the value came later, so its gradient is complete).
            let output_gradient = match buffer_of(value) {
                None => std::mem::take(grad_output),
                Some(b) => std::mem::take(&mut gradients[b]),
            };
            observe(value, &output_gradient);
            // Where each input's gradient goes: in place for the first gradient of a value,
            // else a part to add afterwards.
            gradient_parts.resize_with(node.inputs.len(), Tensor::empty);
            let mut targets: SmallVec<[Option<Tensor>; 4]> = SmallVec::new();
            let mut in_place: SmallVec<[bool; 4]> = SmallVec::new();
            for (k, &v) in node.inputs.iter().enumerate() {
                let first = buffer_of(v).is_some()
                    && !gradient_written[v]
                    && !node.inputs[..k].contains(&v);
                let target = match buffer_of(v) {
                    None => None,
                    Some(b) if first => Some(std::mem::take(&mut gradients[b])),
                    Some(_) => Some(std::mem::take(&mut gradient_parts[k])),
                };
                in_place.push(first);
                targets.push(target.map(|mut t| {
                    t.reshape(batch, self.value_shape(v));
                    t
                }));
            }
            let inputs: Inputs<'_> = node
                .inputs
                .iter()
                .map(|&v| if v == 0 { input } else { &activations[v - 1] })
                .collect();
            let mut grad_inputs: SmallVec<[Option<&mut Tensor>; 4]> =
                targets.iter_mut().map(Option::as_mut).collect();
            node.layer.backward(
                BackwardPass {
                    inputs: &inputs,
                    output: &activations[value - 1],
                    grad_output: &output_gradient,
                    grad_inputs: &mut grad_inputs,
                    relu: plan.relu_after[i].is_some(),
                },
                &mut grads.nodes[i],
                &mut scratch[i],
            );
            drop(grad_inputs);
            for (k, (&v, target)) in node.inputs.iter().zip(targets).enumerate() {
                let (Some(b), Some(target)) = (buffer_of(v), target) else {
                    continue;
                };
                if in_place[k] {
                    gradients[b] = target;
                    gradient_written[v] = true;
                } else {
                    add_assign(gradients[b].data_mut(), target.data());
                    gradient_parts[k] = target;
                }
            }
            match buffer_of(value) {
                None => *grad_output = output_gradient,
                Some(b) => gradients[b] = output_gradient,
            }
        }
    }
}

/// `total += part`, in blocks over the pool.
fn add_assign(total: &mut [f32], part: &[f32]) {
    const BLOCK: usize = 4096;
    crate::kernels::for_each_item_run(total, BLOCK, BLOCK, |first, total| {
        let part = &part[first * BLOCK..first * BLOCK + total.len()];
        for (t, p) in total.iter_mut().zip(part) {
            *t += p;
        }
    });
}

/// Everything that changes during a pass: each node's output, the gradients flowing back, and
/// each node's scratch buffers. Reused from batch to batch, so steady-state training does not
/// allocate. One per thread when a network is shared.
#[derive(Debug, Default)]
pub struct Workspace {
    /// Each node's output from the last [`Network::forward`].
    activations: Vec<Tensor>,
    /// dL/d(last node's output), written by the loss.
    grad_output: Tensor,
    /// The gradient buffers of the backward pass, the parts of gradients added into them,
    /// and which values' gradients were written this pass.
    gradients: Vec<Tensor>,
    gradient_parts: Vec<Tensor>,
    gradient_written: Vec<bool>,
    scratch: Vec<LayerScratch>,
    /// The buffers of [`Network::infer`]'s plan, and the one scratch that every node of it
    /// uses in turn: nothing has to outlive a node there, and one buffer instead of one per
    /// node keeps a pass's memory in the cores' caches (measured on `cnn4` at batch 1: 3-4%
    /// faster).
    values: Vec<Tensor>,
    pass_scratch: LayerScratch,
    /// The last inference's output, and the network's other outputs.
    logits: Tensor,
    extra_outputs: Vec<Tensor>,
    step_seed: u64,
    /// Whether the last forward pass ran the training plan, with its ReLUs fused; and whether
    /// training passes are to run the graph as it is ([`Workspace::fuse_training`]).
    fused: bool,
    unfused_training: bool,
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

    /// Whether training forward passes compute a ReLU that alone reads a convolution's, a batch
    /// normalisation's or an addition's output inside that node (the default), or run every
    /// node as the
    /// graph has it and keep every value (for tests that compare the two: their results are
    /// the same bits).
    pub fn fuse_training(&mut self, fuse: bool) {
        self.unfused_training = !fuse;
    }

    /// Seeds the randomness of the next forward passes (dropout): the trainer sets one per
    /// step, so masks differ between steps and replay exactly.
    pub fn set_step_seed(&mut self, seed: u64) {
        self.step_seed = seed;
    }

    fn fit(&mut self, nodes: usize) {
        self.activations.resize_with(nodes, Tensor::empty);
        self.scratch.resize_with(nodes, LayerScratch::default);
    }

    /// Output of every node from the last forward pass (after a training pass, but for the
    /// values that a ReLU computed inside the node before it read: see [`Network::forward`]).
    pub fn activations(&self) -> &[Tensor] {
        &self.activations
    }

    /// Output of the last node (the logits) from the last forward pass.
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
    nodes: Vec<Vec<Vec<f32>>>,
}

impl Gradients {
    pub fn new(network: &Network) -> Self {
        Gradients {
            nodes: network
                .nodes
                .iter()
                .map(|n| {
                    n.layer
                        .params()
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
        self.nodes.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        self.nodes.iter_mut().flatten()
    }
}

/// One parameter's initial values (see [`Network::init_kaiming`]).
fn init_param(param: &mut Param, initial: Option<f32>, rng: &mut impl Rng) {
    if let Some(value) = initial {
        param.value.fill(value);
        return;
    }
    if param.name == "bias" {
        param.value.fill(0.0);
        return;
    }
    // A one-dimensional weight scales features (batch normalisation): start at 1.
    if param.dims.len() < 2 {
        param.value.fill(1.0);
        return;
    }
    let fan_in: usize = param.dims[1..].iter().product();
    let normal = Normal::new(0.0, (2.0 / fan_in.max(1) as f32).sqrt())
        .expect("a positive standard deviation");
    for w in &mut param.value {
        *w = normal.sample(rng);
    }
}
