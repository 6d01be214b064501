//! Padding of each feature map, as PyTorch's `F.pad` and ONNX's `Pad`: with a constant (zeros by
//! default), with copies of the edge pixels (`replicate`, ONNX's `edge`) or with the mirror
//! image (`reflect`). Also how the ONNX import runs convolutions and pools whose padding differs
//! before and after an axis: this node pads, the op after it does not.

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::kernels::for_each_item_run;
use crate::tensor::{Shape, Tensor};
use serde::{Deserialize, Serialize};

/// What fills the border.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum PadMode {
    Constant {
        value: f32,
    },
    /// The nearest edge pixel.
    Edge,
    /// The pixels inside, mirrored about the edge pixel (which is not repeated).
    Reflect,
}

/// Pixels added `[top, left, bottom, right]`.
pub type Pads = [usize; 4];

#[derive(Debug)]
pub struct Pad {
    input: Shape,
    pads: Pads,
    mode: PadMode,
}

impl Pad {
    pub fn new(pads: Pads, mode: PadMode, input: Shape) -> Result<Self, String> {
        let [top, left, bottom, right] = pads;
        if mode == PadMode::Reflect
            && (top.max(bottom) >= input.height || left.max(right) >= input.width)
        {
            return Err("reflection needs padding smaller than the maps".into());
        }
        if let PadMode::Constant { value } = mode {
            if !value.is_finite() {
                return Err("the padding value must be finite".into());
            }
        }
        let too_large = [top, left, bottom, right]
            .iter()
            .any(|&p| p > crate::limits::MAX_WINDOW);
        if too_large {
            return Err(format!(
                "padding of more than {} pixels",
                crate::limits::MAX_WINDOW
            ));
        }
        Ok(Pad { input, pads, mode })
    }

    /// The input row (or column) output position `i` copies along an axis of `size` pixels
    /// with `before` added before it; `None` for the constant.
    fn source(&self, i: usize, before: usize, size: usize) -> Option<usize> {
        let i = i as isize - before as isize;
        let last = size as isize - 1;
        let inside = (0..=last).contains(&i);
        let j = match self.mode {
            PadMode::Constant { .. } if !inside => return None,
            PadMode::Constant { .. } => i,
            PadMode::Edge => i.clamp(0, last),
            PadMode::Reflect if i < 0 => -i,
            PadMode::Reflect if i > last => 2 * last - i,
            PadMode::Reflect => i,
        };
        Some(j as usize)
    }

    /// The source of each output row and column.
    fn sources(&self) -> (Vec<Option<usize>>, Vec<Option<usize>>) {
        let out = self.output_shape();
        let rows = (0..out.height)
            .map(|y| self.source(y, self.pads[0], self.input.height))
            .collect();
        let columns = (0..out.width)
            .map(|x| self.source(x, self.pads[1], self.input.width))
            .collect();
        (rows, columns)
    }
}

impl Layer for Pad {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Pad {
            pads: self.pads,
            mode: self.mode,
        }
    }

    fn output_shape(&self) -> Shape {
        let [top, left, bottom, right] = self.pads;
        Shape::new(
            self.input.channels,
            self.input.height + top + bottom,
            self.input.width + left + right,
        )
    }

    fn flops_per_image(&self) -> u64 {
        0
    }

    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let (rows, columns) = self.sources();
        let value = match self.mode {
            PadMode::Constant { value } => value,
            _ => 0.0,
        };
        Some(match (rows[cell.y], columns[cell.x]) {
            (Some(y), Some(x)) => {
                let from = Cell {
                    channel: cell.channel,
                    y,
                    x,
                };
                Arithmetic::Copy {
                    input: 0,
                    cell: from,
                    result: inputs[0].sample(0)[from.offset(self.input)],
                }
            }
            _ => Arithmetic::Function {
                name: "pad",
                formula: "the padding value",
                input: value,
                result: value,
            },
        })
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        let input = inputs[0];
        let (rows, columns) = self.sources();
        let fill = match self.mode {
            PadMode::Constant { value } => value,
            _ => 0.0,
        };
        let (in_plane, out) = (self.input.plane(), self.output_shape());
        for_each_item_run(output.data_mut(), out.len(), out.len(), |first, samples| {
            for (k, y) in samples.chunks_mut(out.len()).enumerate() {
                let x = input.sample(first + k);
                for (x, y) in x.chunks(in_plane).zip(y.chunks_mut(out.plane())) {
                    for (row, y) in rows.iter().zip(y.chunks_mut(out.width)) {
                        let Some(row) = row else {
                            y.fill(fill);
                            continue;
                        };
                        let x = &x[row * self.input.width..(row + 1) * self.input.width];
                        // The row itself in one copy, then the padding on either side.
                        let (left, width) = (self.pads[1], self.input.width);
                        y[left..left + width].copy_from_slice(x);
                        let sides = (0..left).chain(left + width..y.len());
                        for i in sides {
                            y[i] = columns[i].map_or(fill, |c| x[c]);
                        }
                    }
                }
            }
        });
    }

    /// Each input pixel gets the gradient of every output pixel that copies it.
    fn backward(&self, mut pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        let grad_output = pass.grad_output;
        let Some(grad_input) = pass.grad_input() else {
            return;
        };
        grad_input.data_mut().fill(0.0);
        let (rows, columns) = self.sources();
        let (in_plane, out) = (self.input.plane(), self.output_shape());
        for n in 0..grad_output.batch() {
            let (dy, dx) = (grad_output.sample(n), grad_input.sample_mut(n));
            for (dx, dy) in dx.chunks_mut(in_plane).zip(dy.chunks(out.plane())) {
                for (row, dy) in rows.iter().zip(dy.chunks(out.width)) {
                    let Some(row) = row else { continue };
                    let dx = &mut dx[row * self.input.width..(row + 1) * self.input.width];
                    for (column, &dy) in columns.iter().zip(dy) {
                        if let Some(c) = column {
                            dx[*c] += dy;
                        }
                    }
                }
            }
        }
    }
}
