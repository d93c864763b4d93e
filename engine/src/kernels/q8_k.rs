//! Q8_K activations, the 8-bit side of llama.cpp's K-quant dot products (`q4_k.rs`,
//! `q6_k.rs`), quantized as candle's `BlockQ8K::from_float` does: per 256 values, `max` is the
//! first value of largest magnitude (sign included), `q = round(-127/max * x)` (so within
//! -127..=127) and `d = 1/(-127/max)` kept in f32, plus the sum of each run of 16 quants
//! (GGML's `bsums`), which the weights' offsets and minimums multiply.

/// Values per K-quant block.
pub(crate) const QK_K: usize = 256;

/// Activations quantized to Q8_K: `l` rows of `nb` blocks of 256.
pub(crate) struct Q8KRows {
    pub l: usize,
    pub nb: usize,
    /// `l * nb * 256` quants, row-major.
    pub qs: Vec<i8>,
    /// `l * nb` block scales.
    pub d: Vec<f32>,
    /// `l * nb * 16` sums of each run of 16 quants (GGML's `bsums`).
    pub sums: Vec<i32>,
    /// `sums` as i16 (each within +-2048), for the panel kernels' `vpdpwssd`; built on first use.
    pub sums16: std::sync::OnceLock<Vec<i16>>,
}

impl Q8KRows {
    /// The runs' sums as i16, `[token][block][run]`.
    pub(crate) fn sums_i16(&self) -> &[i16] {
        // 16 quants of at most 128 in magnitude: the sums fit.
        self.sums16.get_or_init(|| self.sums.iter().map(|&s| s as i16).collect())
    }
}

/// Quantizes `l` rows of `nb*256` floats to Q8_K.
pub(crate) fn quantize_q8_k(x: &[f32], l: usize, nb: usize) -> Q8KRows {
    let n = l * nb;
    let mut out = Q8KRows {
        l,
        nb,
        qs: vec![0; n * QK_K],
        d: vec![0.0; n],
        sums: vec![0; n * QK_K / 16],
        sums16: std::sync::OnceLock::new(),
    };
    for (((xb, qb), d), sums) in x
        .chunks_exact(QK_K)
        .zip(out.qs.chunks_exact_mut(QK_K))
        .zip(out.d.iter_mut())
        .zip(out.sums.chunks_exact_mut(QK_K / 16))
    {
        // The first value of largest magnitude, sign included.
        let max = xb
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        if max == 0.0 {
            continue; // d = 0, quants and sums 0
        }
        let iscale = -127.0 / max;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
        }
        for (s, qs) in sums.iter_mut().zip(qb.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i32).sum();
        }
        *d = 1.0 / iscale;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::randoms;

    #[test]
    fn quantize_q8_k_follows_candle() {
        let mut x = randoms(512, 5);
        // The block's value of largest magnitude: iscale = -127/max = 127/3, d = 1/iscale.
        x[7] = -3.0;
        x[256..].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        let a = quantize_q8_k(&x, 1, 2);
        assert_eq!(a.qs[7], -127);
        assert_eq!(a.d[0], 1.0 / (-127.0f32 / -3.0));
        for (j, (q, v)) in a.qs.iter().zip(&x).take(256).enumerate() {
            assert_eq!(*q as f32, ((-127.0f32 / -3.0) * v).round(), "element {j}");
        }
        for j in 0..16 {
            let s: i32 = a.qs[j * 16..(j + 1) * 16].iter().map(|&q| q as i32).sum();
            assert_eq!(a.sums[j], s, "run {j}");
        }
        assert_eq!(a.d[1], 0.0);
        assert!(a.qs[256..].iter().all(|&q| q == 0) && a.sums[16..].iter().all(|&s| s == 0));
    }
}
