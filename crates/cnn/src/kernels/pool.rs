//! Max and average pooling over each channel plane, with the window walk of [`Window2d`].

use super::simd::{Isa, Kernel, Simd};
use super::{for_each_item_run, Epilogue};
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
    /// The 2x2, stride-2 window without padding, nearly every CNN's pooling: windows that do
    /// not overlap.
    fn is_two_by_two(&self) -> bool {
        let w = &self.window;
        w.kernel == [2, 2] && w.stride == [2, 2] && w.padding == [0, 0] && !w.ceil_mode
    }

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

/// Pools one plane with a window other than the 2x2 of [`PooledPlane`], in two passes: first along each input row, giving for each
/// output column the max (or sum) of the columns its window covers (`rows`, `H x OW`), then down
/// the columns over each output row's window. A window's max (sum) is the max (sum) of its
/// columns', so the result is the window's; both passes run over contiguous values and
/// vectorise, where a walk window by window does not (a 3x3 stride-1 max pool: 0.4 GFLOP/s).
fn pool_plane(kind: PoolKind, g: &PoolGeometry, plane: &[f32], out: &mut [f32], rows: &mut [f32]) {
    let (height, width) = (g.input.height, g.input.width);
    let (out_height, out_width) = (g.output.height, g.output.width);
    let w = &g.window;
    let combine = |a: f32, b: f32| match kind {
        PoolKind::Max => a.max(b),
        PoolKind::Average => a + b,
    };
    // The output columns whose windows lie wholly inside a row: `lo..hi`.
    let (kernel, stride, pad) = (w.kernel[1], w.stride[1], w.padding[1]);
    let lo = pad.div_ceil(stride).min(out_width);
    let hi = if width + pad >= kernel {
        ((width + pad - kernel) / stride + 1).min(out_width)
    } else {
        0
    }
    .max(lo);
    for (y, acc) in rows.chunks_exact_mut(out_width).enumerate() {
        let row = &plane[y * width..][..width];
        for ox in (0..lo).chain(hi..out_width) {
            let cols = w.span(1, ox, width);
            acc[ox] = row[cols.start..cols.end]
                .iter()
                .copied()
                .reduce(combine)
                .unwrap_or(0.0);
        }
        if lo < hi {
            let inner = &mut acc[lo..hi];
            let first = lo * stride - pad;
            let len = inner.len();
            let taps = row[first..].iter().step_by(stride);
            inner.iter_mut().zip(taps).for_each(|(a, &x)| *a = x);
            for k in 1..kernel {
                if stride == 1 {
                    // Contiguous taps: the loop the compiler vectorises.
                    let taps = &row[first + k..][..len];
                    inner
                        .iter_mut()
                        .zip(taps)
                        .for_each(|(a, &x)| *a = combine(*a, x));
                } else {
                    let taps = row[first + k..].iter().step_by(stride);
                    inner
                        .iter_mut()
                        .zip(taps)
                        .for_each(|(a, &x)| *a = combine(*a, x));
                }
            }
        }
    }
    for (oy, out_row) in out.chunks_exact_mut(out_width).enumerate().take(out_height) {
        let span = w.span(0, oy, height);
        out_row.copy_from_slice(&rows[span.start * out_width..][..out_width]);
        for y in span.start + 1..span.end {
            let row = &rows[y * out_width..][..out_width];
            out_row
                .iter_mut()
                .zip(row)
                .for_each(|(o, &x)| *o = combine(*o, x));
        }
        if kind == PoolKind::Average {
            for (ox, o) in out_row.iter_mut().enumerate() {
                *o /= (span.len() * w.span(1, ox, width).len()) as f32;
            }
        }
    }
}

/// The backward pass of the 2x2, stride-2 max pooling without padding, nearly every CNN's
/// pooling, over a run of planes (`[planes, H, W]` and `[planes, OH, OW]`): a register of
/// windows at a time (the last of a row partial), each row pair split into its windows' four
/// corners by two deinterleaves (as the forward pass, [`PooledPlane`]), the first maximum found
/// by compares and selects. The plain loops over pairs of values did not vectorise, and the
/// comparisons branched or (without branches) took as long: LeNet-5's two poolings took 15-19%
/// of its training step with AVX-512 (`perf`, Intel Xeon family 6 model 167).
struct MaxPoolBackward<'a> {
    g: &'a PoolGeometry,
    /// The pooling's input planes.
    input: &'a [f32],
    grad_output: &'a [f32],
    /// Every value written.
    grad_input: &'a mut [f32],
}

impl Kernel for MaxPoolBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let MaxPoolBackward {
            g,
            input,
            grad_output,
            grad_input,
        } = self;
        let (width, out_width, out_height) = (g.input.width, g.output.width, g.output.height);
        let in_plane = g.input.plane();
        let zero = s.zero();
        let pairs = input.chunks_exact(in_plane).flat_map(|plane| {
            (0..out_height).map(move |oy| plane[2 * oy * width..][..2 * width].split_at(width))
        });
        let grad_pairs = grad_input.chunks_exact_mut(in_plane).flat_map(|plane| {
            let (pairs, rest) = plane.split_at_mut(2 * out_height * width);
            // A last odd row, which no window covers, gets no gradient.
            rest.fill(0.0);
            pairs.chunks_exact_mut(2 * width)
        });
        let rows = pairs
            .zip(grad_output.chunks_exact(out_width))
            .zip(grad_pairs);
        for (((top, bottom), grads), grad_pair) in rows {
            let (grad_top, grad_bottom) = grad_pair.split_at_mut(width);
            for x in (0..out_width).step_by(S::LANES) {
                let count = (out_width - x).min(S::LANES);
                // SAFETY: the value and gradient rows hold `2 * out_width >= 2 * (x + count)`
                // values, `grads` `out_width >= x + count`.
                unsafe {
                    let [a, b, c, d] = corners(s, (top, bottom), x, count);
                    let grad = load(s, grads.as_ptr().add(x), count);
                    // The first maximum in row-major order, as [`argmax`] finds it: each later
                    // corner larger than the best so far takes the gradient from those before.
                    let later_b = s.greater(b, a);
                    let best = s.select(later_b, b, a);
                    let later_c = s.greater(c, best);
                    let best = s.select(later_c, c, best);
                    let later_d = s.greater(d, best);
                    let mut share = [grad, zero, zero, zero];
                    for (k, later) in [(1, later_b), (2, later_c), (3, later_d)] {
                        for value in &mut share[..k] {
                            *value = s.select(later, zero, *value);
                        }
                        share[k] = s.select(later, grad, zero);
                    }
                    store_pairs(s, grad_top.as_mut_ptr(), x, count, [share[0], share[1]]);
                    store_pairs(s, grad_bottom.as_mut_ptr(), x, count, [share[2], share[3]]);
                }
            }
            // A last odd column, which no window covers, gets no gradient.
            grad_top[2 * out_width..].fill(0.0);
            grad_bottom[2 * out_width..].fill(0.0);
        }
    }
}

/// One row pair's 2x2 windows into `out_row` (as many as it holds): their max or mean, then
/// `epilogue` with `bias` in every lane (a plain pooling's epilogue does nothing).
#[inline(always)]
fn pool_row_pair<S: Simd>(
    s: S,
    kind: PoolKind,
    (top, bottom): (&[f32], &[f32]),
    out_row: &mut [f32],
    (epilogue, bias): (&Epilogue<'_>, S::V),
) {
    let width = out_row.len();
    assert!(top.len() >= 2 * width && bottom.len() >= 2 * width);
    let quarter = s.splat(0.25);
    for x in (0..width).step_by(S::LANES) {
        let count = (width - x).min(S::LANES);
        // SAFETY: `top` and `bottom` hold `2 * width >= 2 * (x + count)` values (asserted),
        // `out_row` `width >= x + count`.
        unsafe {
            let [a, b, c, d] = corners(s, (top, bottom), x, count);
            let value = match kind {
                PoolKind::Max => s.max(s.max(a, b), s.max(c, d)),
                PoolKind::Average => {
                    let sum = s.add(s.add(a, b), s.add(c, d));
                    s.mul_add(sum, quarter, s.zero())
                }
            };
            let value = epilogue.finish(s, bias, value);
            store(s, out_row.as_mut_ptr().add(x), count, value);
        }
    }
}

/// The 2x2, stride-2 pooling without padding of one plane of `rows` rows of `width` values,
/// `pitch` apart, into `out` (`[rows / 2, width / 2]`), each window's max or mean then finished
/// by `epilogue` with the channel's `bias`: a pooling layer's forward pass (its epilogue does
/// nothing) or the max pooling fused into a convolution's (see [`Epilogue::apply_plane`]).
pub(crate) struct PooledPlane<'a> {
    pub kind: PoolKind,
    pub plane: &'a [f32],
    pub rows: usize,
    pub width: usize,
    pub pitch: usize,
    pub epilogue: Epilogue<'a>,
    pub bias: f32,
    pub out: &'a mut [f32],
}

impl Kernel for PooledPlane<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let PooledPlane {
            kind,
            plane,
            rows,
            width,
            pitch,
            epilogue,
            bias,
            out,
        } = self;
        let (pooled_rows, pooled_width) = (rows / 2, width / 2);
        let bias = s.splat(bias);
        for (py, out_row) in out
            .chunks_exact_mut(pooled_width)
            .take(pooled_rows)
            .enumerate()
        {
            let top = &plane[2 * py * pitch..][..2 * pooled_width];
            let bottom = &plane[(2 * py + 1) * pitch..][..2 * pooled_width];
            pool_row_pair(s, kind, (top, bottom), out_row, (&epilogue, bias));
        }
    }
}

/// `count <= LANES` values from `at`, zero past them.
///
/// # Safety
/// `count` floats from `at` must be readable.
#[inline(always)]
unsafe fn load<S: Simd>(s: S, at: *const f32, count: usize) -> S::V {
    // SAFETY: the caller's; a masked load reads only its lanes.
    unsafe {
        if count == S::LANES {
            s.load(at)
        } else {
            s.load_masked(at, s.mask(0, count as isize))
        }
    }
}

/// The first `count <= LANES` lanes of `value`, to `at`.
///
/// # Safety
/// `count` floats from `at` must be writable.
#[inline(always)]
unsafe fn store<S: Simd>(s: S, at: *mut f32, count: usize, value: S::V) {
    // SAFETY: the caller's; a masked store writes only its lanes.
    unsafe {
        if count == S::LANES {
            s.store(at, value)
        } else {
            s.store_masked(at, s.mask(0, count as isize), value)
        }
    }
}

/// The four corners of windows `x .. x + count` (`count <= LANES`) of the row pair `top`,
/// `bottom`: their top-left, top-right, bottom-left and bottom-right values.
///
/// # Safety
/// `top` and `bottom` must hold `2 * (x + count)` values.
#[inline(always)]
unsafe fn corners<S: Simd>(
    s: S,
    (top, bottom): (&[f32], &[f32]),
    x: usize,
    count: usize,
) -> [S::V; 4] {
    // SAFETY: the caller's.
    unsafe {
        let (t0, t1) = row_values(s, top, x, count);
        let (b0, b1) = row_values(s, bottom, x, count);
        let (a, b) = s.deinterleave(t0, t1);
        let (c, d) = s.deinterleave(b0, b1);
        [a, b, c, d]
    }
}

/// The `2 * count` values of windows `x .. x + count` (`count <= LANES`) in one row, as two
/// registers, zero past them. (No closure: one would not inherit the caller's instruction set,
/// and the intrinsics in it would become calls.)
///
/// # Safety
/// `row` must hold `2 * (x + count)` values.
#[inline(always)]
unsafe fn row_values<S: Simd>(s: S, row: &[f32], x: usize, count: usize) -> (S::V, S::V) {
    let values = 2 * count;
    // SAFETY: the caller's: the two loads read `2 * count` values from `2 * x`; a second one
    // past the row's end reads nothing, and its pointer is only computed.
    unsafe {
        let at = row.as_ptr().add(2 * x);
        (
            load(s, at, values.min(S::LANES)),
            load(
                s,
                at.wrapping_add(S::LANES),
                values.saturating_sub(S::LANES),
            ),
        )
    }
}

/// Windows `x .. x + count`'s values `left`, `right` (`count <= LANES`), interleaved into the
/// row at `row` from column `2 * x`.
///
/// # Safety
/// `2 * (x + count)` floats from `row` must be writable.
#[inline(always)]
unsafe fn store_pairs<S: Simd>(
    s: S,
    row: *mut f32,
    x: usize,
    count: usize,
    [left, right]: [S::V; 2],
) {
    let (first, second) = s.interleave(left, right);
    let values = 2 * count;
    // SAFETY: the caller's: the two stores write `2 * count` values from `2 * x`; a second one
    // past the row's end writes nothing, and its pointer is only computed.
    unsafe {
        let at = row.add(2 * x);
        store(s, at, values.min(S::LANES), first);
        store(
            s,
            at.wrapping_add(S::LANES),
            values.saturating_sub(S::LANES),
            second,
        );
    }
}

/// Shapes: `input` `[N, C, H, W]` to `output` `[N, C, OH, OW]`, with `isa`'s instructions for
/// the 2x2 window.
pub fn pool_forward(
    isa: Isa,
    kind: PoolKind,
    g: &PoolGeometry,
    input: &Tensor,
    output: &mut Tensor,
) {
    let (in_plane, out_plane) = (g.input.plane(), g.output.plane());
    let [kh, kw] = g.window.kernel;
    let work = out_plane * kh * kw;
    let two_by_two = g.is_two_by_two() && out_plane > 0;
    for_each_item_run(output.data_mut(), out_plane, work, |first, out_run| {
        let planes = out_run.len() / out_plane.max(1);
        let input = &input.data()[first * in_plane..(first + planes) * in_plane];
        if two_by_two {
            for (plane, out) in input
                .chunks_exact(in_plane)
                .zip(out_run.chunks_mut(out_plane))
            {
                isa.dispatch(PooledPlane {
                    kind,
                    plane,
                    rows: g.input.height,
                    width: g.input.width,
                    pitch: g.input.width,
                    epilogue: Epilogue::default(),
                    bias: 0.0,
                    out,
                });
            }
            return;
        }
        let mut rows = vec![0.0; g.input.height * g.output.width];
        for (plane, out) in input
            .chunks_exact(in_plane)
            .zip(out_run.chunks_mut(out_plane))
        {
            pool_plane(kind, g, plane, out, &mut rows);
        }
    });
}

/// Writes `dL/dinput` (`[N, C, H, W]`) from `dL/doutput` (`[N, C, OH, OW]`): max pooling routes
/// each gradient to its window's argmax, average pooling spreads it evenly over the window.
pub fn pool_backward(
    isa: Isa,
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
    let two_by_two_max = kind == PoolKind::Max && g.is_two_by_two() && out_plane > 0;
    for_each_item_run(grad_input.data_mut(), in_plane, work, |first, grad_run| {
        if two_by_two_max {
            let planes = grad_run.len() / in_plane;
            isa.dispatch(MaxPoolBackward {
                g,
                input: &input.data()[first * in_plane..(first + planes) * in_plane],
                grad_output: &grad_output.data()[first * out_plane..(first + planes) * out_plane],
                grad_input: grad_run,
            });
            return;
        }
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
