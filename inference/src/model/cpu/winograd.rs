//! Winograd convolution for ResNet50's 3×3 stride-1 convolutions, NHWC: F(4×4, 3×3) or
//! F(2×2, 3×3) (see [`Tiling`]).
//!
//! An m×m output tile needs (m+2)² multiplies per (cin, cout) pair instead of 9m²: the input's
//! (m+2)×(m+2) tiles and the filters are transformed into (m+2)² "frequency" positions, each
//! position is one GEMM (tiles × cin) · (cin × cout), and the results transform back to m×m
//! outputs. F(2×2) cuts the GEMM work 2.25×, F(4×4) 4×.
//!
//! Layouts: filters U as P = (m+2)² matrices of (cin × cout), transformed once at load (in f64)
//! and packed for the micro-kernel. Per call, V is (P, tiles, cin) and M is (P, tiles, cout):
//! each GEMM reads and writes dense row-major matrices. (With V as (tiles, P, cin) the GEMM's
//! rows were P·cin floats apart: 4 KiB at cin = 64, so the micro-kernel's rows all fell in one
//! L1 set.) A tile's transform writes or reads P runs of cin or cout floats, 16 channels at a
//! time in vector registers, compiled for the CPU's widest vectors (`simd_versions!`).

use rayon::prelude::*;

use super::buffers::{SendPtr, grow};
use super::isa::{Isa, simd_versions};
use super::packed_gemm::{self, PackedB};

/// The two tile sizes. F(m×m, 3×3) computes an m×m output tile from an (m+2)×(m+2) input tile
/// with (m+2)² multiplies per (cin, cout) pair, against 9m² for a direct convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiling {
    /// F(2×2, 3×3): 16 products for 4 outputs (2.25× fewer than direct); transforms use only 0,
    /// ±1, ½, so it rounds like a plain convolution.
    F2,
    /// F(4×4, 3×3): 36 products for 16 outputs (4× fewer); coefficients up to 8 cost about one
    /// decimal digit of f32 precision (parity: 5e-5 on logits of magnitude 10). Pays where the
    /// image divides into 4×4 tiles: a 14×14 map needs 16 tiles for 12.25 tiles of output.
    F4,
}

impl Tiling {
    /// Output tile side.
    const fn m(self) -> usize {
        match self {
            Tiling::F2 => 2,
            Tiling::F4 => 4,
        }
    }

    /// Input tile side.
    const fn alpha(self) -> usize {
        self.m() + 2
    }

    /// Positions of the transformed tile: one GEMM each.
    const fn positions(self) -> usize {
        self.alpha() * self.alpha()
    }

    /// G of U = G g Gᵀ, (alpha × 3).
    fn g(self) -> Vec<[f64; 3]> {
        match self {
            Tiling::F2 => vec![
                [1.0, 0.0, 0.0],
                [0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5],
                [0.0, 0.0, 1.0],
            ],
            Tiling::F4 => vec![
                [1.0 / 4.0, 0.0, 0.0],
                [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
                [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
                [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
                [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
                [0.0, 0.0, 1.0],
            ],
        }
    }
}

pub struct Winograd3x3 {
    tiling: Tiling,
    cin: usize,
    cout: usize,
    /// P = tiling.positions() matrices of (cin × cout), packed for the micro-kernel.
    u: Vec<PackedB>,
    /// Forces a schedule (tests); `None` picks one per call.
    schedule: Option<Schedule>,
}

/// How one call is split over threads (see [`Winograd3x3::forward`]).
#[derive(Clone, Copy, Debug)]
enum Schedule {
    /// Tiles cut into this many blocks; each thread takes whole blocks.
    Blocks(usize),
    /// One block of every tile; the threads split each step.
    Whole,
}

impl Winograd3x3 {
    /// `w`: the 3×3 filters laid out (ky, kx, cin, cout).
    pub fn new(w: &[f32], cin: usize, cout: usize, tiling: Tiling) -> Self {
        assert_eq!(w.len(), 9 * cin * cout);
        let (gm, alpha) = (tiling.g(), tiling.alpha());
        let mut u = vec![0f32; tiling.positions() * cin * cout];
        for ci in 0..cin {
            for co in 0..cout {
                let g = |ky: usize, kx: usize| w[((ky * 3 + kx) * cin + ci) * cout + co] as f64;
                for i in 0..alpha {
                    for j in 0..alpha {
                        let s: f64 = (0..9)
                            .map(|ab| gm[i][ab / 3] * g(ab / 3, ab % 3) * gm[j][ab % 3])
                            .sum();
                        u[((i * alpha + j) * cin + ci) * cout + co] = s as f32;
                    }
                }
            }
        }
        let u = u
            .chunks_exact(cin * cout)
            .map(|up| PackedB::new(up, cin, cout, cout))
            .collect();
        Self {
            tiling,
            cin,
            cout,
            u,
            schedule: None,
        }
    }

    /// `dst = act(conv3x3(src) + bias)`, stride 1, padding 1; `src` is (n, h, w, cin), `dst`
    /// (n, h, w, cout). `v` and `m` are scratch kept by the caller.
    ///
    /// Two schedules. With many tiles and few channels (ResNet50's first two stages), the tiles
    /// are cut into blocks whose V and M stay in cache, and each thread takes whole blocks
    /// (transform, 16 GEMMs, transform back) with its own scratch: at batch 8 the unblocked V and
    /// M of the 56×56 stage are 25 MB each and the passes over them were memory-bound. Otherwise
    /// (few tiles, or large filters that each block would have to stream again) one block holds
    /// every tile and the threads split each step.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        src: &[f32],
        (n, h, w): (usize, usize, usize),
        v: &mut Vec<f32>,
        m: &mut Vec<f32>,
        dst: &mut [f32],
        bias: &[f32],
        relu: bool,
    ) {
        let (cin, cout) = (self.cin, self.cout);
        let tm = self.tiling.m();
        let geo = Geometry {
            tiling: self.tiling,
            h,
            w,
            th: h.div_ceil(tm),
            tw: w.div_ceil(tm),
            cin,
            cout,
        };
        let pp = self.tiling.positions();
        let tiles = n * geo.th * geo.tw;
        assert!(src.len() >= n * h * w * cin && dst.len() >= n * h * w * cout);
        assert_eq!(bias.len(), cout);
        let out = SendPtr(dst.as_mut_ptr());
        let threads = rayon::current_num_threads();
        let blocks = tiles.div_ceil(self.block_tiles());
        let blocked = threads > 1 && cin <= BLOCKED_MAX_CIN && blocks >= threads;
        let schedule = self.schedule.unwrap_or(if blocked {
            Schedule::Blocks(blocks.next_multiple_of(threads))
        } else {
            Schedule::Whole
        });

        if let Schedule::Blocks(blocks) = schedule {
            let per = tiles.div_ceil(blocks);
            (0..blocks).into_par_iter().for_each(|b| {
                let range = b * per..((b + 1) * per).min(tiles);
                if range.is_empty() {
                    return;
                }
                let count = range.len();
                BLOCK_SCRATCH.with(|scratch| {
                    let (v, m) = &mut *scratch.borrow_mut();
                    let v = grow(v, pp * stride(count, cin));
                    let m = grow(m, pp * stride(count, cout));
                    let vp = SendPtr(v.as_mut_ptr());
                    // SAFETY: `v` holds P × count rows of cin; rows 0..count are written.
                    unsafe { input_tiles(src, &geo, range.clone(), &vp, (count, 0)) };
                    self.gemms(v, m, count, false);
                    // SAFETY: `dst` holds every output pixel (asserted above); blocks own
                    // disjoint tiles.
                    unsafe { output_tiles(m, &geo, range, (count, 0), &out, bias, relu) };
                });
            });
            return;
        }

        let v = grow(v, pp * stride(tiles, cin));
        let m = grow(m, pp * stride(tiles, cout));
        let vp = SendPtr(v.as_mut_ptr());
        (0..tiles.div_ceil(TASK_TILES))
            .into_par_iter()
            .for_each(|c| {
                let range = c * TASK_TILES..((c + 1) * TASK_TILES).min(tiles);
                // SAFETY: `v` holds P × tiles rows; each task writes the rows of its own tiles.
                unsafe { input_tiles(src, &geo, range.clone(), &vp, (tiles, range.start)) };
            });
        self.gemms(v, m, tiles, true);
        let m = &*m;
        (0..tiles.div_ceil(TASK_TILES))
            .into_par_iter()
            .for_each(|c| {
                let range = c * TASK_TILES..((c + 1) * TASK_TILES).min(tiles);
                // SAFETY: `dst` holds every output pixel (asserted above); tasks own disjoint
                // tiles.
                unsafe {
                    output_tiles(
                        m,
                        &geo,
                        range.clone(),
                        (tiles, range.start),
                        &out,
                        bias,
                        relu,
                    )
                };
            });
    }

    /// Tiles per block so that a block's V and M take about `BLOCK_BYTES`.
    fn block_tiles(&self) -> usize {
        let pp = self.tiling.positions();
        (BLOCK_BYTES / (pp * (self.cin + self.cout) * 4)).max(MIN_BLOCK_TILES)
    }

    /// The P GEMMs `M[:, p, :] = V[:, p, :] · U[p]` over `tiles` tiles, each single-threaded;
    /// with `parallel` they run side by side (both cores busy even when `tiles` is small).
    fn gemms(&self, v: &[f32], m: &mut [f32], tiles: usize, parallel: bool) {
        let (cin, cout) = (self.cin, self.cout);
        let (vs, ms) = (stride(tiles, cin), stride(tiles, cout));
        let pp = self.tiling.positions();
        assert!(v.len() >= pp * vs && m.len() >= pp * ms);
        let mp = SendPtr(m.as_mut_ptr());
        let isa = Isa::detect();
        let one = |p: usize| {
            let mp = &mp;
            // SAFETY: `m` holds P × tiles × cout values (asserted above); GEMM p writes only
            // matrix p, so the P calls write disjoint elements of `m`.
            unsafe {
                packed_gemm::gemm(
                    isa,
                    &v[p * vs..],
                    cin,
                    tiles,
                    &self.u[p],
                    0..cout,
                    mp.0.add(p * ms),
                    cout,
                    false,
                    None,
                )
            }
        };
        if parallel {
            (0..pp).into_par_iter().for_each(one);
        } else {
            (0..pp).for_each(one);
        }
    }
}

/// Distance between two of the P matrices of V or M (rows × c each), in floats: one cache line
/// more than the matrix. A tile's transform touches all P matrices at once, and at exact
/// multiples of 4 KiB apart (rows × c often is) those 16 streams would share one L1 set.
fn stride(rows: usize, c: usize) -> usize {
    rows * c + 16
}

/// Cache budget of one block's V + M in the blocked schedule: a quarter of a Zen 4 core's 1 MiB
/// L2, which also holds the filters' panel and the source rows. (Blocks of 2 MiB spill to L3:
/// 256 KiB runs the 56×56 and 28×28 stages 10-20 % faster at batch 1 and 8.)
const BLOCK_BYTES: usize = 256 << 10;
/// Fewer rows than this and the GEMMs lose more than the cache gains.
const MIN_BLOCK_TILES: usize = 24;
/// Largest input width that uses blocks: above it each block would re-stream big filters.
const BLOCKED_MAX_CIN: usize = 128;
/// Tiles per task in the unblocked schedule's transforms.
const TASK_TILES: usize = 16;

thread_local! {
    /// The blocked schedule's V and M, one pair per pool thread, kept between calls.
    static BLOCK_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = Default::default();
}

struct Geometry {
    tiling: Tiling,
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    cin: usize,
    cout: usize,
}

impl Geometry {
    /// Tile index → (image, tile row, tile column).
    fn tile(&self, t: usize) -> (usize, usize, usize) {
        let per_image = self.th * self.tw;
        (t / per_image, (t % per_image) / self.tw, t % self.tw)
    }
}

/// Input transform of tiles `range` into V behind `v`, P matrices of (rows, cin) `stride` apart,
/// tile `range.start` at row `first`.
///
/// # Safety
/// `v` must hold P × stride(rows, cin) values, and no other thread may touch these tiles' rows.
#[inline(always)]
unsafe fn input_tiles_on(
    src: &[f32],
    g: &Geometry,
    range: std::ops::Range<usize>,
    v: &SendPtr,
    (rows, first): (usize, usize),
) {
    let (h, w, cin) = (g.h, g.w, g.cin);
    let (tm, alpha) = (g.tiling.m(), g.tiling.alpha());
    assert!(first + range.len() <= rows);
    let zeros = vec![0f32; cin];
    // The input tile's pixels, row-major (alpha × alpha); zeros past the image edge (padding).
    let mut d: [&[f32]; 36] = [&zeros[..]; 36];
    for (k, t) in range.enumerate() {
        let (i, ty, tx) = g.tile(t);
        for (q, px) in d[..alpha * alpha].iter_mut().enumerate() {
            let y = (tm * ty + q / alpha) as isize - 1;
            let x = (tm * tx + q % alpha) as isize - 1;
            *px = if y < 0 || y >= h as isize || x < 0 || x >= w as isize {
                &zeros[..]
            } else {
                let at = ((i * h + y as usize) * w + x as usize) * cin;
                &src[at..at + cin]
            };
        }
        let out = v.0.wrapping_add((first + k) * cin);
        // SAFETY: row first + k of each of the matrices, inside `v` (the caller's promise).
        unsafe {
            match g.tiling {
                Tiling::F2 => input_tile::<4>(&d, out, stride(rows, cin), cin, bt4),
                Tiling::F4 => input_tile::<6>(&d, out, stride(rows, cin), cin, bt6),
            }
        }
    }
}

/// Output transform of tiles `range` (their products in M, (P, rows, cout), tile `range.start` at
/// row `first`) into the NHWC output behind `out`.
///
/// # Safety
/// `out` must be valid for the tiles' output pixels, which no other thread may touch.
#[inline(always)]
unsafe fn output_tiles_on(
    m: &[f32],
    g: &Geometry,
    range: std::ops::Range<usize>,
    (rows, first): (usize, usize),
    out: &SendPtr,
    bias: &[f32],
    relu: bool,
) {
    let (h, w, cout) = (g.h, g.w, g.cout);
    let tm = g.tiling.m();
    assert!(first + range.len() <= rows && m.len() >= g.tiling.positions() * stride(rows, cout));
    for (k, t) in range.enumerate() {
        let (i, ty, tx) = g.tile(t);
        // The tile's output pixels, row-major (m × m); `None` past the image edge.
        let mut px: [Option<&mut [f32]>; 16] = Default::default();
        for (q, slot) in px[..tm * tm].iter_mut().enumerate() {
            let (y, x) = (tm * ty + q / tm, tm * tx + q % tm);
            // SAFETY: (y, x) is inside the image, so the slice lies in the caller's `dst`
            // (asserted n·h·w·cout long); each output pixel belongs to exactly one tile, and
            // each tile to one task, so no two live slices overlap.
            *slot = (y < h && x < w).then(|| unsafe {
                std::slice::from_raw_parts_mut(out.0.add(((i * h + y) * w + x) * cout), cout)
            });
        }
        let t = &m[(first + k) * cout..];
        match g.tiling {
            Tiling::F2 => output_tile::<4, 2>(t, stride(rows, cout), &mut px, (bias, relu), at4),
            Tiling::F4 => output_tile::<6, 4>(t, stride(rows, cout), &mut px, (bias, relu), at6),
        }
    }
}

simd_versions!(unsafe fn input_tiles = input_tiles_on(
    src: &[f32],
    g: &Geometry,
    range: std::ops::Range<usize>,
    v: &SendPtr,
    rows_first: (usize, usize),
));

simd_versions!(unsafe fn output_tiles = output_tiles_on(
    m: &[f32],
    g: &Geometry,
    range: std::ops::Range<usize>,
    rows_first: (usize, usize),
    out: &SendPtr,
    bias: &[f32],
    relu: bool,
));

/// Channels transformed together: one AVX-512 vector.
const LANES: usize = 16;
type Lanes = [f32; LANES];

/// `out[p·stride + c] = (Bᵀ d B)[p]` over channels c < cin, for an A × A input tile: `d[k]` is the
/// input at (k / A, k % A), `bt` is Bᵀ applied to one column.
///
/// Channels go LANES at a time through local arrays, lane by lane in the innermost loops, which
/// the compiler turns into vector instructions. (One channel at a time over 16-36 separately
/// borrowed runs defeated the vectoriser.)
///
/// # Safety
/// `out` must be valid for writes at p·stride + c for p < A², c < cin.
#[inline(always)]
unsafe fn input_tile<const A: usize>(
    d: &[&[f32]; 36],
    out: *mut f32,
    stride: usize,
    cin: usize,
    bt: impl Fn([f32; A]) -> [f32; A] + Copy,
) {
    let mut x = [[0f32; LANES]; 36];
    let mut t = [[0f32; LANES]; 36];
    for c0 in (0..cin).step_by(LANES) {
        let n = (cin - c0).min(LANES);
        for k in 0..A * A {
            load_lanes(&mut x[k], &d[k][c0..], n);
        }
        // Columns of Bᵀ d first, then rows of (Bᵀ d) B.
        for j in 0..A {
            for l in 0..LANES {
                let o = bt(std::array::from_fn(|r| x[r * A + j][l]));
                for r in 0..A {
                    t[r * A + j][l] = o[r];
                }
            }
        }
        for r in 0..A {
            for l in 0..LANES {
                let o = bt(std::array::from_fn(|j| t[r * A + j][l]));
                for q in 0..A {
                    x[r * A + q][l] = o[q];
                }
            }
        }
        for (p, v) in x[..A * A].iter().enumerate() {
            // SAFETY: position p, channels c0..c0 + n: inside what the caller vouched for.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.add(p * stride + c0), n) };
            store_lanes(dst, v);
        }
    }
}

/// `dst = v[..dst.len()]`; a whole vector when dst has LANES values (a fixed-size copy the
/// compiler inlines, where a variable one calls memmove for 64 bytes).
#[inline(always)]
fn store_lanes(dst: &mut [f32], v: &Lanes) {
    if let Ok(dst) = <&mut Lanes>::try_from(&mut *dst) {
        *dst = *v;
    } else {
        let n = dst.len();
        dst.copy_from_slice(&v[..n]);
    }
}

/// `dst[..n] = src[..n]`, the rest zero; a whole vector when n = LANES.
#[inline(always)]
fn load_lanes(dst: &mut Lanes, src: &[f32], n: usize) {
    if n == LANES {
        *dst = src[..LANES].try_into().expect("LANES values");
    } else {
        *dst = [0.0; LANES];
        dst[..n].copy_from_slice(&src[..n]);
    }
}

/// The M × M outputs of one tile from its A² products `t[p·stride..][..cout]` (`at` is Aᵀ applied
/// to one column), plus bias, optionally ReLU, into the output pixels that exist (`None` past the
/// image edge), row-major. Lanes as in [`input_tile`].
#[inline(always)]
fn output_tile<const A: usize, const M: usize>(
    t: &[f32],
    stride: usize,
    px: &mut [Option<&mut [f32]>; 16],
    (bias, relu): (&[f32], bool),
    at: impl Fn([f32; A]) -> [f32; M] + Copy,
) {
    let cout = bias.len();
    let mut x = [[0f32; LANES]; 36];
    let mut s = [[0f32; LANES]; 24];
    let mut y = [[0f32; LANES]; 16];
    let mut b = [0f32; LANES];
    for c0 in (0..cout).step_by(LANES) {
        let n = (cout - c0).min(LANES);
        for p in 0..A * A {
            load_lanes(&mut x[p], &t[p * stride + c0..], n);
        }
        load_lanes(&mut b, &bias[c0..], n);
        // Columns of Aᵀ m first (s: M × A), then rows of (Aᵀ m) A (y: M × M), plus bias.
        for j in 0..A {
            for l in 0..LANES {
                let o = at(std::array::from_fn(|r| x[r * A + j][l]));
                for r in 0..M {
                    s[r * A + j][l] = o[r];
                }
            }
        }
        for r in 0..M {
            for l in 0..LANES {
                let o = at(std::array::from_fn(|j| s[r * A + j][l]));
                for q in 0..M {
                    let v = o[q] + b[l];
                    y[r * M + q][l] = if relu { v.max(0.0) } else { v };
                }
            }
        }
        for (o, v) in px[..M * M].iter_mut().zip(&y) {
            if let Some(o) = o {
                store_lanes(&mut o[c0..c0 + n], v);
            }
        }
    }
}

/// F(2×2)'s Bᵀ on a column of four.
#[inline(always)]
fn bt4(d: [f32; 4]) -> [f32; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// F(2×2)'s Aᵀ on a column of four.
#[inline(always)]
fn at4(m: [f32; 4]) -> [f32; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

/// F(4×4)'s Bᵀ on a column of six.
#[inline(always)]
fn bt6(d: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * (d[1] + d[2]) + d[3] + d[4],
        4.0 * (d[1] - d[2]) - d[3] + d[4],
        2.0 * (d[3] - d[1]) - d[2] + d[4],
        2.0 * (d[1] - d[3]) - d[2] + d[4],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// F(4×4)'s Aᵀ on a column of six.
#[inline(always)]
fn at6(m: [f32; 6]) -> [f32; 4] {
    let (s12, d12, s34, d34) = (m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]);
    [
        m[0] + s12 + s34,
        d12 + 2.0 * d34,
        s12 + 4.0 * s34,
        d12 + 8.0 * d34 + m[5],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// Direct 3×3 convolution, stride 1, padding 1, NHWC, weights (ky, kx, cin, cout).
    fn direct(
        src: &[f32],
        (n, h, w, cin): (usize, usize, usize, usize),
        wt: &[f32],
        cout: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; n * h * w * cout];
        for i in 0..n {
            for y in 0..h {
                for x in 0..w {
                    for co in 0..cout {
                        let mut s = 0f64;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) =
                                    (y as isize + ky as isize - 1, x as isize + kx as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                for ci in 0..cin {
                                    s += src[((i * h + iy as usize) * w + ix as usize) * cin + ci]
                                        as f64
                                        * wt[((ky * 3 + kx) * cin + ci) * cout + co] as f64;
                                }
                            }
                        }
                        out[((i * h + y) * w + x) * cout + co] = s as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_direct_convolution_on_odd_and_even_sizes() {
        // Odd sizes leave half-empty edge tiles; cin/cout not multiples of the SIMD width.
        for (n, h, w, cin, cout) in [
            (2, 5, 3, 7, 9),
            (1, 4, 6, 16, 5),
            (1, 7, 7, 3, 32),
            (3, 9, 8, 20, 12),
        ] {
            let src = pseudo_random(n * h * w * cin, 1);
            let wt = pseudo_random(9 * cin * cout, 2);
            let bias = pseudo_random(cout, 3);
            let want = direct(&src, (n, h, w, cin), &wt, cout);
            for tiling in [Tiling::F2, Tiling::F4] {
                let mut wg = Winograd3x3::new(&wt, cin, cout, tiling);
                for (relu, schedule) in [
                    (false, Schedule::Whole),
                    (true, Schedule::Whole),
                    (true, Schedule::Blocks(3)),
                    (false, Schedule::Blocks(1)),
                ] {
                    wg.schedule = Some(schedule);
                    let mut got = vec![f32::NAN; n * h * w * cout];
                    wg.forward(
                        &src,
                        (n, h, w),
                        &mut Vec::new(),
                        &mut Vec::new(),
                        &mut got,
                        &bias,
                        relu,
                    );
                    for (k, (g, d)) in got.iter().zip(&want).enumerate() {
                        let mut e = d + bias[k % cout];
                        if relu {
                            e = e.max(0.0);
                        }
                        assert!(
                            (g - e).abs() < 1e-4,
                            "{tiling:?} {n}x{h}x{w}x{cin}->{cout} relu={relu} at {k}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
