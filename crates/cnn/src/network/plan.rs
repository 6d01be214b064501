//! Plans made once per network: which buffer holds which value (from the values' lifetimes),
//! and the training and inference passes as rewrites of the graph.

use super::{Inputs, Network, Node, Value, Workspace};
use crate::layers::BATCH_NORM_EPSILON as EPSILON;
use crate::layers::{Fusion, Layer, LayerSpec, Mode};
use crate::tensor::{Shape, Tensor};

/// When a value is live, in steps of a pass (both inclusive), and its floats per image.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lifetime {
    pub first: usize,
    pub last: usize,
    pub len: usize,
}

/// Gives each value with a lifetime a buffer that no value live at the same time uses, taking
/// values in the order they start and reusing the first free buffer; returns each value's
/// buffer and each buffer's floats per image (the largest value it holds). A plain stack needs
/// two.
pub(super) fn plan_buffers(lifetimes: &[Option<Lifetime>]) -> (Vec<Option<usize>>, Vec<usize>) {
    let mut order: Vec<usize> = (0..lifetimes.len())
        .filter(|&v| lifetimes[v].is_some())
        .collect();
    order.sort_by_key(|&v| lifetimes[v].map(|l| l.first));
    let mut buffer_of = vec![None; lifetimes.len()];
    // Per buffer: the last step of the value it holds now, and its size.
    let mut buffers: Vec<(usize, usize)> = Vec::new();
    for v in order {
        let life = lifetimes[v].expect("filtered");
        let free = buffers
            .iter()
            .position(|&(busy_until, _)| busy_until < life.first);
        let b = free.unwrap_or_else(|| {
            buffers.push((0, 0));
            buffers.len() - 1
        });
        buffers[b] = (life.last, buffers[b].1.max(life.len));
        buffer_of[v] = Some(b);
    }
    (buffer_of, buffers.into_iter().map(|(_, len)| len).collect())
}

/// The training passes: the graph with each ReLU that alone reads the output of a layer that
/// [`Layer::trains_with_relu`] (convolution, batch normalisation, addition) computed inside it,
/// forward and backward, so that neither the value before the ReLU nor the ReLU's own passes
/// are needed; and the gradient buffers that follow from it. Without `fuse`, the graph as it
/// is (what a backward pass after an inference forward pass needs: every value's gradient).
#[derive(Debug)]
pub(super) struct TrainingPlan {
    /// For each node, the ReLU node it computes too: its output goes to the ReLU's value.
    pub relu_after: Vec<Option<usize>>,
    /// The ReLU nodes computed by the node before them.
    pub fused_away: Vec<bool>,
    /// The gradient buffer of each value (`None` for the input and the output, whose
    /// gradients nobody needs or the loss holds, and for a value fused away), and each
    /// buffer's floats per image.
    pub gradient_buffers: (Vec<Option<usize>>, Vec<usize>),
}

impl TrainingPlan {
    pub(super) fn new(
        nodes: &[Node],
        (trained, outputs): (&[bool], &[Value]),
        shapes: &[Shape],
        fuse: bool,
    ) -> Self {
        let values = nodes.len() + 1;
        let mut readers = vec![0usize; values];
        for node in nodes {
            for &v in &node.inputs {
                readers[v] += 1;
            }
        }
        let mut relu_after = vec![None; nodes.len()];
        let mut fused_away = vec![false; nodes.len()];
        for (r, node) in nodes.iter().enumerate().filter(|_| fuse) {
            let [v] = node.inputs[..] else { continue };
            let fusable = node.layer.spec() == LayerSpec::Relu
                && v > 0
                && readers[v] == 1
                && !outputs.contains(&v)
                && nodes[v - 1].layer.trains_with_relu();
            if fusable {
                relu_after[v - 1] = Some(r);
                fused_away[r] = true;
            }
        }
        // A value's gradient is first written by the backward pass of its last reader and
        // last read by that of the node that computes it. Node i's backward pass runs at step
        // `nodes - 1 - i`.
        let step = |node: usize| nodes.len() - 1 - node;
        let mut last_reader = vec![0; values];
        let mut producer: Vec<usize> = (0..values).map(|v| v.saturating_sub(1)).collect();
        for (i, node) in nodes.iter().enumerate() {
            if !trained[i] || fused_away[i] {
                continue;
            }
            for &v in &node.inputs {
                last_reader[v] = i;
            }
            if let Some(r) = relu_after[i] {
                producer[r + 1] = i;
            }
        }
        let lifetimes: Vec<Option<Lifetime>> = (0..values)
            .map(|v| {
                // The input's gradient is never needed, the output's is the loss's, the loss
                // does not depend on the nodes not trained, and nothing reads a value fused
                // away.
                let needed =
                    v != 0 && v != values - 1 && trained[v - 1] && relu_after[v - 1].is_none();
                needed.then(|| Lifetime {
                    first: step(last_reader[v]),
                    last: step(producer[v]),
                    len: shapes[v].len(),
                })
            })
            .collect();
        TrainingPlan {
            relu_after,
            fused_away,
            gradient_buffers: plan_buffers(&lifetimes),
        }
    }
}

/// The inference pass: the graph with the nodes that have one reader fused into it where a
/// kernel can compute both in one pass, its values in shared buffers. A residual addition
/// fused into the convolution before it adds onto the other summand in place: the sum takes
/// over that summand's buffer when nothing reads the summand afterwards.
#[derive(Debug)]
pub(super) struct InferencePlan {
    steps: Vec<Step>,
    /// The buffer of each value (`None` for the input, which the caller holds, and the output,
    /// which goes to the workspace's logits), and each buffer's floats per image.
    buffers: (Vec<Option<usize>>, Vec<usize>),
    /// The buffers that hold the network's other outputs when a pass is over, in the order of
    /// [`Network::extra_outputs`].
    extra_outputs: Vec<usize>,
}

#[derive(Debug)]
struct Step {
    /// The node computed, or (`folded`) a convolution with the batch normalisation after it
    /// folded in.
    node: usize,
    folded: Option<Box<dyn Layer>>,
    inputs: Vec<Value>,
    /// The value of the last node the step computes.
    output: Value,
    output_shape: Shape,
    fusion: Fusion,
    /// With `fusion.accumulate`: the addition's other summand, which the output holds before
    /// the step computes (in its buffer already, or copied there).
    residual: Option<Value>,
}

impl InferencePlan {
    pub(super) fn new(network: &Network) -> Self {
        let nodes = network.nodes();
        let values = nodes.len() + 1;
        let output_value = values - 1;
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); values];
        for (i, node) in nodes.iter().enumerate() {
            for &v in &node.inputs {
                readers[v].push(i);
            }
        }
        let mut is_output = vec![false; values];
        is_output[output_value] = true;
        for &v in network.extra_outputs() {
            is_output[v] = true;
        }
        // The node reading `v`, when it is the only one (and `v` is not an output).
        let only_reader = |v: Value| match readers[v][..] {
            [r] if !is_output[v] => Some(r),
            _ => None,
        };
        let spec = |i: usize| nodes[i].layer.spec();
        let mut fused_away = vec![false; nodes.len()];
        // Values that some step writes (the input is the caller's).
        let mut written = vec![false; values];
        written[0] = true;
        let mut steps = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if fused_away[i] {
                continue;
            }
            let mut output = i + 1;
            let mut folded = None;
            let mut fusion = Fusion::default();
            let conv = matches!(spec(i), LayerSpec::Conv2d(_));
            if conv {
                if let Some(bn) = only_reader(output).filter(|&r| spec(r) == LayerSpec::BatchNorm2d)
                {
                    folded = Some(fold_batch_norm(network, i, bn));
                    fused_away[bn] = true;
                    output = bn + 1;
                }
            }
            let mut residual = None;
            if conv {
                // An addition of two values whose other summand is already written: the
                // convolution adds onto it (in output order, so the sum's bits are the same).
                if let Some(add) = only_reader(output).filter(|&r| spec(r) == LayerSpec::Add) {
                    let other = match nodes[add].inputs[..] {
                        [a, b] if a == output => Some(b),
                        [a, b] if b == output => Some(a),
                        _ => None,
                    };
                    if let Some(other) = other.filter(|&v| v != output && written[v]) {
                        fusion.accumulate = true;
                        fused_away[add] = true;
                        residual = Some(other);
                        output = add + 1;
                    }
                }
            }
            if conv || matches!(spec(i), LayerSpec::Add | LayerSpec::BatchNorm2d) {
                if let Some(relu) = only_reader(output).filter(|&r| spec(r) == LayerSpec::Relu) {
                    fusion.relu = true;
                    fused_away[relu] = true;
                    output = relu + 1;
                    let shape = nodes[relu].layer.output_shape();
                    let pool = only_reader(output).filter(|&r| match spec(r) {
                        LayerSpec::MaxPool2d(w) => {
                            w.kernel == [2, 2]
                                && w.stride == [2, 2]
                                && w.padding == [0, 0]
                                && (!w.ceil_mode
                                    || (shape.height.is_multiple_of(2)
                                        && shape.width.is_multiple_of(2)))
                        }
                        _ => false,
                    });
                    if let Some(pool) = pool.filter(|_| conv && !fusion.accumulate) {
                        fusion.max_pool = true;
                        fused_away[pool] = true;
                        output = pool + 1;
                    }
                }
            }
            written[output] = true;
            steps.push(Step {
                node: i,
                folded,
                inputs: node.inputs.clone(),
                output,
                output_shape: nodes[output - 1].layer.output_shape(),
                fusion,
                residual,
            });
        }
        // A value lives from the step that writes it to the last step that reads it.
        let mut lifetimes: Vec<Option<Lifetime>> = vec![None; values];
        for (s, step) in steps.iter().enumerate() {
            if step.output != output_value {
                lifetimes[step.output] = Some(Lifetime {
                    first: s,
                    last: s,
                    len: step.output_shape.len(),
                });
            }
            for &v in step.inputs.iter().chain(&step.residual) {
                if let Some(life) = lifetimes[v].as_mut() {
                    life.last = s;
                }
            }
        }
        // The other outputs live to the end of the pass.
        for &v in network.extra_outputs() {
            if let Some(life) = lifetimes[v].as_mut() {
                life.last = steps.len();
            }
        }
        // A sum whose summand nothing reads later is written in the summand's buffer: one
        // lifetime for both (`owner`: the value whose lifetime stands for a value's buffer).
        let last_read: Vec<Option<usize>> = lifetimes.iter().map(|l| l.map(|l| l.last)).collect();
        let mut owner: Vec<Value> = (0..values).collect();
        for (s, step) in steps.iter().enumerate() {
            let Some(summand) = step.residual else {
                continue;
            };
            let in_place = lifetimes[step.output].is_some()
                && last_read[summand] == Some(s)
                && !step.inputs.contains(&summand);
            if in_place {
                let sum = lifetimes[step.output].take().expect("checked");
                let root = owner[summand];
                let life = lifetimes[root].as_mut().expect("a written value");
                life.last = life.last.max(sum.last);
                owner[step.output] = root;
            }
        }
        let (mut buffer_of, sizes) = super::plan_buffers(&lifetimes);
        for v in 0..values {
            if owner[v] != v {
                buffer_of[v] = buffer_of[owner[v]];
            }
        }
        let extra_outputs = network
            .extra_outputs()
            .iter()
            .map(|&v| buffer_of[v].expect("an output other than the last has a buffer"))
            .collect();
        InferencePlan {
            steps,
            buffers: (buffer_of, sizes),
            extra_outputs,
        }
    }

    /// The network's other outputs after [`InferencePlan::run`] in `workspace`.
    pub(super) fn extra_outputs<'w>(
        &self,
        workspace: &'w Workspace,
    ) -> impl Iterator<Item = &'w Tensor> + use<'w, '_> {
        self.extra_outputs.iter().map(|&b| &workspace.values[b])
    }

    /// Runs the plan on `input`; the output goes to `workspace.logits`.
    pub(super) fn run(&self, network: &Network, input: &Tensor, workspace: &mut Workspace) {
        let batch = input.batch();
        let (buffer_of, sizes) = &self.buffers;
        let Workspace {
            values,
            pass_scratch,
            logits,
            ..
        } = workspace;
        values.resize_with(sizes.len(), Tensor::empty);
        for step in &self.steps {
            let mut output = match buffer_of[step.output] {
                Some(b) => std::mem::take(&mut values[b]),
                None => std::mem::take(logits),
            };
            output.reshape(batch, step.output_shape);
            if let Some(summand) = step.residual {
                match buffer_of[summand] {
                    Some(b) if buffer_of[step.output] == Some(b) => {} // in place
                    Some(b) => output.data_mut().copy_from_slice(values[b].data()),
                    None => output.data_mut().copy_from_slice(input.data()),
                }
            }
            let inputs: Inputs<'_> = step
                .inputs
                .iter()
                .map(|&v| match buffer_of[v] {
                    Some(b) => &values[b],
                    None => input,
                })
                .collect();
            let layer = step
                .folded
                .as_deref()
                .unwrap_or(network.nodes()[step.node].layer());
            if step.fusion == Fusion::default() {
                layer.forward(&inputs, &mut output, Mode::Infer, pass_scratch);
            } else {
                let fused = layer.forward_fused(
                    &inputs,
                    &mut output,
                    Mode::Infer,
                    step.fusion,
                    pass_scratch,
                );
                assert!(fused, "planned fusions are the ones the layer computes");
            }
            drop(inputs);
            match buffer_of[step.output] {
                Some(b) => values[b] = output,
                None => *logits = output,
            }
        }
    }
}

/// Convolution node `conv` with batch normalisation node `bn` (its only reader) folded in, for
/// inference: per output channel `scale = weight / sqrt(running_var + eps)`, the kernel
/// multiplied by `scale`, the bias `(bias - running_mean) * scale + bn_bias`.
fn fold_batch_norm(network: &Network, conv: usize, bn: usize) -> Box<dyn Layer> {
    let nodes = network.nodes();
    let LayerSpec::Conv2d(config) = nodes[conv].layer.spec() else {
        unreachable!("a convolution");
    };
    let input = network.value_shape(nodes[conv].inputs[0]);
    let folded_spec = LayerSpec::Conv2d(crate::layers::Conv2dConfig {
        bias: true,
        ..config
    });
    let mut folded = folded_spec
        .build(nodes[conv].name(), &[input], network.isa)
        .expect("the convolution built before");
    let params = nodes[conv].layer.params();
    let (weight, bias) = (&params[0].value, params.get(1).map(|p| &p.value));
    let bn_params = nodes[bn].layer.params();
    let bn_buffers = nodes[bn].layer.buffers();
    let (gamma, beta) = (&bn_params[0].value, &bn_params[1].value);
    let (mean, variance) = (&bn_buffers[0].value, &bn_buffers[1].value);
    let per_channel = weight.len() / config.out_channels;
    let [new_weight, new_bias] = folded.params_mut() else {
        unreachable!("a weight and a bias");
    };
    for oc in 0..config.out_channels {
        let scale = gamma[oc] / (variance[oc] + EPSILON).sqrt();
        for (w, &original) in new_weight.value[oc * per_channel..][..per_channel]
            .iter_mut()
            .zip(&weight[oc * per_channel..][..per_channel])
        {
            *w = original * scale;
        }
        let b = bias.map_or(0.0, |b| b[oc]);
        new_bias.value[oc] = (b - mean[oc]) * scale + beta[oc];
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_shared_only_between_values_not_live_at_once() {
        let life = |first, last, len| Some(Lifetime { first, last, len });
        // A stack: value k lives from step k to step k + 1.
        let stack: Vec<_> = (0..6).map(|k| life(k, k + 1, 10 * (k + 1))).collect();
        let (buffer_of, sizes) = plan_buffers(&stack);
        assert_eq!(sizes.len(), 2);
        assert_eq!(buffer_of[0], buffer_of[2]);
        assert_ne!(buffer_of[0], buffer_of[1]);
        assert_eq!(sizes.iter().sum::<usize>(), 60 + 50);
        // A residual value, live across three others, keeps its buffer.
        let (buffer_of, _) = plan_buffers(&[
            life(0, 4, 1),
            life(1, 2, 1),
            life(2, 3, 1),
            life(3, 4, 1),
            None,
        ]);
        assert!(buffer_of[1..4].iter().all(|b| *b != buffer_of[0]));
        assert_eq!(buffer_of[4], None);
    }
}
