//! Max and average pooling over each channel plane, with the window walk of [`Window2d`].

use super::for_each_item_run;
use crate::tensor::{Shape, Tensor};
use crate::window::{Window2d, WindowSpan};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// Keeps the largest value of each window: "the feature is somewhere here".
    Max,
    /// The mean of the pixels the window covers inside the input (padding is not counted).
    Average,
}

/// Shapes of one pooling: `input` `C x H x W`, `output` `C x OH x OW` (same channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub input: Shape,
    pub output: Shape,
    pub window: Window2d,
}

impl PoolGeometry {
    fn walk(&self, visit: impl FnMut(usize, usize, WindowSpan, WindowSpan)) {
        self.window.for_each_window(
            [self.input.height, self.input.width],
            [self.output.height, self.output.width],
            visit,
        );
    }
}

/// Index into the plane of the first largest value of a window (first in row-major order, the
/// same rule in forward and backward, so the gradient goes where the forward value came from).
#[inline]
fn argmax(plane: &[f32], width: usize, rows: WindowSpan, cols: WindowSpan) -> usize {
    if rows.len() == 2 && cols.len() == 2 {
        // The common 2x2 window, unrolled; same first-maximum rule.
        let top = rows.start * width + cols.start;
        let mut best = top;
        for candidate in [top + 1, top + width, top + width + 1] {
            if plane[candidate] > plane[best] {
                best = candidate;
            }
        }
        return best;
    }
    let mut best = rows.start * width + cols.start;
    for y in rows.start..rows.end {
        for x in cols.start..cols.end {
            if plane[y * width + x] > plane[best] {
                best = y * width + x;
            }
        }
    }
    best
}

/// The value of one window: its largest value, or the mean of the pixels it covers.
#[inline]
fn pool_window(
    kind: PoolKind,
    plane: &[f32],
    width: usize,
    rows: WindowSpan,
    cols: WindowSpan,
) -> f32 {
    match kind {
        PoolKind::Max => plane[argmax(plane, width, rows, cols)],
        PoolKind::Average => {
            let mut sum = 0.0;
            for y in rows.start..rows.end {
                sum += plane[y * width + cols.start..y * width + cols.end]
                    .iter()
                    .sum::<f32>();
            }
            sum / (rows.len() * cols.len()) as f32
        }
    }
}

/// Pools one plane. The 2x2, stride-2 window without padding (nearly every CNN's pooling) has
/// its interior unrolled; the border (partial windows in ceil mode) and every other window
/// take the general walk.
fn pool_plane(kind: PoolKind, g: &PoolGeometry, plane: &[f32], out: &mut [f32]) {
    let (width, out_width) = (g.input.width, g.output.width);
    let w = &g.window;
    let (full_rows, full_cols) = if w.kernel == [2, 2] && w.stride == [2, 2] && w.padding == [0, 0]
    {
        (
            (g.input.height / 2).min(g.output.height),
            (width / 2).min(out_width),
        )
    } else {
        (0, 0)
    };
    for oy in 0..full_rows {
        let top = &plane[2 * oy * width..][..2 * full_cols];
        let bottom = &plane[(2 * oy + 1) * width..][..2 * full_cols];
        let row = &mut out[oy * out_width..][..full_cols];
        for ((o, t), b) in row
            .iter_mut()
            .zip(top.chunks_exact(2))
            .zip(bottom.chunks_exact(2))
        {
            *o = match kind {
                PoolKind::Max => t[0].max(t[1]).max(b[0].max(b[1])),
                PoolKind::Average => ((t[0] + t[1]) + (b[0] + b[1])) * 0.25,
            };
        }
    }
    for oy in 0..g.output.height {
        let rows = w.span(0, oy, g.input.height);
        let first_col = if oy < full_rows { full_cols } else { 0 };
        for ox in first_col..out_width {
            let cols = w.span(1, ox, width);
            out[oy * out_width + ox] = pool_window(kind, plane, width, rows, cols);
        }
    }
}

/// Shapes: `input` `[N, C, H, W]` to `output` `[N, C, OH, OW]`.
pub fn pool_forward(kind: PoolKind, g: &PoolGeometry, input: &Tensor, output: &mut Tensor) {
    let (in_plane, out_plane) = (g.input.plane(), g.output.plane());
    let [kh, kw] = g.window.kernel;
    let work = out_plane * kh * kw;
    for_each_item_run(output.data_mut(), out_plane, work, |first, out_run| {
        for (p, out) in out_run.chunks_mut(out_plane).enumerate() {
            let plane = &input.data()[(first + p) * in_plane..(first + p + 1) * in_plane];
            pool_plane(kind, g, plane, out);
        }
    });
}

/// Writes `dL/dinput` (`[N, C, H, W]`) from `dL/doutput` (`[N, C, OH, OW]`): max pooling routes
/// each gradient to its window's argmax, average pooling spreads it evenly over the window.
pub fn pool_backward(
    kind: PoolKind,
    g: &PoolGeometry,
    input: &Tensor,
    grad_output: &Tensor,
    grad_input: &mut Tensor,
) {
    let (in_plane, out_plane, width) = (g.input.plane(), g.output.plane(), g.input.width);
    let out_width = g.output.width;
    let [kh, kw] = g.window.kernel;
    let work = out_plane * kh * kw;
    for_each_item_run(grad_input.data_mut(), in_plane, work, |first, grad_run| {
        for (p, grad_in) in grad_run.chunks_mut(in_plane).enumerate() {
            let n = first + p;
            let plane = &input.data()[n * in_plane..(n + 1) * in_plane];
            let grad_out = &grad_output.data()[n * out_plane..(n + 1) * out_plane];
            grad_in.fill(0.0);
            g.walk(|oy, ox, rows, cols| {
                let grad = grad_out[oy * out_width + ox];
                match kind {
                    PoolKind::Max => grad_in[argmax(plane, width, rows, cols)] += grad,
                    PoolKind::Average => {
                        let share = grad / (rows.len() * cols.len()) as f32;
                        for y in rows.start..rows.end {
                            for g in &mut grad_in[y * width + cols.start..y * width + cols.end] {
                                *g += share;
                            }
                        }
                    }
                }
            });
        }
    });
}
