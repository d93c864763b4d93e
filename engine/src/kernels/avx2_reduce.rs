//! Horizontal sums for the single-token tiles of `avx2_lanes.rs`: 8 vectors in, one vector
//! whose lane `p` sums vector `p`'s lanes, without `hadd`.

use std::arch::x86_64::*;

/// Lane `p` of the result = the sum of the 8 i32 lanes of `m[p]`. Blends (any vector pipe) and
/// one in-lane shuffle per step: `hadd` costs two shuffles and runs at one per two cycles on
/// Zen 3, which made it the bottleneck.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn reduce8(m: &[__m256i; 8]) -> __m256i {
    // [a0+a1, b0+b1, a2+a3, b2+b3 | same for lanes 4-7]
    #[target_feature(enable = "avx2")]
    #[inline]
    fn step1(a: __m256i, b: __m256i) -> __m256i {
        let t = _mm256_blend_epi32::<0xAA>(a, b);
        let u = _mm256_shuffle_epi32::<0xB1>(_mm256_blend_epi32::<0xAA>(b, a));
        _mm256_add_epi32(t, u)
    }
    // From two step1 results: [a, b, c, d] per 128-bit half (sums of its lanes).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn step2(ab: __m256i, cd: __m256i) -> __m256i {
        let t = _mm256_blend_epi32::<0xCC>(ab, cd);
        let u = _mm256_shuffle_epi32::<0x4E>(_mm256_blend_epi32::<0xCC>(cd, ab));
        _mm256_add_epi32(t, u)
    }
    let lo = step2(step1(m[0], m[1]), step1(m[2], m[3]));
    let hi = step2(step1(m[4], m[5]), step1(m[6], m[7]));
    // [m0..m3 low halves | m4..m7 high halves] + [m0..m3 high halves | m4..m7 low halves].
    _mm256_add_epi32(
        _mm256_blend_epi32::<0xF0>(lo, hi),
        _mm256_permute2x128_si256::<0x21>(lo, hi),
    )
}

/// Q4_1 only (`maddubs` lanes within +-2*15*127, so 8 of them fit in an i16): lane `p` of the
/// result = the sum of the 16 i16 lanes of `m[p]`, one `madd` for all 8 (instead of one each).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn reduce8_i16(m: &[__m256i; 8]) -> __m256i {
    // Per half, i16 couples (a_k, b_k), k = 0..3, each a sum of two of the half's lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn step1(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi16(_mm256_unpacklo_epi16(a, b), _mm256_unpackhi_epi16(a, b))
    }
    // Couples of two step1 results: [(a,b), (c,d), (a,b), (c,d)], each a sum of 4 lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn step2(ab: __m256i, cd: __m256i) -> __m256i {
        let t = _mm256_blend_epi32::<0xAA>(ab, cd);
        let u = _mm256_shuffle_epi32::<0xB1>(_mm256_blend_epi32::<0xAA>(cd, ab));
        _mm256_add_epi16(t, u)
    }
    // [a, b, c, d, e, f, g, h] per half (i16, at most 8*3810 in magnitude).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn step3(abcd: __m256i, efgh: __m256i) -> __m256i {
        let t = _mm256_blend_epi32::<0xCC>(abcd, efgh);
        let u = _mm256_shuffle_epi32::<0x4E>(_mm256_blend_epi32::<0xCC>(efgh, abcd));
        _mm256_add_epi16(t, u)
    }
    let z = step3(
        step2(step1(m[0], m[1]), step1(m[2], m[3])),
        step2(step1(m[4], m[5]), step1(m[6], m[7])),
    );
    // [a..d low, a..d high | e..h low, e..h high], then each pair's low and high side by side,
    // and `madd` sums them into i32.
    let z = _mm256_permute4x64_epi64::<0b11_01_10_00>(z);
    let pair = _mm256_setr_epi8(
        0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15, //
        0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15,
    );
    _mm256_madd_epi16(_mm256_shuffle_epi8(z, pair), _mm256_set1_epi16(1))
}
