//! The per-block building blocks of the AVX2 lane kernels (`avx2_lanes.rs`): the weight
//! formats and integer-dot variants they are generic over, one weight block's loads, and the
//! integer block sums of 8 (token) lanes for several rows at once (`maddubs` + `madd`, or
//! `vpdpbusd` with VNNI). Exact integer arithmetic only: the float scaling (and so every
//! result's bits) stays in the tiles.

use std::arch::x86_64::*;

use super::{q4_0, q4_1, q8_0};

/// Weight formats the lane kernels run (const generic `K` of the kernels).
pub(super) const Q4_1: u8 = 0;
pub(super) const Q8_0: u8 = 1;
pub(super) const Q4_0: u8 = 2;

/// Bytes of one weight block of format `K`.
pub(super) const fn block_bytes(k: u8) -> usize {
    match k {
        Q4_1 => q4_1::BLOCK_BYTES,
        Q8_0 => q8_0::BLOCK_BYTES,
        _ => q4_0::BLOCK_BYTES,
    }
}

/// Integer dot variants (const generic `V` of the tiles): `maddubs` + `madd`, `vpdpbusd` in its
/// VEX (AVX-VNNI) or EVEX (AVX512-VNNI + VL) encoding.
pub(super) const NO_VNNI: u8 = 0;
pub(super) const AVX_VNNI: u8 = 1;
pub(super) const AVX512_VNNI: u8 = 2;

/// `acc` + the exact sums of each i32 lane's 4 products `u8 * i8` (`vpdpbusd`, no saturation).
/// Safety: `V`'s features (AVX-VNNI, or AVX512-VNNI + VL) available; `V != NO_VNNI`.
#[inline(always)]
pub(super) unsafe fn dpbusd<const V: u8>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    // SAFETY: the caller's precondition.
    unsafe {
        if V == AVX_VNNI {
            _mm256_dpbusd_avx_epi32(acc, u, s)
        } else {
            _mm256_dpbusd_epi32(acc, u, s)
        }
    }
}

/// Bytes on the stack, aligned for vector stores.
#[repr(C, align(32))]
pub(super) struct Buf(pub(super) [u8; 64]);

/// 16 nibble bytes expanded to 32 bytes: low nibbles, then high nibbles.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn nibbles(n: __m128i) -> __m256i {
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(n, 4), n),
        _mm256_set1_epi8(0x0F),
    )
}

/// One weight block at `p` as (its first 4 bytes: `d_w`, then `m_w` for Q4_1; the unsigned
/// operand of `maddubs`; the signed weights for Q8_0/Q4_0). Q4_1's nibbles expand low then high,
/// matching the activations' order; Q8_0/Q4_0 multiply `|w|` by `sign(x, w)`.
/// Safety: AVX2 available and the block's bytes readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn load_block<const K: u8>(p: *const u8) -> (i32, __m256i, __m256i) {
    // SAFETY: unaligned reads inside the block (caller's precondition; every block is at
    // least 18 bytes); GGUF blocks are only 2-byte aligned.
    unsafe {
        let hdr = std::ptr::read_unaligned(p as *const i32);
        match K {
            Q4_1 => {
                let q = nibbles(_mm_loadu_si128(p.add(4) as *const __m128i));
                (hdr, q, q)
            }
            Q8_0 => {
                let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
                (hdr, _mm256_abs_epi8(q), q)
            }
            _ => {
                let n = nibbles(_mm_loadu_si128(p.add(2) as *const __m128i));
                let q = _mm256_sub_epi8(n, _mm256_set1_epi8(8));
                (hdr, _mm256_abs_epi8(q), q)
            }
        }
    }
}

/// A block's integer dot of one weight block (`load_block`'s operands) with 32 activation
/// quants, as 8 i32 lanes to be summed: `maddubs` (u8 x i8 pairs into i16: at most 2*15*127 for
/// Q4_1, 2*128*127 for the sign trick, never saturating) then `madd` with ones.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn block_dot<const K: u8>(wu: __m256i, ws: __m256i, x: __m256i) -> __m256i {
    let x = if K == Q4_1 {
        x
    } else {
        _mm256_sign_epi8(x, ws)
    };
    _mm256_madd_epi16(_mm256_maddubs_epi16(wu, x), _mm256_set1_epi16(1))
}

/// A block header's `[d_w, m_w (Q4_1; else garbage), 0, 0]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn header(hdr: i32) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(hdr))
}

/// The `Q` (4 or 8) bytes at `p` repeated over 32. Safety: AVX available, `p..p+Q` readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn bcast<const Q: usize>(p: *const u8) -> __m256i {
    // SAFETY: caller's precondition; unaligned reads.
    unsafe {
        if Q == 4 {
            _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
        } else {
            _mm256_set1_epi64x(std::ptr::read_unaligned(p as *const i64))
        }
    }
}

/// The integer block sums of 8 pairs for each of `R` weight sources, from 8 products of a
/// weight group broadcast (`Q` = 4 bytes, or 8 for two rows' groups side by side; group `k` at
/// `k*Q`) with the interleaved activation vector `k` at `xb` (loaded once for the `R`):
/// `wu[i]` holds the unsigned operand (Q4_1's nibbles, else `|w|`), `ws[i]` the signed weights
/// (Q8_0/Q4_0). Safety: AVX2 available, `wu`/`ws` `8*Q` bytes each and `xb..xb+256` readable.
#[inline(always)]
pub(super) unsafe fn group_sums<const K: u8, const V: u8, const Q: usize, const R: usize>(
    wu: [*const u8; R],
    ws: [*const u8; R],
    xb: *const i8,
) -> [__m256i; R] {
    // SAFETY (the whole body): caller's precondition; unaligned reads.
    unsafe {
    let mut sums = [_mm256_setzero_si256(); R];
    for k in 0..8 {
        {
            let x = _mm256_loadu_si256(xb.add(32 * k) as *const __m256i);
            for i in 0..R {
                let w = bcast::<Q>(wu[i].add(k * Q));
                sums[i] = if V != NO_VNNI {
                    let x = if K == Q4_1 { x } else { _mm256_sign_epi8(x, bcast::<Q>(ws[i].add(k * Q))) };
                    dpbusd::<V>(sums[i], w, x)
                } else if K == Q4_1 {
                    // At most 16*15*127 per i16 lane after the 8 groups: no overflow.
                    _mm256_add_epi16(sums[i], _mm256_maddubs_epi16(w, x))
                } else {
                    let sgn = bcast::<Q>(ws[i].add(k * Q));
                    _mm256_add_epi32(sums[i], block_dot::<K>(w, sgn, x))
                };
            }
        }
    }
    if K == Q4_1 && V == NO_VNNI {
        for s in &mut sums {
            *s = _mm256_madd_epi16(*s, _mm256_set1_epi16(1));
        }
    }
    sums
    }
}

/// As [`group_sums`] for VNNI and Q4_1/Q8_0, broadcasting each row's group straight from its
/// packed block (`q[i]`: the block's quants) instead of from an expanded copy on the stack:
/// Q4_1 groups `k` and `k + 4` are the low and high nibbles of the same 4 bytes, Q8_0's
/// unsigned operand is `|w|` with the sign moved onto the activations.
/// Safety: `V`'s features available (`V != NO_VNNI`), `K != Q4_0`, each `q[i]` 16 (Q4_1) or
/// 32 (Q8_0) bytes readable and `xb..xb+256` readable.
#[inline(always)]
pub(super) unsafe fn group_sums_direct<const K: u8, const V: u8, const R: usize>(
    q: [*const u8; R],
    xb: *const i8,
) -> [__m256i; R] {
    // SAFETY (the whole body): caller's precondition; unaligned reads.
    unsafe {
        let mut sums = [_mm256_setzero_si256(); R];
        let lo = _mm256_set1_epi8(0x0F);
        if K == Q4_1 {
            for k in 0..4 {
                let x0 = _mm256_loadu_si256(xb.add(32 * k) as *const __m256i);
                let x1 = _mm256_loadu_si256(xb.add(32 * (k + 4)) as *const __m256i);
                for i in 0..R {
                    let w = bcast::<4>(q[i].add(4 * k));
                    sums[i] = dpbusd::<V>(sums[i], _mm256_and_si256(w, lo), x0);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), lo);
                    sums[i] = dpbusd::<V>(sums[i], hi, x1);
                }
            }
        } else {
            for k in 0..8 {
                let x = _mm256_loadu_si256(xb.add(32 * k) as *const __m256i);
                for i in 0..R {
                    let w = bcast::<4>(q[i].add(4 * k));
                    sums[i] = dpbusd::<V>(sums[i], _mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
                }
            }
        }
        sums
    }
}
