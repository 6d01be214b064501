//! [`Simd`] with AVX2 and FMA: 8 floats to a register, masks as vectors of lanes.

use super::{Isa, Kernel, Simd};
use std::arch::x86_64::*;

/// Proof that the CPU has AVX2 and FMA.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    pub fn new() -> Option<Self> {
        (std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
            .then_some(Avx2(()))
    }
}

/// Registers of columns in a stretch of the packed product ([`Isa::product_block`]): 3 on
/// Intel's cores, 2 on the others. 4 rows by 3 registers keep 12 sums, 3 loaded columns and a
/// broadcast in the 16 registers: on an Intel Xeon (AVX-512 hidden) 4-10% faster than 4 by 2
/// (`packed::tests::product_speed`), and LeNet-5's batch-1 latency 9% lower; on an AMD EPYC Zen
/// 3, 4 by 2 measured best. The vendor is read once.
pub fn product_width() -> usize {
    static WIDTH: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WIDTH.get_or_init(|| {
        let id = __cpuid(0);
        let mut vendor = [0u8; 12];
        for (part, register) in vendor.chunks_exact_mut(4).zip([id.ebx, id.edx, id.ecx]) {
            part.copy_from_slice(&register.to_le_bytes());
        }
        if &vendor == b"GenuineIntel" {
            3
        } else {
            2
        }
    })
}

/// Runs `kernel` compiled for AVX2 and FMA.
///
/// # Safety
/// None beyond holding the token (which proves the CPU has the instructions); `unsafe` only
/// because the function enables target features.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn run<K: Kernel>(simd: Avx2, kernel: K) -> K::Output {
    kernel.run(simd)
}

/// Lanes `low..high` of a masked load or store: all-ones in `lanes` for the masked load, the
/// bounds for the store, which goes out as plain stores. `vmaskmovps` stores are microcoded on
/// AMD's cores: measured on an AMD EPYC Zen 3, 6 ns each against 0.3 for a plain store (and
/// against 0.3 for a masked load, which is kept).
#[derive(Clone, Copy, Debug)]
pub struct LaneMask {
    lanes: __m256i,
    low: u8,
    high: u8,
}

impl LaneMask {
    fn full(&self) -> bool {
        self.low == 0 && self.high == 8
    }
}

// SAFETY (every `unsafe` block below that calls an intrinsic): an `Avx2` exists only when the
// CPU has AVX2 and FMA (`Avx2::new`); the memory each load or store touches is the caller's
// contract (see `Simd`).
impl Simd for Avx2 {
    const ISA: Isa = Isa::Avx2;
    const LANES: usize = 8;
    type V = __m256;
    type Mask = LaneMask;
    /// All-ones lanes where the condition holds.
    type Condition = __m256;

    #[inline(always)]
    fn zero(self) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, value: f32) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_set1_ps(value) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn mask(self, low: isize, high: isize) -> LaneMask {
        let (low, high) = (low.clamp(0, 8), high.clamp(0, 8));
        // SAFETY: see above.
        let lanes = unsafe {
            let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            // low <= lane < high, as low - 1 < lane and lane < high.
            _mm256_and_si256(
                _mm256_cmpgt_epi32(index, _mm256_set1_epi32(low as i32 - 1)),
                _mm256_cmpgt_epi32(_mm256_set1_epi32(high as i32), index),
            )
        };
        LaneMask {
            lanes,
            low: low as u8,
            high: high.max(low) as u8,
        }
    }
    #[inline(always)]
    unsafe fn load(self, at: *const f32) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_loadu_ps(at) }
    }
    #[inline(always)]
    unsafe fn store(self, at: *mut f32, value: __m256) {
        // SAFETY: see above.
        unsafe { _mm256_storeu_ps(at, value) }
    }
    #[inline(always)]
    unsafe fn load_masked(self, at: *const f32, mask: LaneMask) -> __m256 {
        // SAFETY: see above; a full mask reads every lane, and `_mm256_maskload_ps` reads
        // no masked-off lane.
        unsafe {
            if mask.full() {
                _mm256_loadu_ps(at)
            } else {
                _mm256_maskload_ps(at, mask.lanes)
            }
        }
    }
    #[inline(always)]
    unsafe fn store_masked(self, at: *mut f32, mask: LaneMask, value: __m256) {
        let (low, high) = (mask.low as usize, mask.high as usize);
        if mask.full() {
            // SAFETY: see above; a full mask writes every lane.
            unsafe { _mm256_storeu_ps(at, value) };
            return;
        }
        if high == low {
            return;
        }
        // SAFETY: see above; the lanes `low..high` go out as at most three plain stores of 4,
        // 2 and 1 floats at `at + low..at + high`, and no other lane is written.
        unsafe {
            // Lane `low` moved to lane 0 (the permutation reads the index modulo 8).
            let value = if low == 0 {
                value
            } else {
                let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                _mm256_permutevar8x32_ps(
                    value,
                    _mm256_add_epi32(index, _mm256_set1_epi32(low as i32)),
                )
            };
            let (mut to, mut count) = (at.add(low), high - low);
            let mut part = _mm256_castps256_ps128(value);
            if count >= 4 {
                _mm_storeu_ps(to, part);
                part = _mm256_extractf128_ps::<1>(value);
                (to, count) = (to.add(4), count - 4);
            }
            if count >= 2 {
                _mm_storel_epi64(to.cast::<__m128i>(), _mm_castps_si128(part));
                part = _mm_movehl_ps(part, part);
                (to, count) = (to.add(2), count - 2);
            }
            if count == 1 {
                _mm_store_ss(to, part);
            }
        }
    }
    #[inline(always)]
    fn deinterleave(self, a: __m256, b: __m256) -> (__m256, __m256) {
        // SAFETY: see above.
        unsafe {
            // Within each 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6; then the middle 64-bit
            // pairs swapped: a0 a2 a4 a6 b0 b2 b4 b6.
            let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
            let order = |v: __m256| {
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
            };
            (order(even), order(odd))
        }
    }
    #[inline(always)]
    fn greater(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(a, b) }
    }
    #[inline(always)]
    fn select(self, condition: __m256, if_true: __m256, if_false: __m256) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_blendv_ps(if_false, if_true, condition) }
    }
    #[inline(always)]
    fn sum(self, v: __m256) -> f32 {
        // SAFETY: see above.
        unsafe {
            let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
            _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
        }
    }
    #[inline(always)]
    fn interleave(self, a: __m256, b: __m256) -> (__m256, __m256) {
        // SAFETY: see above.
        unsafe {
            // a0 b0 a1 b1 | a4 b4 a5 b5 and a2 b2 a3 b3 | a6 b6 a7 b7, then the halves
            // regrouped.
            let low = _mm256_unpacklo_ps(a, b);
            let high = _mm256_unpackhi_ps(a, b);
            (
                _mm256_permute2f128_ps::<0x20>(low, high),
                _mm256_permute2f128_ps::<0x31>(low, high),
            )
        }
    }
}
