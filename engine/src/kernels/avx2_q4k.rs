//! AVX2 kernel for Q4_K weights x Q8_K activations (semantics in `q4_k.rs`). Per block the
//! header (scales, mins) is decoded once per weight row and shared by up to 4 tokens; each
//! 32-byte group of nibbles splits into two sub-blocks of 32 unsigned values, `maddubs` with
//! the activation quants gives 16 i16 sums (at most 2*15*127), `madd` with the sub-block scale
//! broadcast gives 8 i32, summed exactly into one integer accumulator per token. The float
//! step per block is `q4_k::block_value`, the very expression the scalar path uses, so both
//! paths give bit-identical results, whatever the batch.

use std::arch::x86_64::*;

use super::q4_k::{block_value, scales_mins, sub_sum, BLOCK_BYTES};
use super::avx2_k::{self, hsum_i32};
use super::q8_k::{Q8KRows, QK_K};

/// `yt[i*l + t]` = dot of weight row `i` of `w` with token `t` of `a` (see `avx2_k::dots`).
pub(super) fn dots(w: &[u8], a: &Q8KRows, yt: &mut [f32]) {
    avx2_k::dots(w, a, yt, BLOCK_BYTES, tile::<4>, tile::<1>)
}

/// One weight row (`row`, `a.nb` blocks) against tokens `t0..t0+N`, into `out[0..N]`.
/// Safety: AVX2/F16C available; `a` holds tokens up to `t0+N` (checked by `dots`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const N: usize>(row: &[u8], a: &Q8KRows, t0: usize, out: &mut [f32]) {
    let nb = a.nb;
    let low = _mm256_set1_epi8(0x0F);
    let qp = a.qs.as_ptr();
    let mut sumf = [0f32; N];
    for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        // SAFETY: bytes 0..16 of the 144-byte block: the two f16s, then the 12 packed scale
        // bytes; unaligned reads.
        let (dm, packed) = unsafe {
            (
                std::ptr::read_unaligned(blk.as_ptr() as *const i32),
                std::ptr::read_unaligned(blk.as_ptr().add(4) as *const [u8; 12]),
            )
        };
        // [d, dmin, 0, 0], exactly the f32 values of the f16s (as the scalar path's `half`).
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(dm));
        let (dw, dmin) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
        let (sc, m) = scales_mins(&packed);
        let mut acc = [_mm256_setzero_si256(); N];
        for g in 0..4 {
            // SAFETY: bytes 16+32g..48+32g lie inside the 144-byte block; unaligned load.
            let q = unsafe { _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * g) as *const __m256i) };
            let lo = _mm256_and_si256(q, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            let (s_lo, s_hi) = (
                _mm256_set1_epi16(sc[2 * g] as i16),
                _mm256_set1_epi16(sc[2 * g + 1] as i16),
            );
            for (k, acc_k) in acc.iter_mut().enumerate() {
                let j = (t0 + k) * nb + b;
                // SAFETY: j < l*nb, so quants j*256+64g..j*256+64g+64 lie within a.qs
                // (asserted by `dots`); unaligned loads.
                let (x0, x1) = unsafe {
                    let p = qp.add(j * QK_K + 64 * g);
                    (
                        _mm256_loadu_si256(p as *const __m256i),
                        _mm256_loadu_si256(p.add(32) as *const __m256i),
                    )
                };
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s_lo);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s_hi);
                *acc_k = _mm256_add_epi32(*acc_k, _mm256_add_epi32(p0, p1));
            }
        }
        for (k, s) in sumf.iter_mut().enumerate() {
            let j = (t0 + k) * nb + b;
            let summ: i32 = (0..8).map(|i| m[i] as i32 * sub_sum(a, j, i)).sum();
            *s += block_value(dw, dmin, a.d[j], hsum_i32(acc[k]), summ);
        }
    }
    out.copy_from_slice(&sumf);
}
