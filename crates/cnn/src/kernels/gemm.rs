//! Single-precision matrix product, the one primitive that convolution and dense layers are
//! lowered to. Backed by the `gemm` crate (see README, "Choice of SGEMM", for the measurement
//! against `matrixmultiply` that decided it).

use super::simd::Isa;
use super::team::{parts_for, SharedSlice, Team};

/// The instruction set `gemm` runs with here: it chooses by itself, at run time, whatever
/// `CNN_KERNELS` says (built with its `x86-v4` feature, it uses AVX-512 where the CPU has it).
pub fn isa() -> Isa {
    if Isa::Avx512.is_supported() {
        Isa::Avx512
    } else if Isa::Avx2.is_supported() {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

/// A read-only strided matrix: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
/// Transposing is swapping the strides, so no kernel ever copies a matrix to transpose it.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// `data` as a `rows x cols` row-major matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Rows `range` of this matrix.
    pub fn rows_in(self, range: std::ops::Range<usize>) -> Self {
        MatRef {
            data: &self.data[(range.start * self.row_stride).min(self.data.len())..],
            rows: range.len(),
            ..self
        }
    }

    /// Columns `range` of this matrix.
    pub fn cols_in(self, range: std::ops::Range<usize>) -> Self {
        MatRef {
            data: &self.data[(range.start * self.col_stride).min(self.data.len())..],
            cols: range.len(),
            ..self
        }
    }

    fn assert_in_bounds(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// Whether a product may spread over the current team (split by rows or columns of `c`) or
/// rayon pool. Kernels that already run one task per core (conv over batch chunks) multiply
/// serially inside each task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threading {
    Serial,
    Parallel,
}

/// Products smaller than this many multiply-adds run serially: below it, waking threads costs
/// more than the work (measured with `cargo bench --bench gemm`).
const PARALLEL_MIN_FLOPS: usize = 1 << 21;

/// `c = a · b` (or `c += a · b` with `accumulate`), with `c` row-major `a.rows x b.cols`.
///
/// Panics if the shapes disagree or a view exceeds its slice: those are programming errors in
/// the engine, never a consequence of user data, which is validated before it gets here.
pub fn matmul(c: &mut [f32], a: MatRef<'_>, b: MatRef<'_>, accumulate: bool, threading: Threading) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert!(c.len() >= m * n, "output too small");
    a.assert_in_bounds();
    b.assert_in_bounds();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    if threading == Threading::Parallel {
        if let Some(team) = Team::current() {
            let parts = parts_for(m * n * k, usize::MAX);
            if parts > 1 {
                // Split the longer side of `c` into one slice per thread; each product then
                // reads its own part of `a` (rows) or `b` (columns) only.
                let (along_rows, len) = if m >= n { (true, m) } else { (false, n) };
                let per_part = len.div_ceil(parts);
                let c = SharedSlice::new(&mut c[..m * n]);
                team.for_each(len.div_ceil(per_part), &|part| {
                    let range = part * per_part..((part + 1) * per_part).min(len);
                    // Each part writes rows `range` of `c`, or columns `range` of every row.
                    let (a, b, offset, extent) = if along_rows {
                        (
                            a.rows_in(range.clone()),
                            b,
                            range.start * n,
                            range.len() * n,
                        )
                    } else {
                        (
                            a,
                            b.cols_in(range.clone()),
                            range.start,
                            (m - 1) * n + range.len(),
                        )
                    };
                    // SAFETY: as below, for the block of `c` this part owns (inside `c`,
                    // checked by `ptr_for`): parts write disjoint rows (or columns) of `c`,
                    // through raw pointers only.
                    unsafe {
                        sgemm(
                            c.ptr_for(offset, extent),
                            n,
                            a,
                            b,
                            accumulate,
                            gemm::Parallelism::None,
                        )
                    };
                });
                return;
            }
        }
    }
    let parallelism = match threading {
        Threading::Parallel if m * n * k >= PARALLEL_MIN_FLOPS => {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        }
        _ => gemm::Parallelism::None,
    };
    // SAFETY: every element that gemm reads lies inside `a.data` and `b.data` (checked by
    // `assert_in_bounds`), every element it writes inside `c[..m * n]` (row-major, checked
    // above); `c` is a unique borrow, so it aliases neither input.
    unsafe { sgemm(c.as_mut_ptr(), n, a, b, accumulate, parallelism) };
}

/// `c = a · b` (or `c += a · b`), `c` being `a.rows x b.cols` with rows `c_row_stride` apart.
///
/// # Safety
/// `a` and `b` must be in bounds, `c` valid for writes over every element of that block, and
/// no other thread may touch that block meanwhile.
unsafe fn sgemm(
    c: *mut f32,
    c_row_stride: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        a.rows,
        b.cols,
        a.cols,
        c,
        1,
        c_row_stride as isize,
        accumulate,
        a.data.as_ptr(),
        a.col_stride as isize,
        a.row_stride as isize,
        b.data.as_ptr(),
        b.col_stride as isize,
        b.row_stride as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef, b: MatRef) -> Vec<f32> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                for p in 0..a.cols {
                    c[i * b.cols + j] += a.data[i * a.row_stride + p * a.col_stride]
                        * b.data[p * b.row_stride + j * b.col_stride];
                }
            }
        }
        c
    }

    #[test]
    fn matches_naive_product_with_transposes_and_accumulation() {
        let a: Vec<f32> = (0..35).map(|v| (v as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..35).map(|v| (v as f32 * 0.11).cos()).collect();
        let a_ref = MatRef::row_major(&a, 5, 7);
        let b_ref = MatRef::row_major(&b, 5, 7).t(); // 7 x 5
        let expected = naive(a_ref, b_ref);
        let mut c = vec![1.0; 25];
        matmul(&mut c, a_ref, b_ref, false, Threading::Serial);
        for (x, y) in c.iter().zip(&expected) {
            assert!((x - y).abs() < 1e-5);
        }
        matmul(&mut c, a_ref, b_ref, true, Threading::Parallel);
        for (x, y) in c.iter().zip(&expected) {
            assert!((x - 2.0 * y).abs() < 1e-5);
        }
    }
}
