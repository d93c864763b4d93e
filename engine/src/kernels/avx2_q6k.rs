//! AVX2 kernel for Q6_K weights x Q8_K activations (semantics in `q6_k.rs`). Per half block the
//! 64 `ql` bytes and 32 `qh` bytes expand into four vectors of 32 unsigned 6-bit values (each
//! weight row's block once, shared by up to 4 tokens); `maddubs` with the activation quants
//! gives 16 i16 sums (at most 2*63*127), `madd` with the two 16-value runs' scales (8 lanes
//! each) gives 8 i32, summed exactly per token. The `-32` offset comes from the activations'
//! run sums, and the float step is `q6_k::block_value`, the scalar path's expression, so both
//! paths give bit-identical results whatever the batch.

use std::arch::x86_64::*;

use super::q6_k::{block_value, offset_sum, BLOCK_BYTES};
use super::avx2_k::{self, hsum_i32};
use super::q8_k::{Q8KRows, QK_K};

/// `yt[i*l + t]` = dot of weight row `i` of `w` with token `t` of `a` (see `avx2_k::dots`).
pub(super) fn dots(w: &[u8], a: &Q8KRows, yt: &mut [f32]) {
    avx2_k::dots(w, a, yt, BLOCK_BYTES, tile::<4>, tile::<1>)
}

/// One weight row (`row`, `a.nb` blocks) against tokens `t0..t0+N`, into `out[0..N]`.
/// Safety: AVX2/FMA/F16C available; `a` holds tokens up to `t0+N` (checked by `dots`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const N: usize>(row: &[u8], a: &Q8KRows, t0: usize, out: &mut [f32]) {
    let nb = a.nb;
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let qp = a.qs.as_ptr();
    let mut sumf = [0f32; N];
    for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let p = blk.as_ptr();
        // SAFETY: bytes 208..210 of the 210-byte block; unaligned read.
        let dbits = unsafe { std::ptr::read_unaligned(p.add(208) as *const u16) };
        let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dbits as i32)));
        let scales = &blk[192..208];
        let mut acc = [_mm256_setzero_si256(); N];
        for n in 0..2 {
            // SAFETY: ql[64n..64n+64] and qh[32n..32n+32] lie inside the block (bytes 0..128
            // and 128..192); unaligned loads.
            let (qa, qb, qh) = unsafe {
                (
                    _mm256_loadu_si256(p.add(64 * n) as *const __m256i),
                    _mm256_loadu_si256(p.add(64 * n + 32) as *const __m256i),
                    _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i),
                )
            };
            // The 2-bit fields of qh, each moved to bits 4..6 of its byte.
            let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4);
            let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4);
            let h2 = _mm256_and_si256(qh, _mm256_set1_epi8(0x30));
            let h3 = _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30));
            let u = [
                _mm256_or_si256(_mm256_and_si256(qa, m4), h0),
                _mm256_or_si256(_mm256_and_si256(qb, m4), h1),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4), h2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4), h3),
            ];
            // Lanes 0..8 (bytes 0..16) take run 2q's scale, lanes 8..16 run 2q+1's.
            let mut sc = [_mm256_setzero_si256(); 4];
            for (q, v) in sc.iter_mut().enumerate() {
                let s0 = scales[8 * n + 2 * q] as i8 as i16;
                let s1 = scales[8 * n + 2 * q + 1] as i8 as i16;
                *v = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
            }
            for (k, acc_k) in acc.iter_mut().enumerate() {
                let j = (t0 + k) * nb + b;
                for q in 0..4 {
                    // SAFETY: j < l*nb, so quants j*256+128n+32q..+32 lie within a.qs
                    // (asserted by `dots`); unaligned load.
                    let x = unsafe {
                        _mm256_loadu_si256(qp.add(j * QK_K + 128 * n + 32 * q) as *const __m256i)
                    };
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u[q], x), sc[q]);
                    *acc_k = _mm256_add_epi32(*acc_k, p);
                }
            }
        }
        for (k, s) in sumf.iter_mut().enumerate() {
            let j = (t0 + k) * nb + b;
            let sumi = hsum_i32(acc[k]) - offset_sum(scales, a, j);
            *s += block_value(dw, a.d[j], sumi);
        }
    }
    out.copy_from_slice(&sumf);
}
