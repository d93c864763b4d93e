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
    // f32 -> f16 (nearest even) -> f32, 8 at a time.
    let through_f16 = |v: __m256| _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
    // Groups of 8 blocks: their maxima gathered, so that the divisions (`amax / 127`, `1 / d`),
    // the f16 roundings and Q8_1's `sum * d` run as one vector op each instead of 8 dependent
    // scalar ones; each lane computes exactly what [`block`] does.
    const G: usize = 8;
    let groups = d.len() / G;
    for gi in 0..groups {
        let xg = &x[gi * G * QK..][..G * QK];
        let mut amax = [0f32; G];
        for (b, a) in amax.iter_mut().enumerate() {
            // SAFETY: 32 values at each block of the group.
            *a = unsafe { block_amax(xg.as_ptr().add(b * QK)) };
        }
        // SAFETY: 8 values in each array.
        let dv = _mm256_div_ps(unsafe { _mm256_loadu_ps(amax.as_ptr()) }, _mm256_set1_ps(127.0));
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(dv, _mm256_setzero_ps());
        let idv = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0), dv), nonzero);
        let mut ids = [0f32; G];
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(ids.as_mut_ptr(), idv) };
        let mut sums = [0i32; G];
        for (b, (sum, &id)) in sums.iter_mut().zip(&ids).enumerate() {
            // SAFETY: 32 values and 32 bytes at each block of the group.
            *sum = unsafe { block_quantize(xg.as_ptr().add(b * QK), qs.as_mut_ptr().add((gi * G + b) * QK), id) };
        }
        // SAFETY: 8 values in each array and at `gi * G` of `d` (and of `s` when not empty).
        unsafe {
            _mm256_storeu_ps(d.as_mut_ptr().add(gi * G), through_f16(dv));
            if !s.is_empty() {
                let sv = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(sums.as_ptr() as *const __m256i)), dv);
                _mm256_storeu_ps(s.as_mut_ptr().add(gi * G), through_f16(sv));
            }
        }
    }
    let through_f16 = |v: f32| _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v))));
    for (i, d) in d.iter_mut().enumerate().skip(groups * G) {
        // SAFETY: 32 values in each block.
        let (di, sum) = unsafe { block(x.as_ptr().add(i * QK), qs.as_mut_ptr().add(i * QK)) };
        *d = through_f16(di);
        if let Some(si) = s.get_mut(i) {
            *si = through_f16(sum as f32 * di);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block(xp: *const f32, qp: *mut i8) -> (f32, i32) {
    // SAFETY: 32 floats at xp and 32 bytes at qp (caller's precondition).
    let amax = unsafe { block_amax(xp) };
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // SAFETY: as above.
    (d, unsafe { block_quantize(xp, qp, id) })
}

/// The largest `|x|` of the 32 values at `xp` (NaNs skipped, as `f32::max` does).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_amax(xp: *const f32) -> f32 {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut m = _mm256_setzero_ps();
    for i in 0..4 {
        // SAFETY: 32 floats at xp (caller's precondition); unaligned loads.
        let vi = unsafe { _mm256_loadu_ps(xp.add(8 * i)) };
        // `max(a, acc)` returns acc when a is NaN: NaNs are skipped.
        m = _mm256_max_ps(_mm256_and_ps(vi, abs_mask), m);
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)))
}

/// `qp[j] = round(xp[j] * id)` (half away from zero, NaN -> 0, saturated as `as i8`) for the 32
/// values at `xp`; returns the sum of the quants.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_quantize(xp: *const f32, qp: *mut i8, id: f32) -> i32 {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let id = _mm256_set1_ps(id);
    let half = _mm256_set1_ps(0.5);
    let sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let one = _mm256_set1_ps(1.0);
    let mut sum = _mm256_setzero_si256();
    let mut q = [_mm256_setzero_si256(); 4];
    for (i, qi) in q.iter_mut().enumerate() {
        // SAFETY: 32 floats at xp (caller's precondition); unaligned loads.
        let y = _mm256_mul_ps(unsafe { _mm256_loadu_ps(xp.add(8 * i)) }, id);
        // NaN -> 0 (as `as i8` maps it).
        let y = _mm256_and_ps(y, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
        // |y - t| >= 0.5: away from zero by one (y - t is exact below 2^23).
        let frac = _mm256_and_ps(_mm256_sub_ps(y, t), abs_mask);
        let away = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), one);
        let r = _mm256_add_ps(t, _mm256_or_ps(away, _mm256_and_ps(y, sign_mask)));
        *qi = _mm256_cvtps_epi32(r);
        sum = _mm256_add_epi32(sum, *qi);
    }
    // i32 -> i16 -> i8 with saturation (as `as i8`), then undo the per-lane interleaving.
    let w01 = _mm256_packs_epi32(q[0], q[1]);
    let w23 = _mm256_packs_epi32(q[2], q[3]);
    let b = _mm256_packs_epi16(w01, w23);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: 32 bytes at qp (caller's precondition).
    unsafe { _mm256_storeu_si256(qp as *mut __m256i, b) };
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2));
    _mm_cvtsi128_si32(s1)
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
        // The same blocks, twice over, as rows (groups of 8 blocks and a ragged end): each
        // block's quants, and its scale and sum through f16, as the block alone gives.
        let x: Vec<f32> = blocks.iter().chain(&blocks).flatten().copied().collect();
        let n = x.len() / QK;
        let (mut qs, mut d, mut s) = (vec![0i8; x.len()], vec![0f32; n], vec![0f32; n]);
        quantize_rows(&x, &mut qs, &mut d, &mut s);
        let f16 = |v: f32| half::f16::from_f32(v).to_f32().to_bits();
        for (i, xb) in x.chunks_exact(QK).enumerate() {
            let mut want = [0i8; QK];
            let (dw, sw) = quantize_block(xb, &mut want);
            assert_eq!(&qs[i * QK..][..QK], &want, "row block {i}: quants");
            assert_eq!((d[i].to_bits(), s[i].to_bits()), (f16(dw), f16(sw as f32 * dw)), "row block {i}: d, s");
        }
    }

    #[test]
    #[ignore = "benchmark: cargo test --release -p ai-sandbox-engine --lib bench_quantize_rows -- --ignored --nocapture"]
    fn bench_quantize_rows() {
        if !Isa::Avx2.available() {
            return;
        }
        for cols in [576, 1536] {
            let x = randoms(8 * cols, 3);
            let n = x.len() / QK;
            let (mut qs, mut d, mut s) = (vec![0i8; x.len()], vec![0f32; n], vec![0f32; n]);
            let mut best = f64::MAX;
            for _ in 0..20_000 {
                let t0 = std::time::Instant::now();
                quantize_rows(std::hint::black_box(&x), &mut qs, &mut d, &mut s);
                best = best.min(t0.elapsed().as_secs_f64() * 1e6);
            }
            eprintln!("quantize_rows 8 x {cols} -> Q8_1: {best:.2} us (min of 20000)");
        }
    }
}
