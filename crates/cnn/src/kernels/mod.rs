//! Compute kernels: the CPU implementations behind the layers. Each fast kernel has a plain,
//! obviously right counterpart in [`reference`] that tests compare it with. A second backend
//! implements the same functions; layers only describe shapes and hold parameters.

pub mod conv;
pub mod gemm;
pub mod pool;
pub mod reference;
pub mod winograd;

/// What a kernel does to each output value on its way out, so that no separate pass over the
/// output is needed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added per output channel.
    pub bias: Option<&'a [f32]>,
    /// Then `max(0, ·)`: a ReLU fused into the layer before it.
    pub relu: bool,
}

impl Epilogue<'_> {
    /// `out = epilogue(values)` for values of output channel `channel`.
    #[inline(always)]
    pub fn apply(&self, channel: usize, values: &[f32], out: &mut [f32]) {
        let bias = self.bias.map_or(0.0, |b| b[channel]);
        if self.relu {
            for (o, &v) in out.iter_mut().zip(values) {
                *o = (v + bias).max(0.0);
            }
        } else {
            for (o, &v) in out.iter_mut().zip(values) {
                *o = v + bias;
            }
        }
    }
}

/// Runs `work` on a thread of the rayon pool (at once when already on one). A pass is a
/// sequence of parallel kernels: started from outside the pool, each of them would hand its
/// work to the pool and put the caller to sleep until it is done, two thread wake-ups per
/// kernel, which is most of the time of a batch-1 inference. From inside, the caller works
/// on its own share while another thread steals the rest.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        work()
    } else {
        rayon::scope(|_| work())
    }
}

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

/// Runs `work(first_item, items)` over `output`, which holds items of `item_len` values each,
/// split into one contiguous run of items per thread (or serially when `work_per_item * items`
/// is small). `first_item` is the index of the run's first item, to find its inputs.
pub fn for_each_item_run<T: Send>(
    output: &mut [T],
    item_len: usize,
    work_per_item: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    use rayon::prelude::*;
    let items = output.len() / item_len.max(1);
    if items * work_per_item < PARALLEL_MIN_WORK || rayon::current_num_threads() == 1 {
        work(0, output);
        return;
    }
    let (_, per_run) = batch_chunks(items);
    output
        .par_chunks_mut(per_run * item_len)
        .enumerate()
        .for_each(|(run, values)| work(run * per_run, values));
}
