//! The panel layout of Q4_1, Q8_0 and Q4_0 weight matrices: the same bytes as the GGUF blocks,
//! reordered at load (never requantized) so that one 512-bit vector holds 16 rows' values of
//! one group of 4, for the AVX-512 VNNI kernels of `avx512_panel.rs`.
//!
//! Rows go by panels of [`ROWS`]; a panel's blocks follow each other, and one panel block (the
//! 16 rows' block `b`) holds, in order:
//! - the quants: for each 4-byte group `j` of a GGUF block's quant bytes, the 16 rows' groups
//!   `j`, row after row (64 bytes per `j`), each byte XORed with the format's `flip` (Q8_0
//!   stores `w + 128` as an unsigned byte: `vpdpbusd` wants the weights unsigned);
//! - the f16 header fields (Q4_1: `d`, then `m`; Q8_0: `d`), 16 rows each.
//!
//! A matrix whose row count is not a multiple of 16 has its last panel padded with copies of
//! its last row. Packing is a permutation (and a reversible XOR) of the bytes, so
//! [`unpack_rows`] gives the GGUF blocks back exactly; any other instruction set runs on them.

/// Weight rows per panel (the f32 lanes of a 512-bit vector).
pub(crate) const ROWS: usize = 16;

/// Q4_1: f16 `d`, f16 `m`, 16 nibble bytes.
pub(crate) const Q4_1_SPEC: Spec = Spec { halves: 2, quants: 16, flip: 0 };
/// Q8_0: f16 `d`, 32 signed bytes, stored `+ 128`.
pub(crate) const Q8_0_SPEC: Spec = Spec { halves: 1, quants: 32, flip: 0x80 };
/// Q4_0: f16 `d`, 16 nibble bytes.
pub(crate) const Q4_0_SPEC: Spec = Spec { halves: 1, quants: 16, flip: 0 };

/// How a format's GGUF block maps to the panel layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spec {
    /// f16 header fields at the start of a GGUF block (`d`, `m`, ...).
    pub halves: usize,
    /// Quant bytes after the header (a multiple of 4).
    pub quants: usize,
    /// XORed into every quant byte.
    pub flip: u8,
}

impl Spec {
    /// Bytes of one GGUF block.
    pub(crate) const fn block_bytes(self) -> usize {
        2 * self.halves + self.quants
    }

    /// Bytes of one panel block (16 rows' blocks).
    pub(crate) const fn panel_block_bytes(self) -> usize {
        ROWS * self.block_bytes()
    }
}

/// `rows` rows of `nb` GGUF blocks each (`w`, row-major) as `rows.div_ceil(16)` panels.
pub(crate) fn pack(s: Spec, w: &[u8], rows: usize, nb: usize) -> Vec<u8> {
    let bb = s.block_bytes();
    assert!(s.quants.is_multiple_of(4) && w.len() == rows * nb * bb && rows > 0);
    let panels = rows.div_ceil(ROWS);
    let mut out = vec![0u8; panels * nb * s.panel_block_bytes()];
    for (p, panel) in out.chunks_exact_mut(nb * s.panel_block_bytes()).enumerate() {
        for (b, pb) in panel.chunks_exact_mut(s.panel_block_bytes()).enumerate() {
            for r in 0..ROWS {
                let row = (p * ROWS + r).min(rows - 1);
                let blk = &w[(row * nb + b) * bb..][..bb];
                for j in 0..s.quants / 4 {
                    let src = &blk[2 * s.halves + 4 * j..][..4];
                    for (o, v) in pb[(j * ROWS + r) * 4..][..4].iter_mut().zip(src) {
                        *o = v ^ s.flip;
                    }
                }
                for h in 0..s.halves {
                    pb[s.quants * ROWS + (h * ROWS + r) * 2..][..2].copy_from_slice(&blk[2 * h..][..2]);
                }
            }
        }
    }
    out
}

/// The first `rows` rows of `panels` (whole panels of `nb` blocks) back as GGUF blocks,
/// row-major, into `out` (cleared first).
pub(crate) fn unpack_rows(s: Spec, panels: &[u8], nb: usize, rows: usize, out: &mut Vec<u8>) {
    let bb = s.block_bytes();
    assert!(panels.len() >= rows.div_ceil(ROWS) * nb * s.panel_block_bytes());
    out.clear();
    out.resize(rows * nb * bb, 0);
    for (row, blocks) in out.chunks_exact_mut(nb * bb).enumerate() {
        unpack_row(s, panels, nb, row, blocks);
    }
}

/// Row `row` of `panels` back as its `nb` GGUF blocks (`out`: `nb * s.block_bytes()` bytes).
pub(crate) fn unpack_row(s: Spec, panels: &[u8], nb: usize, row: usize, out: &mut [u8]) {
    let (bb, pbb) = (s.block_bytes(), s.panel_block_bytes());
    let (p, r) = (row / ROWS, row % ROWS);
    for (b, blk) in out.chunks_exact_mut(bb).enumerate().take(nb) {
        let pb = &panels[(p * nb + b) * pbb..][..pbb];
        for h in 0..s.halves {
            blk[2 * h..][..2].copy_from_slice(&pb[s.quants * ROWS + (h * ROWS + r) * 2..][..2]);
        }
        for j in 0..s.quants / 4 {
            for (o, v) in blk[2 * s.halves + 4 * j..][..4].iter_mut().zip(&pb[(j * ROWS + r) * 4..][..4]) {
                *o = v ^ s.flip;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_gives_the_gguf_blocks_back() {
        for s in [Q4_1_SPEC, Q8_0_SPEC, Q4_0_SPEC] {
            for (rows, nb) in [(1, 1), (16, 3), (17, 2), (40, 18)] {
                let w: Vec<u8> = (0..rows * nb * s.block_bytes()).map(|i| (i * 7 + i / 13) as u8).collect();
                let packed = pack(s, &w, rows, nb);
                assert_eq!(packed.len(), rows.div_ceil(ROWS) * nb * s.panel_block_bytes());
                let mut back = Vec::new();
                unpack_rows(s, &packed, nb, rows, &mut back);
                assert_eq!(back, w, "{s:?} rows {rows} nb {nb}");
                // A later panel alone, as a task sees it.
                if rows > ROWS {
                    let tail = &packed[nb * s.panel_block_bytes()..];
                    unpack_rows(s, tail, nb, rows - ROWS, &mut back);
                    assert_eq!(back, w[ROWS * nb * s.block_bytes()..], "{s:?} rows {rows} tail");
                }
            }
        }
    }

    #[test]
    fn rows_dequantized_from_panels_equal_candles_embedding() {
        use crate::kernels::matrix::Format;
        use crate::kernels::q4_0::Q4_0;
        use crate::kernels::q4_1::Q4_1;
        use crate::kernels::q8_0::Q8_0;
        use crate::kernels::test_util::bits;
        use candle_core::quantized::GgmlDType;
        use candle_core::{Device, Tensor};
        fn check<F: Format>(dtype: GgmlDType, spec: Spec) {
            let (rows, cols) = (37, 96);
            let q = crate::kernels::test_util::random_matrix(dtype, rows, cols, 3);
            let nb = cols / 32;
            let panels = pack(spec, &q.data().unwrap(), rows, nb);
            let ids = [0u32, 36, 17, 16, 5];
            let want = q
                .embedding(&Tensor::new(&ids[..], &Device::Cpu).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut got = Vec::new();
            let mut blocks = vec![0u8; nb * spec.block_bytes()];
            for &id in &ids {
                unpack_row(spec, &panels, nb, id as usize, &mut blocks);
                let mut row = vec![0f32; cols];
                for (b, o) in blocks.chunks_exact(spec.block_bytes()).zip(row.chunks_exact_mut(32)) {
                    F::dequantize_block(b, o);
                }
                got.extend(row);
            }
            assert_eq!(bits(&got), bits(&want), "{dtype:?}");
        }
        check::<Q4_1>(GgmlDType::Q4_1, Q4_1_SPEC);
        check::<Q8_0>(GgmlDType::Q8_0, Q8_0_SPEC);
        check::<Q4_0>(GgmlDType::Q4_0, Q4_0_SPEC);
    }

    #[test]
    fn a_panel_vector_holds_16_rows_of_one_group() {
        // Q4_1: row r's block b has d = r, m = 100 + r and quant byte q = 16 * b + q.
        let s = Q4_1_SPEC;
        let (rows, nb) = (16, 2);
        let mut w = Vec::new();
        for r in 0..rows {
            for b in 0..nb {
                w.extend_from_slice(&(r as u16).to_le_bytes());
                w.extend_from_slice(&(100 + r as u16).to_le_bytes());
                w.extend((0..16).map(|q| (16 * b + q) as u8));
            }
        }
        let p = pack(s, &w, rows, nb);
        let b1 = &p[s.panel_block_bytes()..];
        // Group j = 2 of block 1, row 5: quant bytes 8..12 of that block.
        assert_eq!(&b1[(2 * ROWS + 5) * 4..][..4], &[24, 25, 26, 27]);
        // m of row 7 (second header field).
        assert_eq!(&b1[16 * ROWS + (ROWS + 7) * 2..][..2], &107u16.to_le_bytes());
    }
}
