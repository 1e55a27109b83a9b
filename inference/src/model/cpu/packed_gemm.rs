//! Single-threaded f32 GEMM against weights packed once at load, with the convolution epilogue
//! (bias, ReLU, residual) applied in registers.
//!
//! Why not the `gemm` crate here: it packs the right-hand matrix on every call. For a
//! convolution that matrix is the layer's weights, read cold from memory once per forward; at
//! batch 1 the packing alone was 12 % of the forward pass (perf), and bias + ReLU were a second
//! pass over the output. Here the weights are laid out at load in the order the micro-kernel
//! reads them, so each forward streams them exactly once, and the last pass over each output
//! tile adds the bias and applies ReLU before storing it.
//!
//! Layout: B (k × n, row-major) becomes ⌈n / 64⌉ panels, each k × 64 contiguous (the last one
//! padded with zero columns; its tiles go through a small buffer so nothing past n is written).
//! The AVX-512 micro-kernel keeps a 6 × 64 tile of C in 24 registers and per k loads one 64-wide
//! row of the panel and broadcasts one A value per row, each used by four FMAs. (A 12 × 32 tile
//! needs twice the broadcasts per FMA, and on Zen 4 those compete with the FMAs for the vector
//! pipes: it ran 5-10 % slower.) A is read in place: its rows are the activations, NHWC. Loops
//! are blocked so that a KC × NC block of B stays in L2 and an MC × KC block of A in L1/L2
//! (BLIS's order).
//!
//! Kernels: AVX-512 (6 × 64 tiles) and AVX2+FMA (6 × 16 quarter-panels), picked at run time by
//! CPU feature; a portable loop elsewhere. All three sum over k in the same order, one fused
//! multiply-add per term, so they agree with each other to rounding of the FMA itself.

use super::isa::{Isa, Kind};

/// Columns per packed panel: four AVX-512 vectors.
pub const NR: usize = 64;

/// Depth of a B block kept in L2 (and of an A block's rows).
const KC: usize = 512;
/// Columns of a B block: KC × NC × 4 bytes = 512 KiB, half of a 1-2 MiB L2.
const NC: usize = 256;
/// Rows of an A block: MC × KC × 4 bytes = 192 KiB.
const MC: usize = 96;
/// Rows of a C tile (every kernel's).
const MR: usize = 6;

/// A row-major k × n matrix packed into panels of [`NR`] columns.
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// `b`: k × n row-major with row stride `ldb` (≥ n).
    pub fn new(b: &[f32], k: usize, n: usize, ldb: usize) -> Self {
        assert!(ldb >= n && (k == 0 || b.len() >= (k - 1) * ldb + n));
        let mut data = vec![0f32; k * n.next_multiple_of(NR)];
        for (p, panel) in data.chunks_exact_mut(k * NR).enumerate() {
            let width = (n - p * NR).min(NR);
            for (kk, row) in panel.chunks_exact_mut(NR).enumerate() {
                row[..width].copy_from_slice(&b[kk * ldb + p * NR..][..width]);
            }
        }
        Self { k, n, data }
    }

    /// Rows k0.. of the panel that holds column `col`.
    fn panel(&self, col: usize, k0: usize) -> *const f32 {
        debug_assert!(col.is_multiple_of(NR) && col < self.n && k0 <= self.k);
        self.data[(col / NR) * self.k * NR + k0 * NR..].as_ptr()
    }
}

/// What happens to an output tile after its last product is summed in.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    /// Added to every row (length ≥ the last column written).
    pub bias: &'a [f32],
    pub relu: bool,
}

/// `C[0..rows, cols] (+)= A · B[:, cols]`, then the epilogue.
///
/// `a`: rows × B's k at row stride `lda`; `c` points at C's (0, 0), row stride `ldc`; `cols` must
/// start on a multiple of [`NR`]. With `accumulate` the product is added to what C holds (the
/// residual), otherwise C is overwritten.
///
/// # Safety
/// `c` must be valid for writes of rows × ldc elements starting at column `cols.start` of every
/// row, and no other thread may touch those elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    isa: Isa,
    a: &[f32],
    lda: usize,
    rows: usize,
    b: &PackedB,
    cols: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    epilogue: Option<Epilogue>,
) {
    let k = b.k;
    assert!(cols.start.is_multiple_of(NR) && cols.end <= b.n);
    assert!(rows == 0 || a.len() >= (rows - 1) * lda + k);
    if let Some(e) = epilogue {
        assert!(e.bias.len() >= cols.end);
    }
    if rows == 0 || cols.is_empty() {
        return;
    }
    let mut k0 = 0;
    loop {
        let kc = KC.min(k - k0);
        let last = k0 + kc == k;
        let tile = Tile {
            kc,
            lda,
            ldc,
            load: accumulate || k0 > 0,
        };
        for n0 in cols.clone().step_by(NC) {
            let n1 = (n0 + NC).min(cols.end);
            for m0 in (0..rows).step_by(MC) {
                let m1 = (m0 + MC).min(rows);
                for p in (n0..n1).step_by(NR) {
                    let bp = b.panel(p, k0);
                    let epi = if last { epilogue } else { None };
                    let width = (cols.end - p).min(NR);
                    // SAFETY: rows m0..m1 of A hold k values from k0 (asserted above); the
                    // panel holds kc rows of NR from k0; C's tile lies in the caller's block.
                    unsafe {
                        let ap = a.as_ptr().add(m0 * lda + k0);
                        let cp = c.add(m0 * ldc + p);
                        if width == NR {
                            let epi = epi.map(|e| (e.bias[p..p + NR].as_ptr(), e.relu));
                            panel(isa, &tile, m1 - m0, ap, bp, cp, epi);
                        } else {
                            narrow_panel(isa, &tile, m1 - m0, ap, bp, (cp, width), epi, p);
                        }
                    }
                }
            }
        }
        if last {
            break;
        }
        k0 += kc;
    }
}

/// Rows × NR of C from one panel, on the best kernel `isa` names.
unsafe fn panel(
    isa: Isa,
    t: &Tile,
    rows: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    epi: Epi,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        // `isa` can only have been made after checking the CPU (see `Isa`).
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 => x86::panel_avx512(t, rows, a, b, c, epi),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => x86::panel_avx2(t, rows, a, b, c, epi),
            _ => panel_portable(t, rows, a, b, c, epi),
        }
    }
}

/// The last panel when C has fewer than NR columns left: computed in a buffer of NR columns
/// (the packed B's padding is zeros), then only `width` columns are copied out.
#[allow(clippy::too_many_arguments)]
unsafe fn narrow_panel(
    isa: Isa,
    t: &Tile,
    rows: usize,
    a: *const f32,
    b: *const f32,
    (c, width): (*mut f32, usize),
    epilogue: Option<Epilogue>,
    col: usize,
) {
    let mut buf = [0f32; MC * NR];
    let mut bias = [0f32; NR];
    debug_assert!(rows <= MC && width < NR);
    // SAFETY: C's rows hold `width` columns from `c` (the caller's block).
    unsafe {
        if t.load {
            for i in 0..rows {
                std::ptr::copy_nonoverlapping(c.add(i * t.ldc), buf[i * NR..].as_mut_ptr(), width);
            }
        }
        let epi = epilogue.map(|e| {
            bias[..width].copy_from_slice(&e.bias[col..col + width]);
            (bias.as_ptr(), e.relu)
        });
        let tb = Tile { ldc: NR, ..*t };
        panel(isa, &tb, rows, a, b, buf.as_mut_ptr(), epi);
        for i in 0..rows {
            std::ptr::copy_nonoverlapping(buf[i * NR..].as_ptr(), c.add(i * t.ldc), width);
        }
    }
}

/// One call's shape shared by every tile of it.
#[derive(Clone, Copy)]
struct Tile {
    kc: usize,
    lda: usize,
    ldc: usize,
    /// Start from C's contents (the residual, or an earlier K block) instead of zero.
    load: bool,
}

/// Bias pointer (NR values) and ReLU, on the last K block only.
type Epi = Option<(*const f32, bool)>;

/// Reference kernel: same summation order as the SIMD ones (k ascending, one FMA per term).
unsafe fn panel_portable(
    t: &Tile,
    rows: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    epi: Epi,
) {
    for i in 0..rows {
        let mut acc = [0f32; NR];
        // SAFETY (all accesses): within the tile the caller described.
        unsafe {
            if t.load {
                acc.copy_from_slice(std::slice::from_raw_parts(c.add(i * t.ldc), NR));
            }
            for p in 0..t.kc {
                let av = *a.add(i * t.lda + p);
                let br = std::slice::from_raw_parts(b.add(p * NR), NR);
                acc.iter_mut()
                    .zip(br)
                    .for_each(|(s, &bv)| *s = av.mul_add(bv, *s));
            }
            if let Some((bias, relu)) = epi {
                let bias = std::slice::from_raw_parts(bias, NR);
                acc.iter_mut().zip(bias).for_each(|(s, &bv)| {
                    *s += bv;
                    if relu {
                        *s = s.max(0.0);
                    }
                });
            }
            std::ptr::copy_nonoverlapping(acc.as_ptr(), c.add(i * t.ldc), NR);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Epi, MR, NR, Tile};
    use std::arch::x86_64::*;

    /// Calls `$tile::<r>` for the r = 1..=MR rows left.
    macro_rules! by_rows {
        ($r:expr, $tile:ident, $($arg:expr),*) => {
            match $r {
                6 => $tile::<6>($($arg),*),
                5 => $tile::<5>($($arg),*),
                4 => $tile::<4>($($arg),*),
                3 => $tile::<3>($($arg),*),
                2 => $tile::<2>($($arg),*),
                _ => $tile::<1>($($arg),*),
            }
        };
    }

    /// AVX-512: MR × 64 tiles (24 accumulators + 4 B vectors of 32 registers).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel_avx512(
        t: &Tile,
        rows: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        epi: Epi,
    ) {
        let mut i = 0;
        while i < rows {
            let r = (rows - i).min(MR);
            // SAFETY: rows i..i+r are inside the caller's block.
            unsafe {
                let (a, c) = (a.add(i * t.lda), c.add(i * t.ldc));
                by_rows!(r, tile512, t, a, b, c, epi);
            }
            i += r;
        }
    }

    /// AVX2 + FMA: 16 registers, so MR × 16 tiles over the panel's four column quarters
    /// (12 accumulators + 2 B vectors).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panel_avx2(
        t: &Tile,
        rows: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        epi: Epi,
    ) {
        for quarter in (0..NR).step_by(16) {
            let epi = epi.map(|(bias, relu)| (bias.wrapping_add(quarter), relu));
            let mut i = 0;
            while i < rows {
                let r = (rows - i).min(MR);
                // SAFETY: rows i..i+r, columns quarter..quarter+16 are inside the caller's block.
                unsafe {
                    let (a, b, c) = (a.add(i * t.lda), b.add(quarter), c.add(i * t.ldc + quarter));
                    by_rows!(r, tile256, t, a, b, c, epi);
                }
                i += r;
            }
        }
    }

    /// `$name::<M>`: an M × (V·W) tile of C in M·V vector registers of W lanes, for one
    /// instruction set: C's tile loaded (or zero), one k-step per B row (V loads, M broadcasts,
    /// M·V FMAs), then bias and ReLU in registers, then the store.
    macro_rules! tile_kernel {
        ($name:ident, $feature:literal, $vec:ty, $w:literal, $v:literal, $load:ident,
         $store:ident, $set1:ident, $zero:ident, $fmadd:ident, $add:ident, $max:ident) => {
            #[inline]
            #[target_feature(enable = $feature)]
            unsafe fn $name<const M: usize>(
                t: &Tile,
                a: *const f32,
                b: *const f32,
                c: *mut f32,
                epi: Epi,
            ) {
                // SAFETY (all accesses): the tile is M rows × V·W columns inside the caller's
                // block.
                unsafe {
                    // Ask for the tile's lines of C now and read them only after the k loop:
                    // C is often a multi-megabyte output (or the residual) out in memory, and
                    // loading it first, or storing to it cold, stalled each tile on a miss.
                    for i in 0..M {
                        for line in (0..$w * $v).step_by(16) {
                            let p = c.add(i * t.ldc + line).cast::<i8>();
                            _mm_prefetch::<_MM_HINT_T0>(p);
                        }
                    }
                    let mut acc = [[$zero(); $v]; M];
                    for p in 0..t.kc {
                        let bv: [$vec; $v] = std::array::from_fn(|v| $load(b.add(p * NR + $w * v)));
                        for (i, row) in acc.iter_mut().enumerate() {
                            let av = $set1(*a.add(i * t.lda + p));
                            for (x, bv) in row.iter_mut().zip(bv) {
                                *x = $fmadd(av, bv, *x);
                            }
                        }
                    }
                    if t.load {
                        for (i, row) in acc.iter_mut().enumerate() {
                            for (v, x) in row.iter_mut().enumerate() {
                                *x = $add(*x, $load(c.add(i * t.ldc + $w * v)));
                            }
                        }
                    }
                    if let Some((bias, relu)) = epi {
                        let bias: [$vec; $v] = std::array::from_fn(|v| $load(bias.add($w * v)));
                        let z = $zero();
                        for row in acc.iter_mut() {
                            for (x, bv) in row.iter_mut().zip(bias) {
                                *x = $add(*x, bv);
                                if relu {
                                    *x = $max(*x, z);
                                }
                            }
                        }
                    }
                    for (i, row) in acc.iter().enumerate() {
                        for (v, x) in row.iter().enumerate() {
                            $store(c.add(i * t.ldc + $w * v), *x);
                        }
                    }
                }
            }
        };
    }

    // A whole 64-column panel: 4 vectors of 16.
    tile_kernel!(
        tile512,
        "avx512f",
        __m512,
        16,
        4,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_setzero_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_max_ps
    );
    // A 16-column quarter panel: 2 vectors of 8.
    tile_kernel!(
        tile256,
        "avx2,fma",
        __m256,
        8,
        2,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_max_ps
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// Every kernel this CPU runs, against a plain f64 triple loop, on shapes that exercise the
    /// edges: rows not a multiple of any tile height, K over several KC blocks, column ranges
    /// that start inside B, strided A and C, accumulate and both epilogues.
    #[test]
    fn kernels_match_a_reference_product() {
        let isas = Isa::available();
        assert!(isas.contains(&Isa::detect()));
        for &(rows, k, n, c0, c1) in &[
            (1, 3, 32, 0, 32),
            (13, 70, 128, 64, 128),
            (37, 1100, 96, 0, 96),
            (101, 64, 320, 64, 320),
            (14, 40, 100, 64, 100),
            (3, 9, 1000, 0, 1000),
        ] {
            let (lda, ldb, ldc) = (k + 5, n + 3, n + 7);
            let a = lcg(1, rows * lda);
            let bm = lcg(2, k * ldb);
            let bias = lcg(3, n);
            let init = lcg(4, rows * ldc);
            let packed = PackedB::new(&bm, k, n, ldb);
            for isa in &isas {
                for (accumulate, relu, with_bias) in [
                    (false, false, false),
                    (true, false, true),
                    (false, true, true),
                    (true, true, true),
                ] {
                    let mut c = init.clone();
                    let epi = with_bias.then_some(Epilogue { bias: &bias, relu });
                    unsafe {
                        gemm(
                            *isa,
                            &a,
                            lda,
                            rows,
                            &packed,
                            c0..c1,
                            c.as_mut_ptr(),
                            ldc,
                            accumulate,
                            epi,
                        )
                    };
                    for i in 0..rows {
                        for j in 0..n {
                            let got = c[i * ldc + j];
                            if !(c0..c1).contains(&j) {
                                assert_eq!(
                                    got,
                                    init[i * ldc + j],
                                    "{isa:?}: wrote outside the columns"
                                );
                                continue;
                            }
                            let mut want: f64 = (0..k)
                                .map(|p| a[i * lda + p] as f64 * bm[p * ldb + j] as f64)
                                .sum();
                            if accumulate {
                                want += init[i * ldc + j] as f64;
                            }
                            if with_bias {
                                want += bias[j] as f64;
                                if relu {
                                    want = want.max(0.0);
                                }
                            }
                            assert!(
                                (got as f64 - want).abs()
                                    <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt(),
                                "{isa:?} rows {rows} k {k} n {n}: C[{i},{j}] = {got}, want {want}"
                            );
                        }
                    }
                    // Untouched stride padding past the last column.
                    for i in 0..rows {
                        assert_eq!(
                            &c[i * ldc + n..i * ldc + ldc],
                            &init[i * ldc + n..i * ldc + ldc]
                        );
                    }
                }
            }
        }
    }
}
