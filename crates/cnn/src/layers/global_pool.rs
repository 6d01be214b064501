//! Global pooling: each feature map's mean or maximum, `[N, C, H, W]` to `[N, C]`. PyTorch's
//! `nn.AdaptiveAvgPool2d(1)` (or `AdaptiveMaxPool2d(1)`) followed by a flatten (which has no
//! parameters, so the module indices still match when a `flatten` follows).

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{pool, Arithmetic, Cell, Window};
use crate::kernels::pool::PoolKind;
use crate::tensor::{Shape, Tensor};

#[derive(Debug)]
pub struct GlobalPool {
    kind: PoolKind,
    input: Shape,
}

impl GlobalPool {
    pub fn new(kind: PoolKind, input: Shape) -> Self {
        GlobalPool { kind, input }
    }
}

/// Index of the first largest value (the same rule as max pooling's windows).
/// `values` reduced by `combine` in eight running results (which the compiler keeps in one
/// vector register) rather than one: a map of 256 values costs 32 dependent steps, not 256.
fn in_lanes(values: &[f32], start: f32, combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [start; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder().iter().copied().fold(start, &combine);
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = combine(*lane, v);
        }
    }
    lanes.into_iter().fold(rest, combine)
}

fn first_max(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

impl Layer for GlobalPool {
    fn spec(&self) -> LayerSpec {
        match self.kind {
            PoolKind::Average => LayerSpec::GlobalAvgPool,
            PoolKind::Max => LayerSpec::GlobalMaxPool,
        }
    }

    fn output_shape(&self) -> Shape {
        Shape::flat(self.input.channels)
    }

    fn flops_per_image(&self) -> u64 {
        self.input.len() as u64
    }

    /// `[N, C, H, W]` to `[N, C]`: `y = sum(x) / (H * W)`, or `max(x)`.
    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let (height, width) = (self.input.height, self.input.width);
        let cells = (0..height * width)
            .map(|i| {
                Some(Cell {
                    channel: cell.channel,
                    y: i / width,
                    x: i % width,
                })
            })
            .collect();
        let window = Window::gather(
            (0, inputs[0]),
            Some(cell.channel),
            (height, width),
            cells,
            vec![],
        );
        Some(pool(self.kind, window))
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        let plane = self.input.plane();
        for (y, maps) in output
            .data_mut()
            .iter_mut()
            .zip(inputs[0].data().chunks_exact(plane))
        {
            *y = match self.kind {
                PoolKind::Average => in_lanes(maps, 0.0, |a, b| a + b) / plane as f32,
                PoolKind::Max => in_lanes(maps, f32::NEG_INFINITY, f32::max),
            };
        }
    }

    /// Average: each input pixel receives its map's gradient divided by `H * W`. Max: the
    /// map's first largest pixel receives all of it.
    fn backward(&self, mut pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        let (input, grad_output, kind) = (pass.input(), pass.grad_output, self.kind);
        if let Some(grad_input) = pass.grad_input() {
            let plane = self.input.plane();
            for ((dxs, xs), &dy) in grad_input
                .data_mut()
                .chunks_exact_mut(plane)
                .zip(input.data().chunks_exact(plane))
                .zip(grad_output.data())
            {
                match kind {
                    PoolKind::Average => dxs.fill(dy / plane as f32),
                    PoolKind::Max => {
                        dxs.fill(0.0);
                        dxs[first_max(xs)] = dy;
                    }
                }
            }
        }
    }
}
