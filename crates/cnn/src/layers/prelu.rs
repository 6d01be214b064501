//! The parametric ReLU, PyTorch's `nn.PReLU`: `x` for `x > 0`, else `a * x`, with the slope `a`
//! learnt, one per channel (`nn.PReLU(C)`) or one for all (`nn.PReLU()`). Its parameter is
//! `weight`, `[C]` or `[1]`, starting at PyTorch's 0.25.

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::kernels::for_each_item_run;
use crate::tensor::{Param, Shape, Tensor};

/// PyTorch's initial slope.
pub const INITIAL_SLOPE: f32 = 0.25;

#[derive(Debug)]
pub struct Prelu {
    shape: Shape,
    shared: bool,
    /// `weight`: one slope per channel, or one.
    params: [Param; 1],
}

impl Prelu {
    pub fn new(shared: bool, shape: Shape) -> Self {
        let slopes = if shared { 1 } else { shape.channels };
        let mut weight = Param::zeros("weight", vec![slopes]);
        weight.value.fill(INITIAL_SLOPE);
        Prelu {
            shape,
            shared,
            params: [weight],
        }
    }

    /// The slopes and the values each applies to, channel by channel of one sample.
    fn channels<'s>(&'s self, sample: &'s [f32]) -> impl Iterator<Item = (f32, &'s [f32])> + 's {
        let slopes = &self.params[0].value;
        sample
            .chunks(self.shape.height * self.shape.width)
            .enumerate()
            .map(move |(c, values)| (slopes[c % slopes.len()], values))
    }
}

impl Layer for Prelu {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Prelu {
            shared: self.shared,
        }
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

    fn initial_value(&self, _param: &str) -> Option<f32> {
        Some(INITIAL_SLOPE)
    }

    fn flops_per_image(&self) -> u64 {
        self.shape.len() as u64
    }

    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let input = inputs[0].sample(0)[cell.offset(self.shape)];
        let slopes = &self.params[0].value;
        let slope = slopes[cell.channel % slopes.len()];
        Some(Arithmetic::Function {
            name: "prelu",
            formula: "x if x > 0, else a * x (a learnt)",
            input,
            result: if input > 0.0 { input } else { slope * input },
        })
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        let input = inputs[0];
        let (plane, len) = (self.shape.plane(), self.shape.len());
        for_each_item_run(output.data_mut(), len, len, |first, samples| {
            for (n, out) in samples.chunks_mut(len).enumerate() {
                for (c, (slope, xs)) in self.channels(input.sample(first + n)).enumerate() {
                    for (y, &x) in out[c * plane..(c + 1) * plane].iter_mut().zip(xs) {
                        *y = if x > 0.0 { x } else { slope * x };
                    }
                }
            }
        });
    }

    fn backward(
        &self,
        mut pass: BackwardPass<'_, '_>,
        param_grads: &mut [Vec<f32>],
        _: &mut LayerScratch,
    ) {
        let (input, grad_output) = (pass.input(), pass.grad_output);
        let plane = self.shape.height * self.shape.width;
        let slopes = param_grads[0].len();
        // dL/da = sum of dy * x where x <= 0 (PyTorch's rule at exactly 0: the slope's side).
        for n in 0..input.batch() {
            let dys = grad_output.sample(n);
            for (c, (_, xs)) in self.channels(input.sample(n)).enumerate() {
                let dy = &dys[c * plane..(c + 1) * plane];
                let sum: f32 = xs
                    .iter()
                    .zip(dy)
                    .map(|(&x, &dy)| if x > 0.0 { 0.0 } else { x * dy })
                    .sum();
                param_grads[0][c % slopes] += sum;
            }
        }
        if let Some(grad_input) = pass.grad_input() {
            for n in 0..input.batch() {
                let (dys, dxs) = (grad_output.sample(n), grad_input.sample_mut(n));
                for (c, (slope, xs)) in self.channels(input.sample(n)).enumerate() {
                    let range = c * plane..(c + 1) * plane;
                    for ((dx, &dy), &x) in dxs[range.clone()].iter_mut().zip(&dys[range]).zip(xs) {
                        *dx = if x > 0.0 { dy } else { slope * dy };
                    }
                }
            }
        }
    }
}
