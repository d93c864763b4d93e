//! AVX2 + FMA SwiGLU (semantics and invariants in `act.rs`): `g / (1 + exp(-g)) * u` over 8
//! lanes with a vector `exp`.

use std::arch::x86_64::*;

/// `g[i] = silu(g[i]) * u[i]`. Caller guarantees AVX2 + FMA (`Isa::Avx2.available()`) and
/// equal lengths.
pub(super) fn swiglu(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len());
    // SAFETY: the caller checked the CPU features; the lengths are equal (asserted).
    unsafe { run(g, u) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn run(g: &mut [f32], u: &[f32]) {
    let mut gc = g.chunks_exact_mut(8);
    let mut uc = u.chunks_exact(8);
    for (g, u) in (&mut gc).zip(&mut uc) {
        // SAFETY: 8 values in each chunk.
        unsafe {
            let y = silu_mul(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr()));
            _mm256_storeu_ps(g.as_mut_ptr(), y);
        }
    }
    // The ragged end through the same vector code (padding lanes computed and dropped).
    let (g, u) = (gc.into_remainder(), uc.remainder());
    if !g.is_empty() {
        let (mut gb, mut ub) = ([0f32; 8], [0f32; 8]);
        gb[..g.len()].copy_from_slice(g);
        ub[..u.len()].copy_from_slice(u);
        // SAFETY: 8 values in each buffer.
        unsafe { _mm256_storeu_ps(gb.as_mut_ptr(), silu_mul(_mm256_loadu_ps(gb.as_ptr()), _mm256_loadu_ps(ub.as_ptr()))) };
        let n = g.len();
        g.copy_from_slice(&gb[..n]);
    }
}

/// `g / (1 + exp(-g)) * u`, lane by lane.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn silu_mul(g: __m256, u: __m256) -> __m256 {
    let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u)
}

/// `e^x` for `x` clamped to [-87, 88] (2^n stays a normal float), and infinity above 88 (so a
/// huge negative gate gives silu's -0, not `g / e^88`; the gates past the clamp give silu values
/// within 1e-36 of the exact ones): `x = n ln2 + r` with
/// `|r| <= ln2/2` (ln2 split in two so `r` is exact to f32 rounding), `e^r` by its Taylor
/// polynomial to degree 7 (truncation error below 1e-8 relative), times `2^n` built in the
/// exponent bits. NaN stays NaN (the clamp's operand order keeps it).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp(x: __m256) -> __m256 {
    let over = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(88.0));
    // max/min return their second operand when either is NaN: clamp the bound, not `x`.
    let x = _mm256_min_ps(_mm256_set1_ps(88.0), x);
    let x = _mm256_max_ps(_mm256_set1_ps(-87.0), x);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln2 = 355/512 - 2.12194440e-4 (the first part has few bits, so n * it is exact).
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(355.0 / 512.0), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    // 1 + r + r^2/2! + ... + r^7/7!, Horner.
    const C: [f32; 8] = [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];
    let mut p = _mm256_set1_ps(C[7]);
    for &c in C[..7].iter().rev() {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    // 2^n: n + 127 in the exponent field (n in -126..=127 after the clamp).
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    let e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    _mm256_blendv_ps(e, _mm256_set1_ps(f32::INFINITY), over)
}
