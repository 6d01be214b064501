//! [`Simd`] in plain Rust: a "register" is an array of 8 floats and every operation a loop
//! over it, which the compiler turns into whatever vector instructions the target's baseline
//! has (SSE2 on x86-64, NEON on aarch64, simd128 on wasm32 when enabled).

use super::{Isa, Simd};

/// Available everywhere.
#[derive(Clone, Copy, Debug)]
pub struct Portable;

const LANES: usize = 8;

/// Eight floats.
#[derive(Clone, Copy, Debug)]
pub struct F32x8([f32; LANES]);

/// Lanes `low..high`.
#[derive(Clone, Copy, Debug)]
pub struct LaneRange {
    low: usize,
    high: usize,
}

#[inline(always)]
fn each(f: impl Fn(usize) -> f32) -> F32x8 {
    F32x8(std::array::from_fn(f))
}

impl Simd for Portable {
    const ISA: Isa = Isa::Portable;
    const LANES: usize = LANES;
    type V = F32x8;
    type Mask = LaneRange;
    /// All-ones lanes where the condition holds: bit operations, which the baseline's
    /// vector instructions have for any lane count (an array of `bool` compiled to a branch
    /// or a byte per lane).
    type Condition = [u32; LANES];

    #[inline(always)]
    fn zero(self) -> F32x8 {
        F32x8([0.0; LANES])
    }
    #[inline(always)]
    fn splat(self, value: f32) -> F32x8 {
        F32x8([value; LANES])
    }
    #[inline(always)]
    fn add(self, a: F32x8, b: F32x8) -> F32x8 {
        each(|i| a.0[i] + b.0[i])
    }
    #[inline(always)]
    fn sub(self, a: F32x8, b: F32x8) -> F32x8 {
        each(|i| a.0[i] - b.0[i])
    }
    #[inline(always)]
    fn max(self, a: F32x8, b: F32x8) -> F32x8 {
        each(|i| a.0[i].max(b.0[i]))
    }
    /// Fused where the target has FMA; else `a * b + c` rounded twice (a call to `fmaf` for
    /// every lane would be far slower than the kernels it serves).
    #[inline(always)]
    fn mul_add(self, a: F32x8, b: F32x8, c: F32x8) -> F32x8 {
        #[cfg(target_feature = "fma")]
        {
            each(|i| a.0[i].mul_add(b.0[i], c.0[i]))
        }
        #[cfg(not(target_feature = "fma"))]
        {
            each(|i| a.0[i] * b.0[i] + c.0[i])
        }
    }
    #[inline(always)]
    fn mask(self, low: isize, high: isize) -> LaneRange {
        let clamp = |k: isize| k.clamp(0, LANES as isize) as usize;
        LaneRange {
            low: clamp(low),
            high: clamp(high).max(clamp(low)),
        }
    }
    #[inline(always)]
    unsafe fn load(self, at: *const f32) -> F32x8 {
        // SAFETY: the caller guarantees LANES readable floats from `at`.
        F32x8(unsafe { at.cast::<[f32; LANES]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, at: *mut f32, value: F32x8) {
        // SAFETY: the caller guarantees LANES writable floats from `at`.
        unsafe { at.cast::<[f32; LANES]>().write_unaligned(value.0) }
    }
    #[inline(always)]
    unsafe fn load_masked(self, at: *const f32, mask: LaneRange) -> F32x8 {
        let mut values = [0.0; LANES];
        for (i, value) in values.iter_mut().enumerate().take(mask.high).skip(mask.low) {
            // SAFETY: lane i is in the mask, which the caller guarantees readable.
            *value = unsafe { at.wrapping_add(i).read() };
        }
        F32x8(values)
    }
    #[inline(always)]
    unsafe fn store_masked(self, at: *mut f32, mask: LaneRange, value: F32x8) {
        for i in mask.low..mask.high {
            // SAFETY: lane i is in the mask, which the caller guarantees writable.
            unsafe { at.wrapping_add(i).write(value.0[i]) };
        }
    }
    #[inline(always)]
    fn deinterleave(self, a: F32x8, b: F32x8) -> (F32x8, F32x8) {
        let at = |k: usize| if k < LANES { a.0[k] } else { b.0[k - LANES] };
        (each(|i| at(2 * i)), each(|i| at(2 * i + 1)))
    }
    #[inline(always)]
    fn greater(self, a: F32x8, b: F32x8) -> [u32; LANES] {
        std::array::from_fn(|i| 0u32.wrapping_sub((a.0[i] > b.0[i]) as u32))
    }
    #[inline(always)]
    fn select(self, condition: [u32; LANES], if_true: F32x8, if_false: F32x8) -> F32x8 {
        each(|i| {
            let (t, f) = (if_true.0[i].to_bits(), if_false.0[i].to_bits());
            f32::from_bits((t & condition[i]) | (f & !condition[i]))
        })
    }
    #[inline(always)]
    fn sum(self, v: F32x8) -> f32 {
        let halves: [f32; 4] = std::array::from_fn(|i| v.0[i] + v.0[i + 4]);
        (halves[0] + halves[2]) + (halves[1] + halves[3])
    }
    #[inline(always)]
    fn interleave(self, a: F32x8, b: F32x8) -> (F32x8, F32x8) {
        let at = |k: usize| {
            if k.is_multiple_of(2) {
                a.0[k / 2]
            } else {
                b.0[k / 2]
            }
        };
        (each(at), each(|i| at(LANES + i)))
    }
}
