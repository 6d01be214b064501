//! The same values in the same order as maps of another shape (PyTorch's `x.reshape(-1, C, H,
//! W)`, ONNX's `Reshape` that keeps the batch first). Flattening to features is [`super::Flatten`].

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::tensor::{Shape, Tensor};

#[derive(Debug)]
pub struct Reshape {
    input: Shape,
    output: Shape,
}

impl Reshape {
    pub fn new(output: [usize; 3], input: Shape) -> Result<Self, String> {
        let output = Shape::new(output[0], output[1], output[2]);
        if output.len() != input.len() {
            return Err(format!(
                "{output} holds {} values, the input {}",
                output.len(),
                input.len()
            ));
        }
        Ok(Reshape { input, output })
    }
}

impl Layer for Reshape {
    fn spec(&self) -> LayerSpec {
        let Shape {
            channels,
            height,
            width,
        } = self.output;
        LayerSpec::Reshape {
            shape: [channels, height, width],
        }
    }

    fn output_shape(&self) -> Shape {
        self.output
    }

    fn flops_per_image(&self) -> u64 {
        0
    }

    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let offset = cell.offset(self.output);
        Some(Arithmetic::Copy {
            input: 0,
            cell: Cell::at(offset, self.input),
            result: inputs[0].sample(0)[offset],
        })
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        copy_values(inputs, output);
    }

    fn backward(&self, pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        copy_gradient(pass);
    }
}

/// The forward pass of an op that keeps the values as they are (in another shape).
pub(super) fn copy_values(inputs: &[&Tensor], output: &mut Tensor) {
    output.data_mut().copy_from_slice(inputs[0].data());
}

/// Its backward pass: the gradient as it is.
pub(super) fn copy_gradient(mut pass: BackwardPass<'_, '_>) {
    let grad_output = pass.grad_output;
    if let Some(grad_input) = pass.grad_input() {
        grad_input.data_mut().copy_from_slice(grad_output.data());
    }
}
