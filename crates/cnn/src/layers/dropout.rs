//! Dropout: while training, each value is zeroed with probability `rate` and the rest scaled by
//! `1 / (1 - rate)`, so inference (the identity) sees the same expected values. The mask comes
//! from [`LayerScratch::seed`], one per step, so a run replays exactly.

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::tensor::{Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug)]
pub struct Dropout {
    shape: Shape,
    rate: f32,
}

impl Dropout {
    pub fn new(rate: f32, shape: Shape) -> Result<Self, String> {
        if !(0.0..1.0).contains(&rate) {
            return Err(format!("the dropout rate must be in [0, 1), not {rate}"));
        }
        Ok(Dropout { shape, rate })
    }
}

impl Layer for Dropout {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Dropout { rate: self.rate }
    }

    fn output_shape(&self) -> Shape {
        self.shape
    }

    fn flops_per_image(&self) -> u64 {
        0
    }

    /// Any shape to the same shape. Training keeps the scaled mask in `scratch` for backward.
    /// At inference dropout passes every value on.
    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        Some(Arithmetic::Copy {
            input: 0,
            cell,
            result: inputs[0].sample(0)[cell.offset(inputs[0].shape())],
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
        if mode == Mode::Infer || self.rate == 0.0 {
            output.data_mut().copy_from_slice(input.data());
            scratch.buffer.clear();
            return;
        }
        let keep = 1.0 - self.rate;
        let mut rng = ChaCha8Rng::seed_from_u64(scratch.seed);
        scratch.buffer.clear();
        scratch.buffer.extend((0..input.data().len()).map(|_| {
            if rng.random::<f32>() < keep {
                1.0 / keep
            } else {
                0.0
            }
        }));
        for ((y, &x), &m) in output
            .data_mut()
            .iter_mut()
            .zip(input.data())
            .zip(&scratch.buffer)
        {
            *y = x * m;
        }
    }

    /// `dx = dy * mask` (the identity when the forward pass kept everything).
    fn backward(
        &self,
        mut pass: BackwardPass<'_, '_>,
        _: &mut [Vec<f32>],
        scratch: &mut LayerScratch,
    ) {
        let dy = pass.grad_output.data();
        if let Some(grad_input) = pass.grad_input() {
            if scratch.buffer.len() == dy.len() {
                for ((dx, &g), &m) in grad_input
                    .data_mut()
                    .iter_mut()
                    .zip(dy)
                    .zip(&scratch.buffer)
                {
                    *dx = g * m;
                }
            } else {
                grad_input.data_mut().copy_from_slice(dy);
            }
        }
    }
}
