//! Addition of two or more values of one shape: a residual connection adds a block's input to
//! its output (PyTorch's `out = out + identity` in a ResNet block).

use super::{BackwardPass, Fusion, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::kernels::{for_each_item_run, relu_gradient};
use crate::tensor::{Shape, Tensor};

/// Values handled as one unit of parallel work.
const BLOCK: usize = 4096;

#[derive(Debug)]
pub struct Add {
    shape: Shape,
    inputs: usize,
}

impl Add {
    pub fn new(inputs: &[Shape]) -> Result<Self, String> {
        let (&first, rest) = inputs
            .split_first()
            .ok_or("an addition needs at least two inputs")?;
        if rest.is_empty() {
            return Err("an addition needs at least two inputs".into());
        }
        if let Some(other) = rest.iter().find(|&&s| s != first) {
            return Err(format!("its inputs differ in shape: {first} and {other}"));
        }
        Ok(Add {
            shape: first,
            inputs: inputs.len(),
        })
    }

    /// `output = sum(inputs)`, then `max(0, ·)` with `relu`.
    fn sum(&self, inputs: &[&Tensor], output: &mut Tensor, relu: bool) {
        for_each_item_run(
            output.data_mut(),
            BLOCK,
            BLOCK * inputs.len(),
            |first, out| {
                let range = first * BLOCK..first * BLOCK + out.len();
                out.copy_from_slice(&inputs[0].data()[range.clone()]);
                for input in &inputs[1..] {
                    for (y, &x) in out.iter_mut().zip(&input.data()[range.clone()]) {
                        *y += x;
                    }
                }
                if relu {
                    out.iter_mut().for_each(|y| *y = y.max(0.0));
                }
            },
        );
    }
}

impl Layer for Add {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Add
    }

    fn output_shape(&self) -> Shape {
        self.shape
    }

    fn flops_per_image(&self) -> u64 {
        ((self.inputs - 1) * self.shape.len()) as u64
    }

    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let terms: Vec<f32> = inputs
            .iter()
            .map(|t| t.sample(0)[cell.offset(self.shape)])
            .collect();
        let result = terms.iter().map(|&t| f64::from(t)).sum::<f64>() as f32;
        Some(Arithmetic::Sum { terms, result })
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        self.sum(inputs, output, false);
    }

    /// A ReLU after the sum (a ResNet block's last step), in the same pass.
    fn forward_fused(
        &self,
        inputs: &[&Tensor],
        output: &mut Tensor,
        _: Mode,
        fused: Fusion,
        _: &mut LayerScratch,
    ) -> bool {
        if fused.max_pool || fused.accumulate {
            return false;
        }
        self.sum(inputs, output, fused.relu);
        true
    }

    fn trains_with_relu(&self) -> bool {
        true
    }

    /// Every input receives the output's gradient (after a fused ReLU, where the sum was
    /// positive).
    fn backward(&self, pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        let (dy, y) = (pass.grad_output.data(), pass.output.data());
        for grad_input in pass.grad_inputs.iter_mut().flatten() {
            let grad = grad_input.data_mut();
            if pass.relu {
                relu_gradient(dy, y, grad);
            } else {
                for_each_item_run(grad, BLOCK, BLOCK, |first, grad| {
                    grad.copy_from_slice(&dy[first * BLOCK..][..grad.len()]);
                });
            }
        }
    }
}
