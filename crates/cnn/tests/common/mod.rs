//! Helpers shared by the integration tests: seeded random data, tensors, finite differences and
//! tolerant comparison. Each test file uses a different subset of them.
#![allow(dead_code)]

use cnn::{Shape, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The tests' random generator.
pub type TestRng = ChaCha8Rng;

/// A seeded generator, so that every failure replays.
pub fn rng(seed: u64) -> TestRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `len` values drawn uniformly from `[low, high)`.
pub fn uniform(rng: &mut impl Rng, len: usize, low: f32, high: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(low..high)).collect()
}

/// `len` distinct values in random order, every two at least `gap` apart and every one at least
/// `gap / 2` away from zero: the half-integer multiples of `gap` around zero, shuffled. With a
/// finite-difference step below `gap / 2`, no nudge can cross a ReLU kink or change which value
/// of a max-pooling window is largest.
pub fn distinct(rng: &mut impl Rng, len: usize, gap: f32) -> Vec<f32> {
    let half = (len / 2) as f32;
    let mut values: Vec<f32> = (0..len).map(|i| (i as f32 - half + 0.5) * gap).collect();
    values.shuffle(rng);
    values
}

pub fn tensor(batch: usize, shape: Shape, data: Vec<f32>) -> Tensor {
    Tensor::from_vec(batch, shape, data).expect("data fits the shape")
}

/// Central differences `(f(x + eps) - f(x - eps)) / (x + eps - (x - eps))` with respect to
/// every entry of `values`. `at(i, v)` evaluates the objective with entry `i` set to `v` and
/// every other entry as in `values`. Dividing by the step actually taken in f32, rather than
/// by `2 eps`, keeps the rounding of `x ± eps` out of the estimate.
pub fn central_differences(
    values: &[f32],
    eps: f32,
    mut at: impl FnMut(usize, f32) -> f64,
) -> Vec<f64> {
    values
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let (up, down) = (x + eps, x - eps);
            (at(i, up) - at(i, down)) / (f64::from(up) - f64::from(down))
        })
        .collect()
}

/// Central differences of `loss` with respect to every value of `input`, nudging one value at
/// a time in a copy of it.
pub fn input_differences(input: &Tensor, eps: f32, loss: impl Fn(&Tensor) -> f64) -> Vec<f64> {
    let mut nudged = input.clone();
    central_differences(input.data(), eps, |i, v| {
        let original = nudged.data()[i];
        nudged.data_mut()[i] = v;
        let value = loss(&nudged);
        nudged.data_mut()[i] = original;
        value
    })
}

/// `|a - b| / max(|a|, |b|, floor)`: relative error, turning absolute near zero.
pub fn relative_error(a: f64, b: f64, floor: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(floor)
}

/// Largest [`relative_error`] between paired entries (0 for empty slices).
pub fn max_relative_error(actual: &[f64], expected: &[f64], floor: f64) -> f64 {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    actual
        .iter()
        .zip(expected)
        .map(|(&a, &b)| relative_error(a, b, floor))
        .fold(0.0, f64::max)
}

/// Panics, naming the worst entry, unless every pair agrees within `tolerance` in the sense of
/// [`relative_error`]. Returns the largest error, for diagnostics.
pub fn assert_close(what: &str, actual: &[f64], expected: &[f64], floor: f64, tolerance: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let worst = actual
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (&a, &b))| (i, a, b, relative_error(a, b, floor)))
        .max_by(|x, y| x.3.total_cmp(&y.3));
    if let Some((i, a, b, error)) = worst {
        assert!(
            error <= tolerance,
            "{what}: entry {i} is {a}, expected {b} (relative error {error:.3e} > {tolerance:.0e})"
        );
    }
}

/// f32 values widened, to compare with f64 estimates.
pub fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}
