//! AVX2 activation quantization to 8-bit blocks of 32 (Q8_0 and Q8_1 activations; semantics in
//! `q8_0.rs` and `q4_1.rs`): the same bits as the scalar quantizers, `roundf` (half away from
//! zero, which the scalar code calls out of line for every value) done with a truncation and a
//! correction, NaN quantized to 0 as `as i8` does.

use std::arch::x86_64::*;

use super::matrix::QK;

/// Quantizes one block: `qb[j] = round(xb[j] / d)` with `d = amax / 127` (the f32 scale, before
/// any f16 rounding), as the scalar quantizers do; returns `(d, sum of qb)`. Caller guarantees
/// AVX2 (`Isa::Avx2.available()`); `xb`, `qb` hold 32 values.
pub(super) fn quantize_block(xb: &[f32], qb: &mut [i8]) -> (f32, i32) {
    assert!(xb.len() >= QK && qb.len() >= QK);
    // SAFETY: the caller checked the CPU features; 32 values at each pointer (asserted).
    unsafe { block(xb.as_ptr(), qb.as_mut_ptr()) }
}

/// Whole rows of blocks: quants into `qs`, and per block `d` rounded through f16 (as GGML
/// stores it) into `d`; with `s`, also `sum * d` rounded through f16 (Q8_1's `s`). The same bits
/// as [`quantize_block`] block by block with `half`'s conversions (F16C's rounding, which
/// `half` uses too), without a call and a feature check per block. Caller guarantees AVX2 and
/// F16C; `x.len() == qs.len() == 32 * d.len()`, `s` empty or as long as `d`.
pub(super) fn quantize_rows(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    assert!(x.len() == qs.len() && x.len() == QK * d.len() && (s.is_empty() || s.len() == d.len()));
    // SAFETY: the caller checked the CPU features; the lengths are asserted.
    unsafe { rows(x, qs, d, s) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    // f32 -> f16 (nearest even) -> f32.
    let through_f16 = |v: f32| _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v))));
    for (i, (xb, qb)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
        // SAFETY: 32 values in each chunk.
        let (di, sum) = unsafe { block(xb.as_ptr(), qb.as_mut_ptr()) };
        d[i] = through_f16(di);
        if let Some(si) = s.get_mut(i) {
            *si = through_f16(sum as f32 * di);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block(xp: *const f32, qp: *mut i8) -> (f32, i32) {
    // SAFETY: 32 floats at xp and 32 bytes at qp (caller's precondition); unaligned accesses.
    unsafe {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xp.add(8 * i)));
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        // `max(a, acc)` returns acc when a is NaN: NaNs are skipped, as `f32::max` does.
        let mut m = _mm256_setzero_ps();
        for vi in v {
            m = _mm256_max_ps(_mm256_and_ps(vi, abs_mask), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let half = _mm256_set1_ps(0.5);
        let sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
        let one = _mm256_set1_ps(1.0);
        let mut sum = _mm256_setzero_si256();
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            let y = _mm256_mul_ps(v[i], id);
            // NaN -> 0 (as `as i8` maps it).
            let y = _mm256_and_ps(y, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            // |y - t| >= 0.5: away from zero by one (y - t is exact below 2^23).
            let frac = _mm256_and_ps(_mm256_sub_ps(y, t), abs_mask);
            let away = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), one);
            let r = _mm256_add_ps(t, _mm256_or_ps(away, _mm256_and_ps(y, sign_mask)));
            let qi = _mm256_cvtps_epi32(r);
            sum = _mm256_add_epi32(sum, qi);
            qi
        });
        // i32 -> i16 -> i8 with saturation (as `as i8`), then undo the per-lane interleaving.
        let w01 = _mm256_packs_epi32(q[0], q[1]);
        let w23 = _mm256_packs_epi32(q[2], q[3]);
        let b = _mm256_packs_epi16(w01, w23);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(qp as *mut __m256i, b);
        let s4 = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256::<1>(sum),
        );
        let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2));
        (d, _mm_cvtsi128_si32(s1))
    }
}

#[cfg(test)]
mod tests {
    use super::super::q8_0::quantize_block_scalar;
    use super::super::test_util::randoms;
    use super::super::Isa;
    use super::*;

    /// Whole rows: the same quants, `d` and `s` as block by block with `half`'s f16 rounding,
    /// including scales that round to f16 infinity, subnormals and zero.
    #[test]
    fn quantize_rows_equals_blocks_with_half() {
        if !Isa::Avx2.available() {
            return;
        }
        let mut x = randoms(QK * 40, 31);
        x[..QK].iter_mut().for_each(|v| *v *= 1e7); // d far above f16's max: inf
        x[QK..2 * QK].iter_mut().for_each(|v| *v *= 1e-9); // subnormal f16 scales
        x[2 * QK..3 * QK].iter_mut().for_each(|v| *v = 0.0);
        x[3 * QK + 4] = f32::NAN;
        let n = x.len() / QK;
        let (mut qs, mut d, mut s) = (vec![0i8; x.len()], vec![0f32; n], vec![0f32; n]);
        quantize_rows(&x, &mut qs, &mut d, &mut s);
        let (mut qs0, mut d0) = (vec![0i8; x.len()], vec![0f32; n]);
        quantize_rows(&x, &mut qs0, &mut d0, &mut []);
        for (i, xb) in x.chunks_exact(QK).enumerate() {
            let mut q = [0i8; QK];
            let (di, sum) = quantize_block_scalar(xb, &mut q);
            assert_eq!(&qs[i * QK..][..QK], &q, "block {i}");
            assert_eq!(qs0, qs);
            let f = |v: f32| half::f16::from_f32(v).to_f32().to_bits();
            assert_eq!((d[i].to_bits(), d0[i].to_bits()), (f(di), f(di)), "block {i}: d");
            assert_eq!(s[i].to_bits(), f(sum as f32 * di), "block {i}: s");
        }
    }

    /// Same quants, scale and sum as the scalar quantizer, bit for bit: random blocks, exact
    /// halves (rounded away from zero), zeros, tiny and huge values, NaN and infinities.
    #[test]
    fn quantize_block_equals_scalar() {
        if !Isa::Avx2.available() {
            eprintln!("AVX2 not available on this CPU: skipped");
            return;
        }
        let mut blocks: Vec<Vec<f32>> = (0..200).map(|i| randoms(QK, 900 + i)).collect();
        // amax 127 -> d = 1: every k + 0.5 is an exact tie.
        blocks.push(
            (0..QK)
                .map(|j| j as f32 - 15.5)
                .chain([127.0])
                .take(QK)
                .collect(),
        );
        let mut ties: Vec<f32> = (0..QK).map(|j| (j as f32 - 16.0) + 0.5).collect();
        ties[0] = -127.0;
        blocks.push(ties);
        blocks.push(vec![0.0; QK]);
        blocks.push((0..QK).map(|j| (j as f32 - 16.0) * 1e-30).collect());
        blocks.push((0..QK).map(|j| (j as f32 - 16.0) * 1e30).collect());
        let mut odd = randoms(QK, 7);
        odd[3] = f32::NAN;
        odd[9] = -0.0;
        blocks.push(odd);
        let mut inf = randoms(QK, 8);
        inf[5] = f32::INFINITY;
        blocks.push(inf);
        for (i, xb) in blocks.iter().enumerate() {
            let (mut want, mut got) = ([0i8; QK], [0i8; QK]);
            let (dw, sw) = quantize_block_scalar(xb, &mut want);
            let (dg, sg) = quantize_block(xb, &mut got);
            assert_eq!(want, got, "block {i}: quants");
            assert_eq!(
                (dw.to_bits(), sw),
                (dg.to_bits(), sg),
                "block {i}: scale, sum"
            );
        }
    }
}
