//! Compute kernels: the CPU implementations behind the layers. Each fast kernel has a plain,
//! obviously right counterpart in [`reference`] that tests compare it with, on every
//! instruction set ([`simd::Isa`]) the machine can run. A second backend implements the same
//! functions; layers only describe shapes and hold parameters.

pub mod batchnorm;
pub mod conv;
pub mod depthwise;
pub mod direct;
pub mod gemm;
pub mod packed;
pub mod pool;
pub mod reference;
pub mod simd;
pub mod team;
pub mod weight_gradient;
pub mod winograd;

use crate::tensor::Shape;

/// Buffers a kernel reuses from call to call, growing but never shrinking (see
/// [`scratch_prefix`]).
#[derive(Debug, Default)]
pub struct Scratch {
    pub floats: Vec<f32>,
    /// Whole tensors: a grouped convolution gathers each group's channels into one.
    pub tensors: Vec<crate::tensor::Tensor>,
}

/// What a kernel does to each output value on its way out, so that no separate pass over the
/// output is needed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added per output channel.
    pub bias: Option<&'a [f32]>,
    /// Then the value already in the output at the same place: a residual connection's
    /// addition fused into the convolution before it (the output holds the other summand).
    /// Never with `max_pool`.
    pub accumulate: bool,
    /// Then `max(0, ·)`: a ReLU fused into the layer before it.
    pub relu: bool,
    /// Then the maximum of each 2x2 block (stride 2, no padding, a last odd row or column
    /// dropped): a max pooling fused into the layer before it. The output is then
    /// `[OC, OH / 2, OW / 2]`. The maximum is taken first, which gives the same values, as
    /// adding the bias and the ReLU are both monotonic.
    pub max_pool: bool,
}

impl Epilogue<'_> {
    /// `[OC, OH, OW]` for a layer computing `output` before the epilogue.
    pub fn output_shape(&self, output: Shape) -> Shape {
        if self.max_pool {
            Shape::new(output.channels, output.height / 2, output.width / 2)
        } else {
            output
        }
    }

    /// The bias of output channel `channel` (0 without one).
    #[inline(always)]
    pub fn bias_of(&self, channel: usize) -> f32 {
        self.bias.map_or(0.0, |b| b[channel])
    }

    /// The ReLU, when there is one, of a value that already has its bias.
    #[inline(always)]
    pub fn activate(&self, value: f32) -> f32 {
        if self.relu {
            value.max(0.0)
        } else {
            value
        }
    }

    /// The epilogue of one output plane of channel `channel`: `plane` holds `rows` rows of
    /// `width` values, `pitch` apart; `out` receives `[rows, width]`, or its 2x2 maxima (in
    /// `isa`'s registers).
    pub fn apply_plane(
        &self,
        isa: simd::Isa,
        channel: usize,
        plane: &[f32],
        (rows, width, pitch): (usize, usize, usize),
        out: &mut [f32],
    ) {
        if self.max_pool {
            assert!(
                !self.accumulate,
                "a residual addition is never pooled in the same pass"
            );
            isa.dispatch(pool::PooledPlane {
                kind: pool::PoolKind::Max,
                plane,
                rows,
                width,
                pitch,
                epilogue: *self,
                bias: self.bias_of(channel),
                out,
            });
        } else if pitch == width {
            self.apply(channel, &plane[..rows * width], &mut out[..rows * width]);
        } else {
            for (out_row, row) in out
                .chunks_exact_mut(width)
                .zip(plane.chunks(pitch))
                .take(rows)
            {
                self.apply(channel, &row[..width], out_row);
            }
        }
    }

    /// `out = epilogue(values)` for values of output channel `channel`.
    #[inline(always)]
    pub fn apply(&self, channel: usize, values: &[f32], out: &mut [f32]) {
        let bias = self.bias_of(channel);
        if self.accumulate {
            for (o, &v) in out.iter_mut().zip(values) {
                *o = self.activate(v + bias + *o);
            }
        } else {
            for (o, &v) in out.iter_mut().zip(values) {
                *o = self.activate(v + bias);
            }
        }
    }

    /// `bias` (an output channel's, in every lane) added to a register of values, then the
    /// ReLU if any: what the SIMD kernels apply to a register (a max pooling, if any, taken
    /// before).
    #[inline(always)]
    pub(crate) fn finish<S: simd::Simd>(&self, s: S, bias: S::V, values: S::V) -> S::V {
        debug_assert!(
            !self.accumulate,
            "an accumulating epilogue needs the output values"
        );
        self.finish_onto(s, bias, values, s.zero())
    }

    /// [`Epilogue::finish`] of a register bound for output values `existing`, the values
    /// already there, which only `accumulate` adds (a caller loads them only then).
    #[inline(always)]
    pub(crate) fn finish_onto<S: simd::Simd>(
        &self,
        s: S,
        bias: S::V,
        values: S::V,
        existing: S::V,
    ) -> S::V {
        let mut values = s.add(values, bias);
        if self.accumulate {
            values = s.add(values, existing);
        }
        if self.relu {
            s.max(values, s.zero())
        } else {
            values
        }
    }
}

/// Runs `work` on a thread of the rayon pool (at once when already on one). A pass is a
/// sequence of parallel kernels: started from outside the pool, each of them would hand its
/// work to the pool and put the caller to sleep until it is done, two thread wake-ups per
/// kernel. From inside, the caller works on its own share while another thread steals the
/// rest. (`cnn` itself already runs inside its pool; this is for library callers.)
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        work()
    } else {
        rayon::scope(|_| work())
    }
}

/// The first `len` values of a kernel's scratch buffer, growing it when needed but never
/// shrinking it: a layer's forward and backward passes share one buffer and need different
/// sizes, and a shrink followed by a grow would clear the memory again on every step.
/// Values are left as they were: kernels overwrite what they read.
pub fn scratch_prefix(scratch: &mut Vec<f32>, len: usize) -> &mut [f32] {
    let room = len + CACHE_LINE_FLOATS;
    if scratch.len() < room {
        scratch.resize(room, 0.0);
    }
    let skip = scratch
        .as_ptr()
        .align_offset(4 * CACHE_LINE_FLOATS)
        .min(CACHE_LINE_FLOATS);
    &mut scratch[skip..skip + len]
}

/// Floats in a cache line: scratch starts at a line's start, so that a kernel's full-register
/// loads and stores at multiples of 16 floats from it never straddle two lines.
const CACHE_LINE_FLOATS: usize = 16;

/// Splits a batch into `chunks` contiguous runs of `per_chunk` samples, one rayon task each.
/// The split depends only on the batch size and the thread count, so partial sums reduced in
/// chunk order give the same bits on every run with the same thread count.
pub fn batch_chunks(batch: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads().max(1);
    let per_chunk = batch.div_ceil(threads).max(1);
    (batch.div_ceil(per_chunk), per_chunk)
}

/// Below this many values of work, a kernel runs on the calling thread: waking the pool costs
/// more than it saves (batch-1 inference lives here).
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// `grad = dy` where `y` (a ReLU's output) is positive, zero elsewhere: the gradient through a
/// ReLU, its own node's or one computed inside the layer before it (as PyTorch's, zero where the
/// input was zero), in blocks over the pool.
pub fn relu_gradient(dy: &[f32], y: &[f32], grad: &mut [f32]) {
    const BLOCK: usize = 4096;
    assert!(dy.len() == grad.len() && y.len() == grad.len());
    for_each_item_run(grad, BLOCK, BLOCK, |first, grad| {
        let range = first * BLOCK..first * BLOCK + grad.len();
        for ((g, &dy), &y) in grad.iter_mut().zip(&dy[range.clone()]).zip(&y[range]) {
            *g = if y > 0.0 { dy } else { 0.0 };
        }
    });
}

/// Runs `work(first_item, items)` over `output`, which holds items of `item_len` values each,
/// split into one contiguous run of items per thread (or serially when `work_per_item * items`
/// is small). `first_item` is the index of the run's first item, to find its inputs.
pub fn for_each_item_run<T: Send>(
    output: &mut [T],
    item_len: usize,
    work_per_item: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let items = output.len() / item_len.max(1);
    if items * work_per_item < PARALLEL_MIN_WORK || rayon::current_num_threads() == 1 {
        work(0, output);
        return;
    }
    let (_, per_run) = batch_chunks(items);
    team::for_each_chunk_mut(output, per_run * item_len, |run, values| {
        work(run * per_run, values)
    });
}
