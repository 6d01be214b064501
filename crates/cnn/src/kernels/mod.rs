//! Compute kernels: the CPU implementations behind the layers. Each fast kernel has a plain,
//! obviously right counterpart in [`reference`] that tests compare it with. A second backend
//! implements the same functions; layers only describe shapes and hold parameters.

pub mod conv;
pub mod gemm;
pub mod pool;
pub mod reference;

/// Splits a batch into `chunks` contiguous runs of `per_chunk` samples, one rayon task each.
/// The split depends only on the batch size and the thread count, so partial sums reduced in
/// chunk order give the same bits on every run with the same thread count.
pub fn batch_chunks(batch: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads().max(1);
    let per_chunk = batch.div_ceil(threads).max(1);
    (batch.div_ceil(per_chunk), per_chunk)
}
