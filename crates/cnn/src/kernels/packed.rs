//! The matrix product of the SIMD kernels: `C = A · B`, where `A` holds a layer's weights,
//! packed once per set of weights for the register block of the instruction set, and `B` is
//! read in place, each of its rows wherever it starts. Winograd's 16 products use it (`A` the
//! transformed weights, `B` the transformed tiles), and so does the implicit-GEMM convolution
//! (`A` the weights, `B`'s rows the padded image shifted by each kernel tap: no column matrix).
//!
//! For each stretch of up to three registers of `B`'s columns and each block of `R` rows of
//! `A`, the block of `C` stays in registers while the depth goes by: per step of depth, one
//! load of `B` per register of columns and one broadcast per row. The stretch's part of `B`
//! stays in the L1 cache while every block of rows reads it. Measured with AVX-512 against 16
//! calls of `gemm` on `cnn4`'s Winograd shapes at batch 1 (one thread): 1.3x to 1.5x faster
//! (64x64 by 32 tiles: 149 against 202 GFLOP/s; by 16 tiles 103 against 155), as nothing is
//! packed per call. With AVX2, 4 rows by 2 registers measured best on an AMD EPYC Zen 3 (72 to
//! 80 GFLOP/s on one core, against 50 to 69 for 8x1, 8x3 or 3x3), 4 by 3 on an Intel Xeon
//! with AVX-512 hidden (118-127 against 111-117 GFLOP/s): `tests::product_speed`, and
//! [`super::simd::avx2::product_width`].

use super::simd::{Isa, Simd};

/// Rows of `A` in a block of the packed layout for `isa` when `A` has `rows` rows
/// ([`Isa::product_block`]).
pub fn block_rows(isa: Isa, rows: usize) -> usize {
    isa.product_block(rows).0
}

/// Floats of `A` (`rows x depth`) packed for `isa`: the rows padded to whole blocks.
pub fn packed_len(isa: Isa, rows: usize, depth: usize) -> usize {
    rows.next_multiple_of(block_rows(isa, rows)) * depth
}

/// Where entry `(row, k)` of `A` (`[rows, depth]`) goes in the packed layout for `isa`: blocks
/// of `R` rows, depth by depth, `[rows / R][depth][R]` (entries past the last row stay zero).
#[inline]
pub fn packed_index(isa: Isa, [rows, depth]: [usize; 2], row: usize, k: usize) -> usize {
    let block = block_rows(isa, rows);
    (row / block * depth + k) * block + row % block
}

/// `A` (`rows x depth`, entry `(r, k)` given by `entry`) packed for `isa`.
pub fn pack(isa: Isa, rows: usize, depth: usize, entry: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let mut packed = vec![0.0; packed_len(isa, rows, depth)];
    for r in 0..rows {
        for k in 0..depth {
            packed[packed_index(isa, [rows, depth], r, k)] = entry(r, k);
        }
    }
    packed
}

/// Where the rows of `B` start in its buffer.
pub(crate) trait RowStarts: Copy {
    /// The index of row `k`'s first value.
    fn start(&self, k: usize) -> usize;
    /// The largest start of `depth` rows (for the bounds check).
    fn last_start(&self, depth: usize) -> usize;
}

/// Rows `stride` floats apart.
#[derive(Clone, Copy)]
pub(crate) struct Strided(pub usize);

impl RowStarts for Strided {
    #[inline(always)]
    fn start(&self, k: usize) -> usize {
        k * self.0
    }
    fn last_start(&self, depth: usize) -> usize {
        depth.saturating_sub(1) * self.0
    }
}

/// Rows at the given starts.
#[derive(Clone, Copy)]
pub(crate) struct Starts<'a>(pub &'a [usize]);

impl RowStarts for Starts<'_> {
    #[inline(always)]
    fn start(&self, k: usize) -> usize {
        self.0[k]
    }
    fn last_start(&self, depth: usize) -> usize {
        self.0[..depth].iter().copied().max().unwrap_or(0)
    }
}

/// `C[r][n] = Σ_k A[r][k] · B[k][n]` for `r < rows` and `n < width` (a multiple of `LANES`),
/// `A` packed for `S` ([`pack`]) with the register `block` of the whole matrix
/// ([`Isa::product_block`]: these rows may be some of its blocks), row `k` of `B` starting at
/// `b[starts.start(k)]`, `C`'s rows `c_stride` floats apart. `shape` is `[rows, depth, width]`.
#[inline(always)]
pub(crate) fn product<S: Simd, B: RowStarts>(
    s: S,
    (a, block): (&[f32], (usize, usize)),
    (b, starts): (&[f32], B),
    c: &mut [f32],
    shape: [usize; 3],
    c_stride: usize,
) {
    let (rows, width) = block;
    match rows {
        8 => product_blocks::<S, B, 8>(s, a, (b, starts), c, shape, c_stride, width),
        6 => product_blocks::<S, B, 6>(s, a, (b, starts), c, shape, c_stride, width),
        4 => product_blocks::<S, B, 4>(s, a, (b, starts), c, shape, c_stride, width),
        rows => unreachable!("no product block of {rows} rows"),
    }
}

/// [`product`] with blocks of `R` rows and stretches of at most `max_width` registers.
#[inline(always)]
pub(crate) fn product_blocks<S: Simd, B: RowStarts, const R: usize>(
    s: S,
    a: &[f32],
    (b, starts): (&[f32], B),
    c: &mut [f32],
    [rows, depth, width]: [usize; 3],
    c_stride: usize,
    max_width: usize,
) {
    let block_len = R * depth;
    assert_eq!(a.len(), rows.div_ceil(R) * block_len);
    assert!(width.is_multiple_of(S::LANES));
    assert!(depth == 0 || starts.last_start(depth) + width <= b.len());
    assert!(rows == 0 || (rows - 1) * c_stride + width <= c.len());
    let mut n = 0;
    while n < width {
        let registers = register_width((width - n) / S::LANES, max_width);
        for block in 0..rows.div_ceil(R) {
            let (a, first) = (&a[block * block_len..][..block_len], block * R);
            let c = c[first * c_stride + n..].as_mut_ptr();
            let block = (a, (b, starts, n), (c, c_stride), R.min(rows - first), depth);
            // SAFETY: the block reads `depth` rows of `B` and writes `rows - first` rows of
            // `C`, `LANES * registers` columns from n, which end at or before `width`: inside
            // both slices (asserted above).
            unsafe {
                match registers {
                    1 => block_product::<S, B, R, 1>(s, block),
                    2 => block_product::<S, B, R, 2>(s, block),
                    _ => block_product::<S, B, R, 3>(s, block),
                }
            }
        }
        n += S::LANES * registers;
    }
}

/// Registers of columns for the next stretch of [`product`], `remaining` being left: as many as
/// fit (`max`), unless that would leave a single one, the least efficient block.
fn register_width(remaining: usize, max: usize) -> usize {
    if remaining <= max {
        remaining
    } else if remaining - max == 1 && max > 2 {
        max - 1
    } else {
        max
    }
}

/// The packed rows of a block of `A`, where it reads `B` (its rows, from column `n`), where
/// it writes `C` (and `C`'s row stride), its rows (at most `R`) and the depth.
type BlockOperands<'a, B> = (
    &'a [f32],
    (&'a [f32], B, usize),
    (*mut f32, usize),
    usize,
    usize,
);

/// One block of [`product`]: `rows` (at most `R`) rows of `LANES * W` columns of `C`.
///
/// # Safety
/// Columns `n..n + LANES * W` of every row read of `B` must lie in `b`, and of every row
/// written of `C` in its buffer.
#[inline(always)]
unsafe fn block_product<S: Simd, B: RowStarts, const R: usize, const W: usize>(
    s: S,
    (a, (b, starts, n), (c, c_stride), rows, depth): BlockOperands<'_, B>,
) {
    let mut sums = [[s.zero(); W]; R];
    let b = b.as_ptr().wrapping_add(n);
    for (k, weights) in a.chunks_exact(R).enumerate().take(depth) {
        let row = b.wrapping_add(starts.start(k));
        let mut values = [s.zero(); W];
        for (register, value) in values.iter_mut().enumerate() {
            // SAFETY: columns n.. of row k of `B`, inside `b` (the caller's contract).
            *value = unsafe { s.load(row.add(S::LANES * register)) };
        }
        for (sum, &weight) in sums.iter_mut().zip(weights) {
            let weight = s.splat(weight);
            for (sum, &value) in sum.iter_mut().zip(&values) {
                *sum = s.mul_add(weight, value, *sum);
            }
        }
    }
    // Over all `R` (a constant): a bound known only at run time would keep `sums` in memory
    // instead of registers.
    for (r, sum) in sums.iter().enumerate() {
        if r >= rows {
            break;
        }
        for (register, &value) in sum.iter().enumerate() {
            // SAFETY: row r < rows of the block of `C` (the caller's contract).
            unsafe { s.store(c.add(r * c_stride + S::LANES * register), value) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::Kernel;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// `C` from [`product`] with `isa`, rows of `B` at `starts` in `b`.
    struct Product<'a> {
        a: &'a [f32],
        b: &'a [f32],
        starts: &'a [usize],
        shape: [usize; 3],
        c_stride: usize,
    }

    impl Kernel for Product<'_> {
        type Output = Vec<f32>;
        #[inline(always)]
        fn run<S: Simd>(self, s: S) -> Vec<f32> {
            let [rows, _, width] = self.shape;
            let mut c = vec![f32::NAN; rows.saturating_sub(1) * self.c_stride + width];
            product(
                s,
                (self.a, S::ISA.product_block(rows)),
                (self.b, Starts(self.starts)),
                &mut c,
                self.shape,
                self.c_stride,
            );
            c
        }
    }

    proptest! {
        /// The product equals the plain triple loop on every instruction set, for any number
        /// of rows (whole and partial blocks), depth, and width (1 to 7 registers of 8 or 16:
        /// stretches of one, two and three registers), with rows of `B` anywhere in it.
        #[test]
        fn product_matches_the_plain_loops(
            rows in 1usize..=19,
            depth in 0usize..=12,
            registers in 1usize..=7,
            seed in any::<u64>(),
        ) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            for isa in Isa::supported() {
                let lanes = match isa { Isa::Avx512 => 16, _ => 8 };
                let width = registers * lanes;
                let a: Vec<f32> = (0..rows * depth).map(|_| rng.random_range(-1.0..1.0)).collect();
                let b: Vec<f32> = (0..3 * width + depth * 5).map(|_| rng.random_range(-1.0..1.0)).collect();
                let starts: Vec<usize> = (0..depth).map(|_| rng.random_range(0..=b.len() - width)).collect();
                let packed = pack(isa, rows, depth, |r, k| a[r * depth + k]);
                let c_stride = width + 3;
                let c = isa.dispatch(Product { a: &packed, b: &b, starts: &starts, shape: [rows, depth, width], c_stride });
                for r in 0..rows {
                    for n in 0..width {
                        let expected: f32 = (0..depth).map(|k| a[r * depth + k] * b[starts[k] + n]).sum();
                        let got = c[r * c_stride + n];
                        prop_assert!((got - expected).abs() <= 1e-5 * (1.0 + expected.abs()),
                            "{isa} ({r}, {n}): {got} against {expected}");
                    }
                }
            }
        }
    }

    /// Not a test: the product alone on `cnn4`'s Winograd shapes, with each register block, on
    /// one thread (`cargo test --release -p cnn --lib product_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn product_speed() {
        struct Speed(usize, usize, [usize; 3]);
        impl Kernel for Speed {
            type Output = f64;
            #[inline(always)]
            fn run<S: Simd>(self, s: S) -> f64 {
                let Speed(rows, width, [oc, c, tiles]) = self;
                let a = vec![0.01; oc.next_multiple_of(rows) * c];
                let b = vec![0.5; c * tiles];
                let mut m = vec![0.0; oc * tiles];
                let mut best = f64::MAX;
                for _ in 0..30 {
                    let t = std::time::Instant::now();
                    for _ in 0..20 {
                        let (b, m) = (
                            std::hint::black_box(&b[..]),
                            std::hint::black_box(&mut m[..]),
                        );
                        let operands =
                            (&a[..], (b, Strided(tiles)), m, [oc, c, tiles], tiles, width);
                        match rows {
                            8 => product_blocks::<S, Strided, 8>(
                                s, operands.0, operands.1, operands.2, operands.3, operands.4,
                                operands.5,
                            ),
                            6 => product_blocks::<S, Strided, 6>(
                                s, operands.0, operands.1, operands.2, operands.3, operands.4,
                                operands.5,
                            ),
                            4 => product_blocks::<S, Strided, 4>(
                                s, operands.0, operands.1, operands.2, operands.3, operands.4,
                                operands.5,
                            ),
                            _ => product_blocks::<S, Strided, 3>(
                                s, operands.0, operands.1, operands.2, operands.3, operands.4,
                                operands.5,
                            ),
                        }
                    }
                    best = best.min(t.elapsed().as_secs_f64() / 20.0);
                }
                (2 * oc * c * tiles) as f64 / best / 1e9
            }
        }
        for isa in Isa::supported() {
            for shape in [
                [32, 32, 256],
                [64, 32, 128],
                [64, 64, 128],
                [64, 64, 64],
                [6, 25, 896],
            ] {
                let mut line = format!("{isa} {shape:?}:");
                for (rows, width) in [
                    (8, 1),
                    (8, 2),
                    (8, 3),
                    (6, 2),
                    (6, 3),
                    (4, 2),
                    (4, 3),
                    (3, 3),
                ] {
                    line += &format!(
                        " {rows}x{width} {:.0}",
                        isa.dispatch(Speed(rows, width, shape))
                    );
                }
                println!("{line} GFLOP/s");
            }
        }
    }
}
