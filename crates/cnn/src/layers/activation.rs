//! ReLU, f(x) = max(0, x): keeps the matches, drops the anti-matches.

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::kernels::for_each_item_run;
use crate::tensor::{Shape, Tensor};

/// Values handled as one unit of parallel work.
const BLOCK: usize = 4096;

#[derive(Debug)]
pub struct Relu {
    shape: Shape,
}

impl Relu {
    pub fn new(shape: Shape) -> Self {
        Relu { shape }
    }
}

impl Layer for Relu {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Relu
    }

    fn input_shape(&self) -> Shape {
        self.shape
    }

    fn output_shape(&self) -> Shape {
        self.shape
    }

    fn flops_per_image(&self) -> u64 {
        self.shape.len() as u64
    }

    /// Any shape to the same shape.
    fn forward(&self, input: &Tensor, output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        for_each_item_run(output.data_mut(), BLOCK, BLOCK, |first, out| {
            let x = &input.data()[first * BLOCK..first * BLOCK + out.len()];
            for (y, &x) in out.iter_mut().zip(x) {
                *y = x.max(0.0);
            }
        });
    }

    /// The gradient passes where the input was positive (at exactly 0 it is 0, as in PyTorch).
    fn backward(&self, pass: BackwardPass<'_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        if let Some(grad_input) = pass.grad_input {
            for_each_item_run(grad_input.data_mut(), BLOCK, BLOCK, |first, grad| {
                let range = first * BLOCK..first * BLOCK + grad.len();
                let values = pass.input.data()[range.clone()].iter();
                for ((dx, &x), &dy) in grad
                    .iter_mut()
                    .zip(values)
                    .zip(&pass.grad_output.data()[range])
                {
                    *dx = if x > 0.0 { dy } else { 0.0 };
                }
            });
        }
    }
}
