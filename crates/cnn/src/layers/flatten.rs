//! Flatten: `[N, C, H, W]` viewed as `[N, C*H*W]`, in NCHW order, as PyTorch's `nn.Flatten`,
//! so dense weights trained here load into PyTorch unchanged.

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::tensor::{Shape, Tensor};

#[derive(Debug)]
pub struct Flatten {
    input: Shape,
}

impl Flatten {
    pub fn new(input: Shape) -> Self {
        Flatten { input }
    }
}

impl Layer for Flatten {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Flatten
    }

    fn output_shape(&self) -> Shape {
        Shape::flat(self.input.len())
    }

    fn flops_per_image(&self) -> u64 {
        0
    }

    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let from = Cell::at(cell.channel, self.input);
        Some(Arithmetic::Copy {
            input: 0,
            cell: from,
            result: inputs[0].sample(0)[cell.channel],
        })
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        super::reshape::copy_values(inputs, output);
    }

    fn backward(&self, pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        super::reshape::copy_gradient(pass);
    }
}
