//! SGEMM crates compared on the matrix shapes this engine multiplies: `gemm` against
//! `matrixmultiply`, single-threaded (how conv calls it, one chunk of the batch per core).
//! Run: `cargo bench -p cnn --bench gemm`. The README quotes the result and the choice.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

/// (what, m, n, k): `C[m x n] += A[m x k] B[k x n]`.
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("lenet5 conv1 fwd", 6, 784, 25),
    ("lenet5 conv2 fwd", 16, 100, 150),
    ("cnn4 conv1 fwd", 32, 784, 9),
    ("cnn4 conv2 fwd", 32, 784, 288),
    ("cnn4 conv4 fwd", 64, 196, 576),
    ("cnn4 dense1 b64", 64, 128, 3136),
    ("square 256", 256, 256, 256),
];

fn with_gemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    // SAFETY: a is m x k, b is k x n, c is m x n, all row-major and exactly that long.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

fn with_matrixmultiply(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    // SAFETY: as above.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            1.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

fn compare(c: &mut Criterion) {
    let mut group = c.benchmark_group("sgemm");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    for &(what, m, n, k) in SHAPES {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut out = vec![0.0; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_function(BenchmarkId::new("gemm", what), |bench| {
            bench.iter(|| with_gemm(m, n, k, black_box(&a), black_box(&b), &mut out))
        });
        group.bench_function(BenchmarkId::new("matrixmultiply", what), |bench| {
            bench.iter(|| with_matrixmultiply(m, n, k, black_box(&a), black_box(&b), &mut out))
        });
    }
    group.finish();
}

criterion_group!(benches, compare);
criterion_main!(benches);
