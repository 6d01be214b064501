//! [`Simd`] with AVX-512F: 16 floats to a register, masks in mask registers.

use super::{Isa, Kernel, Simd};
use std::arch::x86_64::*;

/// Proof that the CPU has AVX-512F.
#[derive(Clone, Copy, Debug)]
pub struct Avx512(());

impl Avx512 {
    pub fn new() -> Option<Self> {
        std::arch::is_x86_feature_detected!("avx512f").then_some(Avx512(()))
    }
}

/// Runs `kernel` compiled for AVX-512F.
///
/// # Safety
/// None beyond holding the token (which proves the CPU has the instructions); `unsafe` only
/// because the function enables a target feature.
#[target_feature(enable = "avx512f")]
pub unsafe fn run<K: Kernel>(simd: Avx512, kernel: K) -> K::Output {
    kernel.run(simd)
}

// SAFETY (every `unsafe` block below that calls an intrinsic): an `Avx512` exists only when the
// CPU has AVX-512F (`Avx512::new`); the memory each load or store touches is the caller's
// contract (see `Simd`).
impl Simd for Avx512 {
    const ISA: Isa = Isa::Avx512;
    const LANES: usize = 16;
    type V = __m512;
    type Mask = __mmask16;
    type Condition = __mmask16;

    #[inline(always)]
    fn zero(self) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, value: f32) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_set1_ps(value) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn mask(self, low: isize, high: isize) -> __mmask16 {
        let (low, high) = (low.clamp(0, 16), high.clamp(0, 16));
        let below = |k: isize| ((1u32 << k) - 1) as u16;
        if high <= low {
            0
        } else {
            below(high) & !below(low)
        }
    }
    #[inline(always)]
    unsafe fn load(self, at: *const f32) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_loadu_ps(at) }
    }
    #[inline(always)]
    unsafe fn store(self, at: *mut f32, value: __m512) {
        // SAFETY: see above.
        unsafe { _mm512_storeu_ps(at, value) }
    }
    #[inline(always)]
    unsafe fn load_masked(self, at: *const f32, mask: __mmask16) -> __m512 {
        // SAFETY: see above; masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(mask, at) }
    }
    #[inline(always)]
    unsafe fn store_masked(self, at: *mut f32, mask: __mmask16, value: __m512) {
        // SAFETY: see above; masked-off lanes are not written.
        unsafe { _mm512_mask_storeu_ps(at, mask, value) }
    }
    #[inline(always)]
    fn deinterleave(self, a: __m512, b: __m512) -> (__m512, __m512) {
        // SAFETY: see above.
        unsafe {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            (
                _mm512_permutex2var_ps(a, even, b),
                _mm512_permutex2var_ps(a, odd, b),
            )
        }
    }
    #[inline(always)]
    fn greater(self, a: __m512, b: __m512) -> __mmask16 {
        // SAFETY: see above.
        unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b) }
    }
    #[inline(always)]
    fn select(self, condition: __mmask16, if_true: __m512, if_false: __m512) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_mask_blend_ps(condition, if_false, if_true) }
    }
    #[inline(always)]
    fn sum(self, v: __m512) -> f32 {
        // SAFETY: see above.
        unsafe { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    fn interleave(self, a: __m512, b: __m512) -> (__m512, __m512) {
        // SAFETY: see above.
        unsafe {
            let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let high =
                _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            (
                _mm512_permutex2var_ps(a, low, b),
                _mm512_permutex2var_ps(a, high, b),
            )
        }
    }
}
