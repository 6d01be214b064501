//! Max and average pooling: shrink each feature map, keeping "the feature is somewhere here".

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{pool, Arithmetic, Cell, Window};
use crate::kernels::pool::{pool_backward, pool_forward, PoolGeometry, PoolKind};
use crate::kernels::simd::Isa;
use crate::tensor::{Shape, Tensor};
use crate::window::Window2d;

#[derive(Debug)]
pub struct Pool2d {
    kind: PoolKind,
    geometry: PoolGeometry,
    isa: Isa,
}

impl Pool2d {
    pub fn new(kind: PoolKind, window: Window2d, input: Shape, isa: Isa) -> Result<Self, String> {
        window.check()?;
        // A window may hang over the border, but never lie wholly in the padding: it would
        // pool nothing. PyTorch enforces the same bound.
        if window.padding[0] > window.kernel[0] / 2 || window.padding[1] > window.kernel[1] / 2 {
            return Err("padding must be at most half the pooling window".into());
        }
        let [height, width] = window
            .output_size([input.height, input.width])
            .ok_or_else(|| {
                format!(
                    "a {}x{} pooling window does not fit",
                    window.kernel[0], window.kernel[1]
                )
            })?;
        let output = Shape::new(input.channels, height, width);
        crate::limits::image_values(output)?;
        Ok(Pool2d {
            kind,
            geometry: PoolGeometry {
                input,
                output,
                window,
            },
            isa,
        })
    }
}

impl Layer for Pool2d {
    fn spec(&self) -> LayerSpec {
        match self.kind {
            PoolKind::Max => LayerSpec::MaxPool2d(self.geometry.window),
            PoolKind::Average => LayerSpec::AvgPool2d(self.geometry.window),
        }
    }

    fn output_shape(&self) -> Shape {
        self.geometry.output
    }

    fn flops_per_image(&self) -> u64 {
        let [kh, kw] = self.geometry.window.kernel;
        (self.geometry.output.len() * kh * kw) as u64
    }

    /// `[N, C, H, W]` to `[N, C, OH, OW]`.
    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let PoolGeometry { input, window, .. } = self.geometry;
        let at = |out: usize, k: usize, axis: usize, len: usize| {
            let i = (out * window.stride[axis] + k) as isize - window.padding[axis] as isize;
            (0..len as isize).contains(&i).then_some(i as usize)
        };
        let [kh, kw] = window.kernel;
        let mut cells = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            for kx in 0..kw {
                let y = at(cell.y, ky, 0, input.height);
                let x = at(cell.x, kx, 1, input.width);
                cells.push(y.zip(x).map(|(y, x)| Cell {
                    channel: cell.channel,
                    y,
                    x,
                }));
            }
        }
        let window = Window::gather((0, inputs[0]), Some(cell.channel), (kh, kw), cells, vec![]);
        Some(pool(self.kind, window))
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        pool_forward(self.isa, self.kind, &self.geometry, inputs[0], output);
    }

    fn backward(&self, mut pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        let (input, grad_output) = (pass.input(), pass.grad_output);
        if let Some(grad_input) = pass.grad_input() {
            pool_backward(
                self.isa,
                self.kind,
                &self.geometry,
                input,
                grad_output,
                grad_input,
            );
        }
    }
}
