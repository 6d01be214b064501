//! Global average pooling: each feature map's mean, `[N, C, H, W]` to `[N, C]`. PyTorch's
//! `nn.AdaptiveAvgPool2d(1)` followed by a flatten (which has no parameters, so the module
//! indices still match when a `flatten` follows).

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::tensor::{Shape, Tensor};

#[derive(Debug)]
pub struct GlobalAvgPool {
    input: Shape,
}

impl GlobalAvgPool {
    pub fn new(input: Shape) -> Self {
        GlobalAvgPool { input }
    }
}

impl Layer for GlobalAvgPool {
    fn spec(&self) -> LayerSpec {
        LayerSpec::GlobalAvgPool
    }

    fn input_shape(&self) -> Shape {
        self.input
    }

    fn output_shape(&self) -> Shape {
        Shape::flat(self.input.channels)
    }

    fn flops_per_image(&self) -> u64 {
        self.input.len() as u64
    }

    /// `[N, C, H, W]` to `[N, C]`: `y = sum(x) / (H * W)`.
    fn forward(&self, input: &Tensor, output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        let plane = self.input.plane();
        for (y, maps) in output
            .data_mut()
            .iter_mut()
            .zip(input.data().chunks_exact(plane))
        {
            *y = maps.iter().sum::<f32>() / plane as f32;
        }
    }

    /// Each input pixel receives its map's gradient divided by `H * W`.
    fn backward(&self, pass: BackwardPass<'_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        if let Some(grad_input) = pass.grad_input {
            let plane = self.input.plane();
            let scale = 1.0 / plane as f32;
            for (dxs, &dy) in grad_input
                .data_mut()
                .chunks_exact_mut(plane)
                .zip(pass.grad_output.data())
            {
                dxs.fill(dy * scale);
            }
        }
    }
}
