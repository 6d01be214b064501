//! Instruction sets: the one place where the engine chooses between AVX-512, AVX2 + FMA and
//! plain Rust. The SIMD kernels (Winograd, direct convolution, their epilogues) are written once
//! over the [`Simd`] trait, whose three implementations map each operation onto one register
//! of 16 or 8 floats ([`avx512`], [`avx2`]) or onto a loop over an array of 8 ([`portable`],
//! which any target compiles, aarch64 and wasm32 included).
//!
//! A kernel runs through [`Isa::dispatch`], which calls it inside a function compiled for that
//! instruction set, so that the trait's `#[inline(always)]` operations become single
//! instructions. Which [`Isa`] a layer uses is decided once, when the layer is built
//! ([`Isa::from_env`]: the best the CPU has, or what `CNN_KERNELS` asks for).
//!
//! Why a small trait over `std::arch` and not `pulp` (which `gemm` already brings): the kernels
//! need masked loads at lane offsets that may start before the row (the left padding), two-
//! register even/odd splits and interleaves, and register blocks sized to each register file
//! (32 registers with AVX-512, 16 with AVX2); those are a dozen operations here, each one or
//! two intrinsics chosen and measured for these kernels, and the AVX-512 code measured before
//! keeps its instructions exactly.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod portable;

use crate::error::{Error, Result};
use std::fmt;

/// The instruction set a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// Plain Rust over arrays of 8 floats, which the compiler vectorises for whatever the
    /// target's baseline offers.
    Portable,
    /// AVX2 and FMA: registers of 8 floats, 16 of them.
    Avx2,
    /// AVX-512F: registers of 16 floats, 32 of them, and lane masks.
    Avx512,
}

/// The environment variable that forces an instruction set (`avx512`, `avx2`, `portable`, or
/// `auto`, the default).
pub const ISA_VARIABLE: &str = "CNN_KERNELS";

impl Isa {
    /// Every instruction set, best first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run kernels compiled for `self`.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::Avx2::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::Avx512::new().is_some(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The instruction sets this CPU can run, best first.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }

    /// The best instruction set this CPU has.
    pub fn best() -> Isa {
        Isa::supported()[0]
    }

    /// `auto` (the best this CPU has) or the name of an instruction set this CPU can run.
    pub fn parse(name: &str) -> Result<Isa> {
        let name = name.trim();
        if name.is_empty() || name.eq_ignore_ascii_case("auto") {
            return Ok(Isa::best());
        }
        let isa = Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{ISA_VARIABLE}={name}: unknown instruction set (expected auto, avx512, avx2 or portable)"
                ))
            })?;
        if !isa.is_supported() {
            let has: Vec<&str> = Isa::supported().iter().map(|isa| isa.name()).collect();
            return Err(Error::Invalid(format!(
                "{ISA_VARIABLE}={name}: this CPU cannot run {} kernels (it has: {})",
                isa.name(),
                has.join(", ")
            )));
        }
        Ok(isa)
    }

    /// What `CNN_KERNELS` asks for (unset: the best this CPU has). Read when a network is
    /// built, never per call.
    pub fn from_env() -> Result<Isa> {
        match std::env::var(ISA_VARIABLE) {
            Ok(name) => Isa::parse(&name),
            Err(std::env::VarError::NotPresent) => Ok(Isa::best()),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(Error::Invalid(format!("{ISA_VARIABLE} is not valid UTF-8")))
            }
        }
    }

    /// Floats in one register.
    pub const fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 | Isa::Portable => 8,
        }
    }

    /// The register block of the packed product of a matrix `A` of `rows` rows (a layer's
    /// output channels): how many rows it keeps in registers at once (`A` is packed in blocks
    /// of that many), and how many registers of columns each of them holds at most: what fits
    /// the register file beside the loaded columns and one broadcast weight (with AVX2, which
    /// CPU runs it decides: see [`avx2::product_width`]). Blocks of six rows where they pad
    /// less: LeNet-5's first layer has 6 channels, which blocks of 8 or 4 pad to 8 (measured
    /// with `packed::tests::product_speed` on its shape: 192 against 142 GFLOP/s with AVX-512,
    /// 106-109 against 88 with AVX2).
    pub fn product_block(self, rows: usize) -> (usize, usize) {
        let (usual, six_rows) = match self {
            Isa::Avx512 => ((8, 3), (6, 3)),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => ((4, avx2::product_width()), (6, 2)),
            _ => ((4, 2), (6, 2)),
        };
        if rows.next_multiple_of(6) < rows.next_multiple_of(usual.0) {
            six_rows
        } else {
            usual
        }
    }

    /// The blocks of output channels the direct convolution can compute together, largest
    /// first (its weights are blocked by the one chosen for a layer): each channel of a block
    /// keeps two rows of one register in registers, beside two loaded rows and one broadcast
    /// weight.
    pub const fn direct_channel_blocks(self) -> &'static [usize] {
        match self {
            Isa::Avx512 => &[8, 6],
            Isa::Avx2 => &[6, 4],
            Isa::Portable => &[4],
        }
    }

    /// Runs `kernel` with this instruction set's [`Simd`], inside a function compiled for it.
    /// Panics if the CPU cannot run it: [`Isa::parse`] and [`Isa::best`] only give ones it can.
    #[inline]
    pub fn dispatch<K: Kernel>(self, kernel: K) -> K::Output {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                let simd = avx512::Avx512::new().expect("a CPU with AVX-512F");
                // SAFETY: `simd` exists, so the CPU has AVX-512F.
                unsafe { avx512::run(simd, kernel) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                let simd = avx2::Avx2::new().expect("a CPU with AVX2 and FMA");
                // SAFETY: `simd` exists, so the CPU has AVX2 and FMA.
                unsafe { avx2::run(simd, kernel) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2 => panic!("{} kernels on a CPU that is not x86-64", self),
            Isa::Portable => kernel.run(portable::Portable),
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A kernel written over the vector width: [`Isa::dispatch`] calls `run` with the chosen
/// instruction set's [`Simd`]. (A closure cannot be generic over `S`, hence a trait.) No
/// [`Simd`] operation inside a closure in a kernel either, unless it is trivially inlined: a
/// closure is compiled without the instruction set that `run` is compiled for, and where the
/// compiler keeps it out of line the operations in it become calls (with AVX2, 8% of
/// ResNet-20's time went to calls of `_mm256_cmpgt_epi32` made this way).
pub trait Kernel {
    type Output;
    fn run<S: Simd>(self, simd: S) -> Self::Output;
}

/// The register operations the SIMD kernels are written with. A value of an implementing type
/// is a token: it exists only on a CPU that has the instructions, which is what makes the
/// operations safe to call.
///
/// Loads and stores take raw pointers because the masked ones are given addresses outside
/// the buffer for their masked-off lanes (the columns left of an image row, under the
/// padding), which they never touch.
pub trait Simd: Copy + Send + Sync + 'static {
    /// The instruction set this is.
    const ISA: Isa;
    /// Floats per register.
    const LANES: usize;
    /// A register of `LANES` floats.
    type V: Copy;
    /// Which lanes of a register a masked load or store touches.
    type Mask: Copy;
    /// Which lanes of a comparison hold, for [`Simd::select`].
    type Condition: Copy;

    fn zero(self) -> Self::V;
    fn splat(self, value: f32) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused (one rounding) where the instruction set has it.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;

    /// Lanes `low..high`, clamped to `0..LANES` (empty when `high <= low`).
    fn mask(self, low: isize, high: isize) -> Self::Mask;

    /// # Safety
    /// `LANES` floats from `at` must be readable.
    unsafe fn load(self, at: *const f32) -> Self::V;
    /// # Safety
    /// `LANES` floats from `at` must be writable.
    unsafe fn store(self, at: *mut f32, value: Self::V);
    /// The masked lanes of `at..at + LANES`, zero in the others, which are not read.
    ///
    /// # Safety
    /// Every lane in `mask` must be readable.
    unsafe fn load_masked(self, at: *const f32, mask: Self::Mask) -> Self::V;
    /// Writes the masked lanes of `value` to `at..at + LANES`; the others are not touched.
    ///
    /// # Safety
    /// Every lane in `mask` must be writable.
    unsafe fn store_masked(self, at: *mut f32, mask: Self::Mask, value: Self::V);

    /// The even- and odd-indexed values of the `2 * LANES` values `a` then `b`.
    fn deinterleave(self, a: Self::V, b: Self::V) -> (Self::V, Self::V);
    /// The lanes where `a > b` (not where either is NaN).
    fn greater(self, a: Self::V, b: Self::V) -> Self::Condition;
    /// `if_true` in the lanes of `condition`, `if_false` in the others.
    fn select(self, condition: Self::Condition, if_true: Self::V, if_false: Self::V) -> Self::V;
    /// The inverse of [`Simd::deinterleave`]: `a0 b0 a1 b1 ...`, as two registers.
    fn interleave(self, a: Self::V, b: Self::V) -> (Self::V, Self::V);
    /// The sum of the lanes (in an order fixed for the instruction set).
    fn sum(self, v: Self::V) -> f32;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of every instruction set this CPU has, against plain arithmetic on
    /// arrays.
    struct Operations;

    impl Kernel for Operations {
        type Output = ();
        fn run<S: Simd>(self, s: S) {
            let n = S::LANES;
            let a: Vec<f32> = (0..n).map(|i| i as f32 - 3.5).collect();
            let b: Vec<f32> = (0..n).map(|i| (i * i) as f32 * 0.25).collect();
            let c: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
            // SAFETY: every buffer holds LANES floats.
            let (va, vb, vc) =
                unsafe { (s.load(a.as_ptr()), s.load(b.as_ptr()), s.load(c.as_ptr())) };
            let out = |v: S::V| {
                let mut values = vec![0.0; n];
                // SAFETY: as above.
                unsafe { s.store(values.as_mut_ptr(), v) };
                values
            };
            let each = |f: &dyn Fn(usize) -> f32| (0..n).map(f).collect::<Vec<f32>>();
            assert_eq!(out(s.add(va, vb)), each(&|i| a[i] + b[i]), "{} add", S::ISA);
            assert_eq!(out(s.sub(va, vb)), each(&|i| a[i] - b[i]), "{} sub", S::ISA);
            assert_eq!(
                out(s.max(va, vb)),
                each(&|i| a[i].max(b[i])),
                "{} max",
                S::ISA
            );
            assert_eq!(
                out(s.mul_add(va, vb, vc)),
                each(&|i| a[i].mul_add(b[i], c[i])),
                "{} mul_add",
                S::ISA
            );
            assert_eq!(out(s.splat(2.5)), vec![2.5; n], "{} splat", S::ISA);
            assert_eq!(out(s.zero()), vec![0.0; n], "{} zero", S::ISA);
            let (even, odd) = s.deinterleave(va, vb);
            let joined: Vec<f32> = a.iter().chain(&b).copied().collect();
            assert_eq!(out(even), each(&|i| joined[2 * i]), "{} even", S::ISA);
            assert_eq!(out(odd), each(&|i| joined[2 * i + 1]), "{} odd", S::ISA);
            assert_eq!(s.sum(va), a.iter().sum::<f32>(), "{} sum", S::ISA);
            // Ties and NaN too: `a > b` holds in neither.
            let mut d = b.clone();
            d[0] = a[0];
            d[1] = f32::NAN;
            // SAFETY: as above.
            let vd = unsafe { s.load(d.as_ptr()) };
            assert_eq!(
                out(s.select(s.greater(va, vd), va, vc)),
                each(&|i| if a[i] > d[i] { a[i] } else { c[i] }),
                "{} select where greater",
                S::ISA
            );
            assert_eq!(
                out(s.select(s.greater(vd, va), va, vc)),
                each(&|i| if d[i] > a[i] { a[i] } else { c[i] }),
                "{} select where less",
                S::ISA
            );
            let (low, high) = s.interleave(va, vb);
            let zipped: Vec<f32> = a.iter().zip(&b).flat_map(|(&x, &y)| [x, y]).collect();
            assert_eq!(out(low), zipped[..n], "{} interleave low", S::ISA);
            assert_eq!(out(high), zipped[n..], "{} interleave high", S::ISA);
            // Every length from every start (each way a store splits into parts), and bounds
            // past either end.
            let every_range =
                (0..=n as isize).flat_map(|low| (low..=n as isize).map(move |high| (low, high)));
            for (low, high) in every_range.chain([(-3, 2), (5, 2), (3, 100), (-9, -1)]) {
                let inside = |i: usize| (low..high).contains(&(i as isize));
                let mask = s.mask(low, high);
                // SAFETY: as above.
                let loaded = unsafe { s.load_masked(a.as_ptr(), mask) };
                assert_eq!(
                    out(loaded),
                    each(&|i| if inside(i) { a[i] } else { 0.0 }),
                    "{} load {low}..{high}",
                    S::ISA
                );
                // A register's worth of guard values on either side: a store that wrote past
                // its lanes would change them.
                let mut stored = vec![-1.0; 3 * n];
                // SAFETY: `stored` holds LANES floats from n.
                unsafe { s.store_masked(stored.as_mut_ptr().add(n), mask, va) };
                assert_eq!(
                    stored[n..2 * n],
                    each(&|i| if inside(i) { a[i] } else { -1.0 }),
                    "{} store {low}..{high}",
                    S::ISA
                );
                assert!(
                    stored[..n]
                        .iter()
                        .chain(&stored[2 * n..])
                        .all(|&v| v == -1.0),
                    "{} store {low}..{high} wrote outside its register",
                    S::ISA
                );
            }
        }
    }

    #[test]
    fn every_supported_instruction_set_computes_each_operation() {
        for isa in Isa::supported() {
            isa.dispatch(Operations);
        }
        assert_eq!(Isa::supported().last(), Some(&Isa::Portable));
    }

    #[test]
    fn names_parse_and_unknown_or_missing_ones_are_refused() {
        assert_eq!(Isa::parse("auto").unwrap(), Isa::best());
        assert_eq!(Isa::parse("portable").unwrap(), Isa::Portable);
        let error = Isa::parse("sse9").unwrap_err().to_string();
        assert!(error.contains("unknown instruction set"), "{error}");
        for isa in Isa::ALL {
            match Isa::parse(isa.name()) {
                Ok(parsed) => assert_eq!(parsed, isa),
                Err(e) => {
                    assert!(!isa.is_supported());
                    assert!(e.to_string().contains("it has: "), "{e}");
                }
            }
        }
    }
}
