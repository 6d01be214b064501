//! Concatenation along the channels of values with the same height and width (Inception's
//! branches, DenseNet's growing features): PyTorch's `torch.cat(..., dim=1)`.

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::tensor::{Shape, Tensor};

#[derive(Debug)]
pub struct Concat {
    inputs: Vec<Shape>,
    output: Shape,
}

impl Concat {
    pub fn new(inputs: &[Shape]) -> Result<Self, String> {
        let first = *inputs.first().ok_or("a concatenation needs inputs")?;
        if let Some(other) = inputs
            .iter()
            .find(|s| (s.height, s.width) != (first.height, first.width))
        {
            return Err(format!(
                "its inputs differ in height or width: {first} and {other}"
            ));
        }
        let channels = inputs.iter().map(|s| s.channels).sum();
        Ok(Concat {
            inputs: inputs.to_vec(),
            output: Shape::new(channels, first.height, first.width),
        })
    }
}

impl Layer for Concat {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Concat
    }

    fn output_shape(&self) -> Shape {
        self.output
    }

    fn flops_per_image(&self) -> u64 {
        0
    }

    /// Per image, each input's channels after the previous input's.
    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let mut channel = cell.channel;
        for (input, shape) in self.inputs.iter().enumerate() {
            if channel < shape.channels {
                let from = Cell { channel, ..cell };
                return Some(Arithmetic::Copy {
                    input,
                    cell: from,
                    result: inputs[input].sample(0)[from.offset(*shape)],
                });
            }
            channel -= shape.channels;
        }
        None
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        let out_len = self.output.len();
        for n in 0..output.batch() {
            let mut at = n * out_len;
            for (input, shape) in inputs.iter().zip(&self.inputs) {
                output.data_mut()[at..at + shape.len()].copy_from_slice(input.sample(n));
                at += shape.len();
            }
        }
    }

    /// Each input receives its channels of the output's gradient.
    fn backward(&self, pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        let out_len = self.output.len();
        let mut offset = 0;
        for (grad_input, shape) in pass.grad_inputs.iter_mut().zip(&self.inputs) {
            if let Some(grad_input) = grad_input {
                for n in 0..pass.grad_output.batch() {
                    let at = n * out_len + offset;
                    grad_input
                        .sample_mut(n)
                        .copy_from_slice(&pass.grad_output.data()[at..at + shape.len()]);
                }
            }
            offset += shape.len();
        }
    }
}
