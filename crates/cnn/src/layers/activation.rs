//! ReLU, f(x) = max(0, x): keeps the matches, drops the anti-matches.

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::tensor::{Shape, Tensor};

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
        for (y, &x) in output.data_mut().iter_mut().zip(input.data()) {
            *y = x.max(0.0);
        }
    }

    /// The gradient passes where the input was positive (at exactly 0 it is 0, as in PyTorch).
    fn backward(&self, pass: BackwardPass<'_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        if let Some(grad_input) = pass.grad_input {
            let values = pass.input.data().iter().zip(pass.grad_output.data());
            for (dx, (&x, &dy)) in grad_input.data_mut().iter_mut().zip(values) {
                *dx = if x > 0.0 { dy } else { 0.0 };
            }
        }
    }
}
