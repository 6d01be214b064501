//! Batch normalisation over the channels of `[N, C, H, W]` (PyTorch's `BatchNorm2d`; on flat
//! `[N, C]` inputs it is `BatchNorm1d`). While training, each channel is normalised with the
//! mean and (biased) variance of the batch over `N x H x W` values, and running statistics are
//! kept for inference: `running = (1 - momentum) * running + momentum * batch`, with the
//! unbiased variance, as PyTorch does. Then `y = weight * x_hat + bias`.

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
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
}

impl BatchNorm2d {
    pub fn new(shape: Shape) -> Self {
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
        }
    }

    /// Values per channel in a batch of `batch` images.
    fn count(&self, batch: usize) -> usize {
        batch * self.shape.plane()
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
        let input = inputs[0];
        let (channels, plane) = (self.shape.channels, self.shape.plane());
        let batch = input.batch();
        let [weight, bias] = &self.params;
        let recorded = match mode {
            Mode::Train => 3 * channels,
            Mode::Infer => 2 * channels,
        };
        scratch.buffer.clear();
        scratch.buffer.resize(recorded, 0.0);
        for c in 0..channels {
            let (mean, inverse_std) = match mode {
                Mode::Train => {
                    let (mut sum, mut squares) = (0.0f64, 0.0f64);
                    for n in 0..batch {
                        for &x in &input.plane(n, c)[..plane] {
                            sum += f64::from(x);
                            squares += f64::from(x) * f64::from(x);
                        }
                    }
                    let count = self.count(batch).max(1) as f64;
                    let mean = sum / count;
                    let variance = (squares / count - mean * mean).max(0.0);
                    let unbiased = variance * count / (count - 1.0).max(1.0);
                    let inverse_std = 1.0 / (variance as f32 + EPSILON).sqrt();
                    scratch.buffer[c] = mean as f32;
                    scratch.buffer[channels + c] = inverse_std;
                    scratch.buffer[2 * channels + c] = unbiased as f32;
                    (mean as f32, inverse_std)
                }
                Mode::Infer => {
                    let mean = self.buffers[0].value[c];
                    let inverse_std = 1.0 / (self.buffers[1].value[c] + EPSILON).sqrt();
                    scratch.buffer[c] = mean;
                    scratch.buffer[channels + c] = inverse_std;
                    (mean, inverse_std)
                }
            };
            let scale = weight.value[c] * inverse_std;
            let shift = bias.value[c] - mean * scale;
            for n in 0..batch {
                let start = (n * channels + c) * plane;
                let (src, dst) = (
                    &input.data()[start..start + plane],
                    &mut output.data_mut()[start..start + plane],
                );
                for (y, &x) in dst.iter_mut().zip(src) {
                    *y = x * scale + shift;
                }
            }
        }
    }

    /// With `x_hat = (x - mean) * inverse_std` and `M` values per channel:
    /// `dweight += sum(dy * x_hat)`, `dbias += sum(dy)`,
    /// `dx = weight * inverse_std / M * (M * dy - sum(dy) - x_hat * sum(dy * x_hat))` for the
    /// batch's statistics, `dx = weight * inverse_std * dy` for the running ones.
    fn backward(
        &self,
        mut pass: BackwardPass<'_, '_>,
        param_grads: &mut [Vec<f32>],
        scratch: &mut LayerScratch,
    ) {
        let (input, grad_output) = (pass.input(), pass.grad_output);
        let (channels, plane) = (self.shape.channels, self.shape.plane());
        let batch = input.batch();
        let (mean, inverse_std, batch_statistics) = statistics(scratch, channels);
        let count = self.count(batch) as f32;
        let mut grad_input = pass.grad_input();
        for c in 0..channels {
            let (mut sum_dy, mut sum_dy_xhat) = (0.0f64, 0.0f64);
            for n in 0..batch {
                let xs = input.plane(n, c);
                let dys = grad_output.plane(n, c);
                for (&x, &dy) in xs.iter().zip(dys) {
                    let x_hat = (x - mean[c]) * inverse_std[c];
                    sum_dy += f64::from(dy);
                    sum_dy_xhat += f64::from(dy * x_hat);
                }
            }
            param_grads[0][c] += sum_dy_xhat as f32;
            param_grads[1][c] += sum_dy as f32;
            if let Some(grad_input) = grad_input.as_deref_mut() {
                let scale = self.params[0].value[c] * inverse_std[c];
                if batch_statistics.is_none() {
                    for n in 0..batch {
                        let start = (n * channels + c) * plane;
                        let dys = grad_output.plane(n, c);
                        let dxs = &mut grad_input.data_mut()[start..start + plane];
                        for (dx, &dy) in dxs.iter_mut().zip(dys) {
                            *dx = scale * dy;
                        }
                    }
                    continue;
                }
                let factor = scale / count;
                let (sum_dy, sum_dy_xhat) = (sum_dy as f32, sum_dy_xhat as f32);
                for n in 0..batch {
                    let start = (n * channels + c) * plane;
                    let xs = input.plane(n, c);
                    let dys = grad_output.plane(n, c);
                    let dxs = &mut grad_input.data_mut()[start..start + plane];
                    for ((dx, &x), &dy) in dxs.iter_mut().zip(xs).zip(dys) {
                        let x_hat = (x - mean[c]) * inverse_std[c];
                        *dx = factor * (count * dy - sum_dy - x_hat * sum_dy_xhat);
                    }
                }
            }
        }
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
