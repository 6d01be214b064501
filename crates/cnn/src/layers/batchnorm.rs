//! Batch normalisation over the channels of `[N, C, H, W]` (PyTorch's `BatchNorm2d`; on flat
//! `[N, C]` inputs it is `BatchNorm1d`). While training, each channel is normalised with the
//! mean and (biased) variance of the batch over `N x H x W` values, and running statistics are
//! kept for inference: `running = (1 - momentum) * running + momentum * batch`, with the
//! unbiased variance, as PyTorch does. Then `y = weight * x_hat + bias`.

use super::{BackwardPass, Fusion, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::kernels::batchnorm::{self, BatchNormGrads, Statistics};
use crate::kernels::simd::Isa;
use crate::tensor::{Param, Shape, Tensor};

pub const EPSILON: f32 = 1e-5;
pub const MOMENTUM: f32 = 0.1;

#[derive(Debug)]
pub struct BatchNorm2d {
    shape: Shape,
    /// `weight [C]`, `bias [C]`.
    params: [Param; 2],
    /// `running_mean [C]`, `running_var [C]`, `num_batches_tracked []` (a count, stored as
    /// PyTorch's int64).
    buffers: [Param; 3],
    isa: Isa,
}

impl BatchNorm2d {
    pub fn new(shape: Shape, isa: Isa) -> Self {
        let channels = shape.channels;
        let mut weight = Param::zeros("weight", vec![channels]);
        weight.value.fill(1.0);
        let mut running_var = Param::zeros("running_var", vec![channels]);
        running_var.value.fill(1.0);
        BatchNorm2d {
            shape,
            params: [weight, Param::zeros("bias", vec![channels])],
            buffers: [
                Param::zeros("running_mean", vec![channels]),
                running_var,
                Param::zeros("num_batches_tracked", vec![]),
            ],
            isa,
        }
    }

    /// Training: batch statistics, left in `scratch` for backward and for the running
    /// statistics. Inference: the running statistics. Then `max(0, ·)` with `relu`.
    fn normalize(
        &self,
        input: &Tensor,
        output: (&mut Tensor, bool),
        mode: Mode,
        scratch: &mut LayerScratch,
    ) {
        let channels = self.shape.channels;
        let [weight, bias] = &self.params;
        let affine = (&weight.value[..], &bias.value[..]);
        let recorded = match mode {
            Mode::Train => 3 * channels,
            Mode::Infer => 2 * channels,
        };
        scratch.buffer.clear();
        scratch.buffer.resize(recorded, 0.0);
        let (mean, rest) = scratch.buffer.split_at_mut(channels);
        let (inverse_std, unbiased) = rest.split_at_mut(channels);
        match mode {
            Mode::Train => batchnorm::forward_with_batch_statistics(
                self.isa,
                input,
                affine,
                EPSILON,
                output,
                [mean, inverse_std, unbiased],
            ),
            Mode::Infer => {
                mean.copy_from_slice(&self.buffers[0].value);
                for (s, &variance) in inverse_std.iter_mut().zip(&self.buffers[1].value) {
                    *s = 1.0 / (variance + EPSILON).sqrt();
                }
                let statistics = Statistics { mean, inverse_std };
                batchnorm::forward_with_statistics(self.isa, input, affine, statistics, output);
            }
        }
    }
}

/// Scratch layout after a forward pass: `[mean C][inverse std C]`, then after a training pass
/// `[unbiased var C]` (the statistics of the batch). An inference pass leaves only the first
/// two, of the running statistics: its backward pass (for attributions) treats them as
/// constants, and no running statistics are updated from it.
fn statistics(scratch: &LayerScratch, channels: usize) -> (&[f32], &[f32], Option<&[f32]>) {
    let (mean, rest) = scratch.buffer.split_at(channels);
    let (inverse_std, rest) = rest.split_at(channels);
    (mean, inverse_std, rest.get(..channels))
}

impl Layer for BatchNorm2d {
    fn spec(&self) -> LayerSpec {
        LayerSpec::BatchNorm2d
    }

    fn output_shape(&self) -> Shape {
        self.shape
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    fn buffers(&self) -> &[Param] {
        &self.buffers
    }

    fn buffers_mut(&mut self) -> &mut [Param] {
        &mut self.buffers
    }

    fn flops_per_image(&self) -> u64 {
        2 * self.shape.len() as u64
    }

    /// `[N, C, H, W]` to the same shape. Training: batch statistics, left in `scratch` for
    /// backward and for the running statistics. Inference: the running statistics.
    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let c = cell.channel;
        let input = inputs[0].sample(0)[cell.offset(self.shape)];
        let (mean, variance) = (self.buffers[0].value[c], self.buffers[1].value[c]);
        let (weight, bias) = (self.params[0].value[c], self.params[1].value[c]);
        let normalized = (f64::from(input) - f64::from(mean))
            / (f64::from(variance) + f64::from(EPSILON)).sqrt();
        Some(Arithmetic::Normalize {
            input,
            mean,
            variance,
            epsilon: EPSILON,
            weight,
            bias,
            result: (normalized * f64::from(weight) + f64::from(bias)) as f32,
        })
    }

    fn forward(
        &self,
        inputs: &[&Tensor],
        output: &mut Tensor,
        mode: Mode,
        scratch: &mut LayerScratch,
    ) {
        self.normalize(inputs[0], (output, false), mode, scratch);
    }

    /// A ReLU after the normalisation, as each value is written.
    fn forward_fused(
        &self,
        inputs: &[&Tensor],
        output: &mut Tensor,
        mode: Mode,
        fused: Fusion,
        scratch: &mut LayerScratch,
    ) -> bool {
        if fused != Fusion::RELU {
            return false;
        }
        self.normalize(inputs[0], (output, true), mode, scratch);
        true
    }

    fn trains_with_relu(&self) -> bool {
        true
    }

    /// See [`batchnorm::backward`]: the batch's statistics after a training pass, constants
    /// after an inference one.
    fn backward(
        &self,
        mut pass: BackwardPass<'_, '_>,
        param_grads: &mut [Vec<f32>],
        scratch: &mut LayerScratch,
    ) {
        let (input, grad_output) = (pass.input(), pass.grad_output);
        let relu_output = pass.relu.then_some(pass.output);
        let (mean, inverse_std, batch_statistics) = statistics(scratch, self.shape.channels);
        let [grad_weight, grad_bias] = param_grads else {
            unreachable!("a weight and a bias")
        };
        batchnorm::backward(
            self.isa,
            input,
            (grad_output, relu_output),
            &self.params[0].value,
            (Statistics { mean, inverse_std }, batch_statistics.is_some()),
            BatchNormGrads {
                weight: grad_weight,
                bias: grad_bias,
                input: pass.grad_input(),
            },
        );
    }

    fn update_running_statistics(&mut self, scratch: &LayerScratch) {
        let channels = self.shape.channels;
        if scratch.buffer.len() < 3 * channels {
            return;
        }
        let (mean, _, Some(unbiased)) = statistics(scratch, channels) else {
            return;
        };
        let [running_mean, running_var, tracked] = &mut self.buffers;
        for c in 0..channels {
            running_mean.value[c] = (1.0 - MOMENTUM) * running_mean.value[c] + MOMENTUM * mean[c];
            running_var.value[c] = (1.0 - MOMENTUM) * running_var.value[c] + MOMENTUM * unbiased[c];
        }
        tracked.value[0] += 1.0;
    }
}
