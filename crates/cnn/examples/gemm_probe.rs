use std::time::Instant;
fn g(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
fn main() {
    for &(m, n, k) in &[
        (32usize, 784usize, 288usize),
        (64, 196, 576),
        (64, 980, 576),
        (64, 784, 288),
        (32, 1568, 288),
        (16, 500, 150),
        (16, 1000, 150),
        (6, 784, 25),
        (6, 1568, 25),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0.0; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let reps = ((2e9 / flops) as usize).max(10);
        for _ in 0..reps / 10 {
            g(m, n, k, &a, &b, &mut c);
        }
        let t = Instant::now();
        for _ in 0..reps {
            g(m, n, k, &a, &b, &mut c);
        }
        let s = t.elapsed().as_secs_f64();
        println!("{m}x{n}x{k}: {:.1} GFLOP/s", flops * reps as f64 / s / 1e9);
    }
}
