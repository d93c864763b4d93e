//! The panel layout of Q4_1, Q8_0, Q4_0, Q4_K and Q6_K weight matrices: the same bytes as the
//! GGUF blocks, reordered at load (never requantized) so that one 512-bit vector holds 16 rows'
//! values of one group of 4, for the AVX-512 VNNI kernels of `avx512_panel.rs` and
//! `avx512_panel_k.rs`.
//!
//! Rows go by panels of [`ROWS`]; a panel's blocks follow each other. A format's [`Spec`] cuts
//! a row's block into segments ([`Seg`]: a run of bytes cut in groups of 1, 2 or 4), and one
//! panel block (the 16 rows' block `b`) holds the segments in the spec's order, each as its
//! groups one after the other, every group as the 16 rows' copies side by side (a group of 4
//! bytes: 64 bytes, one vector). So the quants of Q4_1 come as 4 vectors of 16 rows' 4-byte
//! groups, then `d` (16 rows' f16, 32 bytes), then `m`.
//!
//! Two changes besides the order, both reversible: a segment's bytes may be XORed with a
//! constant (Q8_0 stores `w + 128`: `vpdpbusd` wants the weights unsigned), and Q4_K's 12 bytes
//! of packed 6-bit scales and mins are stored unpacked (8 + 8 bytes: 16 x 6 bits are exactly
//! the 96 bits of the 12, so nothing is lost or rounded; [`Spec::k4_scales`]).
//!
//! A matrix whose row count is not a multiple of 16 has its last panel padded with copies of
//! its last row. [`unpack_rows`] gives the GGUF blocks back exactly; any other instruction set
//! runs on them.

use rayon::prelude::*;

use super::q4_k::scales_mins;

/// Weight rows per panel (the f32 lanes of a 512-bit vector).
pub(crate) const ROWS: usize = 16;

/// The longest [`Spec::row_bytes`] (Q6_K's 210).
const MAX_ROW_BYTES: usize = 210;

/// `len` bytes of a row's block from offset `at`, cut in groups of `group` bytes (`len` a
/// multiple of it), each byte XORed with `flip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg {
    pub at: usize,
    pub len: usize,
    pub group: usize,
    pub flip: u8,
}

const fn seg(at: usize, len: usize, group: usize) -> Seg {
    Seg { at, len, group, flip: 0 }
}

/// Q4_1: f16 `d`, f16 `m`, 16 nibble bytes. Panel block: quants (4 x 64 B), `d`, `m`.
pub(crate) const Q4_1_SPEC: Spec = Spec { block: 20, k4_scales: false, segs: &[seg(4, 16, 4), seg(0, 4, 2)] };
/// Q8_0: f16 `d`, 32 signed bytes, stored `+ 128`. Panel block: quants (8 x 64 B), `d`.
pub(crate) const Q8_0_SPEC: Spec =
    Spec { block: 34, k4_scales: false, segs: &[Seg { at: 2, len: 32, group: 4, flip: 0x80 }, seg(0, 2, 2)] };
/// Q4_0: f16 `d`, 16 nibble bytes. Panel block: quants (4 x 64 B), `d`.
pub(crate) const Q4_0_SPEC: Spec = Spec { block: 18, k4_scales: false, segs: &[seg(2, 16, 4), seg(0, 2, 2)] };
/// Q4_K (`q4_k.rs`; with the scales unpacked: `d`, `dmin` at 0, `sc[8]` at 4, `m[8]` at 12,
/// nibbles at 20). Panel block: nibbles (32 x 64 B: group `8g + k` holds sub-blocks `2g` (low
/// nibbles) and `2g + 1` (high), values `4k..4k+4`), `sc` (8 x 16 B), `m` (8 x 16 B), `d`, `dmin`.
pub(crate) const Q4_K_SPEC: Spec =
    Spec { block: 144, k4_scales: true, segs: &[seg(20, 128, 4), seg(4, 8, 1), seg(12, 8, 1), seg(0, 4, 2)] };
/// Q6_K (`q6_k.rs`). Panel block: `ql` (32 x 64 B), `qh` (16 x 64 B), scales by pairs
/// (8 x 32 B: 16 rows' `(sc[2p], sc[2p+1])`), `d`.
pub(crate) const Q6_K_SPEC: Spec =
    Spec { block: 210, k4_scales: false, segs: &[seg(0, 128, 4), seg(128, 64, 4), seg(192, 16, 2), seg(208, 2, 2)] };

/// How a format's GGUF block maps to the panel layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Bytes of one GGUF block.
    pub block: usize,
    /// Q4_K: the 12 bytes at 4 (packed 6-bit scales and mins) are unpacked into 16, so the block
    /// the segments cut is 4 bytes longer than the GGUF one.
    pub k4_scales: bool,
    /// Every byte of the (unpacked) block exactly once.
    pub segs: &'static [Seg],
}

impl Spec {
    /// Bytes of one GGUF block.
    pub(crate) const fn block_bytes(self) -> usize {
        self.block
    }

    /// Bytes of a row's block as the segments cut it.
    pub(crate) const fn row_bytes(self) -> usize {
        self.block + if self.k4_scales { 4 } else { 0 }
    }

    /// Bytes of one panel block (16 rows' blocks).
    pub(crate) const fn panel_block_bytes(self) -> usize {
        ROWS * self.row_bytes()
    }

    /// Where segment `i` starts in a panel block (the kernels' constant offsets are checked
    /// against this at compile time).
    pub(crate) const fn seg_base(self, i: usize) -> usize {
        let (mut base, mut k) = (0, 0);
        while k < i {
            base += ROWS * self.segs[k].len;
            k += 1;
        }
        base
    }

    /// A GGUF block as the segments cut it (`out`: `row_bytes()`).
    fn unpacked(self, blk: &[u8], out: &mut [u8]) {
        if !self.k4_scales {
            return out.copy_from_slice(blk);
        }
        let packed: &[u8; 12] = blk[4..16].try_into().expect("12 bytes");
        let (sc, m) = scales_mins(packed);
        out[..4].copy_from_slice(&blk[..4]);
        out[4..12].copy_from_slice(&sc);
        out[12..20].copy_from_slice(&m);
        out[20..].copy_from_slice(&blk[16..]);
    }

    /// The inverse of [`Spec::unpacked`].
    fn packed(self, row: &[u8], blk: &mut [u8]) {
        if !self.k4_scales {
            return blk.copy_from_slice(row);
        }
        let (sc, m) = (&row[4..12], &row[12..20]);
        blk[..4].copy_from_slice(&row[..4]);
        for j in 0..4 {
            blk[4 + j] = (sc[j] & 63) | (sc[j + 4] >> 4) << 6;
            blk[8 + j] = (m[j] & 63) | (m[j + 4] >> 4) << 6;
            blk[12 + j] = (sc[j + 4] & 0x0F) | (m[j + 4] & 0x0F) << 4;
        }
        blk[16..].copy_from_slice(&row[20..]);
    }

    /// Calls `f(panel offset, row-block offset, group bytes, flip)` for every group of every
    /// segment of row `r`, in panel order.
    fn for_each_group(self, r: usize, mut f: impl FnMut(usize, usize, usize, u8)) {
        for (i, s) in self.segs.iter().enumerate() {
            let base = self.seg_base(i);
            for j in 0..s.len / s.group {
                f(base + (j * ROWS + r) * s.group, s.at + j * s.group, s.group, s.flip);
            }
        }
    }
}

/// `rows` rows of `nb` GGUF blocks each (`w`, row-major) as `rows.div_ceil(16)` panels.
pub(crate) fn pack(s: Spec, w: &[u8], rows: usize, nb: usize) -> Vec<u8> {
    let bb = s.block_bytes();
    assert!(w.len() == rows * nb * bb && rows > 0);
    let panels = rows.div_ceil(ROWS);
    let mut out = vec![0u8; panels * nb * s.panel_block_bytes()];
    // Panels in parallel (the same bytes whatever the order): ~2 ns a byte on one thread, seconds
    // for a model of several GB.
    out.par_chunks_exact_mut(nb * s.panel_block_bytes()).enumerate().for_each(|(p, panel)| {
        let mut buf = [0u8; MAX_ROW_BYTES];
        let row_blk = &mut buf[..s.row_bytes()];
        for (b, pb) in panel.chunks_exact_mut(s.panel_block_bytes()).enumerate() {
            for r in 0..ROWS {
                let row = (p * ROWS + r).min(rows - 1);
                s.unpacked(&w[(row * nb + b) * bb..][..bb], row_blk);
                s.for_each_group(r, |at, from, n, flip| {
                    for (o, v) in pb[at..][..n].iter_mut().zip(&row_blk[from..][..n]) {
                        *o = v ^ flip;
                    }
                });
            }
        }
    });
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
    let mut buf = [0u8; MAX_ROW_BYTES];
    let row_blk = &mut buf[..s.row_bytes()];
    for (b, blk) in out.chunks_exact_mut(bb).enumerate().take(nb) {
        let pb = &panels[(p * nb + b) * pbb..][..pbb];
        s.for_each_group(r, |at, from, n, flip| {
            for (o, v) in row_blk[from..][..n].iter_mut().zip(&pb[at..][..n]) {
                *o = v ^ flip;
            }
        });
        s.packed(row_blk, blk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Spec; 5] = [Q4_1_SPEC, Q8_0_SPEC, Q4_0_SPEC, Q4_K_SPEC, Q6_K_SPEC];

    #[test]
    fn segments_place_every_byte_once() {
        for s in ALL {
            assert!(s.row_bytes() <= MAX_ROW_BYTES, "{s:?}");
            let (mut from, mut to) = (vec![0; s.row_bytes()], vec![0; s.panel_block_bytes()]);
            for r in 0..ROWS {
                s.for_each_group(r, |at, src, n, _| {
                    (src..src + n).for_each(|i| from[i] += 1);
                    (at..at + n).for_each(|i| to[i] += 1);
                });
            }
            assert!(from.iter().all(|&c| c == ROWS), "{s:?}: a row byte not placed once per row");
            assert!(to.iter().all(|&c| c == 1), "{s:?}: a panel byte not written once");
        }
    }

    #[test]
    fn unpack_gives_the_gguf_blocks_back() {
        for s in ALL {
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
        use crate::kernels::q4_k::Q4K;
        use crate::kernels::q6_k::Q6K;
        use crate::kernels::q8_0::Q8_0;
        use crate::kernels::test_util::bits;
        use candle_core::quantized::GgmlDType;
        use candle_core::{Device, Tensor};
        fn check<F: Format>(dtype: GgmlDType, spec: Spec) {
            let (rows, cols) = (37, 3 * F::BLOCK_VALUES);
            let q = crate::kernels::test_util::random_matrix(dtype, rows, cols, 3);
            let nb = cols / F::BLOCK_VALUES;
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
                for (b, o) in blocks.chunks_exact(spec.block_bytes()).zip(row.chunks_exact_mut(F::BLOCK_VALUES)) {
                    F::dequantize_block(b, o);
                }
                got.extend(row);
            }
            assert_eq!(bits(&got), bits(&want), "{dtype:?}");
        }
        check::<Q4_1>(GgmlDType::Q4_1, Q4_1_SPEC);
        check::<Q8_0>(GgmlDType::Q8_0, Q8_0_SPEC);
        check::<Q4_0>(GgmlDType::Q4_0, Q4_0_SPEC);
        check::<Q4K>(GgmlDType::Q4K, Q4_K_SPEC);
        check::<Q6K>(GgmlDType::Q6K, Q6_K_SPEC);
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
