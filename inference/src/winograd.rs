//! Winograd F(2×2, 3×3) for ResNet50's 3×3 stride-1 convolutions, NHWC.
//!
//! A 2×2 output tile needs 16 multiplies per (cin, cout) pair instead of 36: the input's 4×4
//! tiles and the filters are transformed into 16 "frequency" positions, each position is one GEMM
//! (tiles × cin) · (cin × cout), and the 16 results transform back to 2×2 outputs. That cuts the
//! GEMM work of these convolutions 2.25×, for additions-only transforms (F(2,3)'s matrices hold
//! only 0, ±1 and ½, so rounding stays at the level of a plain convolution).
//!
//! Layouts: filters U as 16 × (cin × cout) matrices, transformed once at load (in f64) and packed
//! for the micro-kernel. Per call, V is (16, tiles, cin) and M is (16, tiles, cout): each GEMM
//! reads and writes dense row-major matrices. (With V as (tiles, 16, cin), as before, the GEMM's
//! rows were 16·cin floats apart: 4 KiB at cin = 64, so the micro-kernel's 12 rows all fell in
//! one L1 set.) A tile's transform writes or reads 16 runs of cin or cout floats.

use rayon::prelude::*;

use crate::cpu_model::grow;
use crate::packed_gemm::{self, Isa, PackedB};

/// Positions of the 4×4 transformed tile.
const P: usize = 16;

pub struct Winograd3x3 {
    cin: usize,
    cout: usize,
    /// P matrices of (cin × cout), packed for the micro-kernel.
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
    pub fn new(w: &[f32], cin: usize, cout: usize) -> Self {
        assert_eq!(w.len(), 9 * cin * cout);
        const G: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let mut u = vec![0f32; P * cin * cout];
        for ci in 0..cin {
            for co in 0..cout {
                let g = |ky: usize, kx: usize| w[((ky * 3 + kx) * cin + ci) * cout + co] as f64;
                for i in 0..4 {
                    for j in 0..4 {
                        let s: f64 = (0..9)
                            .map(|ab| G[i][ab / 3] * g(ab / 3, ab % 3) * G[j][ab % 3])
                            .sum();
                        u[((i * 4 + j) * cin + ci) * cout + co] = s as f32;
                    }
                }
            }
        }
        let u = u
            .chunks_exact(cin * cout)
            .map(|up| PackedB::new(up, cin, cout, cout))
            .collect();
        Self {
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
        let geo = Geometry {
            h,
            w,
            th: h.div_ceil(2),
            tw: w.div_ceil(2),
            cin,
            cout,
        };
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
                    let v = grow(v, P * stride(count, cin));
                    let m = grow(m, P * stride(count, cout));
                    let vp = SendPtr(v.as_mut_ptr());
                    // SAFETY: `v` holds P × count rows of cin; rows 0..count are written.
                    unsafe { input_tiles(src, &geo, range.clone(), &vp, (count, 0)) };
                    self.gemms(v, m, count, false);
                    output_tiles(m, &geo, range, (count, 0), &out, bias, relu);
                });
            });
            return;
        }

        let v = grow(v, P * stride(tiles, cin));
        let m = grow(m, P * stride(tiles, cout));
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
                output_tiles(
                    m,
                    &geo,
                    range.clone(),
                    (tiles, range.start),
                    &out,
                    bias,
                    relu,
                );
            });
    }

    /// Tiles per block so that a block's V and M take about `BLOCK_BYTES`.
    fn block_tiles(&self) -> usize {
        (BLOCK_BYTES / (P * (self.cin + self.cout) * 4)).max(MIN_BLOCK_TILES)
    }

    /// The P GEMMs `M[:, p, :] = V[:, p, :] · U[p]` over `tiles` tiles, each single-threaded;
    /// with `parallel` they run side by side (both cores busy even when `tiles` is small).
    fn gemms(&self, v: &[f32], m: &mut [f32], tiles: usize, parallel: bool) {
        let (cin, cout) = (self.cin, self.cout);
        let (vs, ms) = (stride(tiles, cin), stride(tiles, cout));
        assert!(v.len() >= P * vs && m.len() >= P * ms);
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
            (0..P).into_par_iter().for_each(one);
        } else {
            (0..P).for_each(one);
        }
    }
}

/// Distance between two of the P matrices of V or M (rows × c each), in floats: one cache line
/// more than the matrix. A tile's transform touches all P matrices at once, and at exact
/// multiples of 4 KiB apart (rows × c often is) those 16 streams would share one L1 set.
fn stride(rows: usize, c: usize) -> usize {
    rows * c + 16
}

/// Cache budget of one block's V + M in the blocked schedule (per thread, L2-sized).
const BLOCK_BYTES: usize = 2 << 20;
/// Fewer rows than this and the GEMMs lose more than the cache gains.
const MIN_BLOCK_TILES: usize = 48;
/// Largest input width that uses blocks: above it each block would re-stream big filters.
const BLOCKED_MAX_CIN: usize = 128;
/// Tiles per task in the unblocked schedule's transforms.
const TASK_TILES: usize = 16;

thread_local! {
    /// The blocked schedule's V and M, one pair per pool thread, kept between calls.
    static BLOCK_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = Default::default();
}

struct Geometry {
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
unsafe fn input_tiles(
    src: &[f32],
    g: &Geometry,
    range: std::ops::Range<usize>,
    v: &SendPtr,
    (rows, first): (usize, usize),
) {
    let (h, w, cin) = (g.h, g.w, g.cin);
    assert!(first + range.len() <= rows);
    let zeros = vec![0f32; cin];
    for (k, t) in range.enumerate() {
        let (i, ty, tx) = g.tile(t);
        let d: [&[f32]; P] = std::array::from_fn(|k| {
            let y = (2 * ty + k / 4) as isize - 1;
            let x = (2 * tx + k % 4) as isize - 1;
            if y < 0 || y >= h as isize || x < 0 || x >= w as isize {
                &zeros[..]
            } else {
                let at = ((i * h + y as usize) * w + x as usize) * cin;
                &src[at..at + cin]
            }
        });
        // SAFETY: row first + k of each of the P matrices, inside `v` (the caller's promise).
        unsafe { input_tile(&d, v.0.add((first + k) * cin), stride(rows, cin), cin) };
    }
}

/// Output transform of tiles `range` (their products in M, (P, rows, cout), tile `range.start` at
/// row `first`) into the NHWC output behind `out`.
fn output_tiles(
    m: &[f32],
    g: &Geometry,
    range: std::ops::Range<usize>,
    (rows, first): (usize, usize),
    out: &SendPtr,
    bias: &[f32],
    relu: bool,
) {
    let (h, w, cout) = (g.h, g.w, g.cout);
    assert!(first + range.len() <= rows && m.len() >= P * stride(rows, cout));
    for (k, t) in range.enumerate() {
        let (i, ty, tx) = g.tile(t);
        let pixel = |a: usize, b: usize| {
            let (y, x) = (2 * ty + a, 2 * tx + b);
            // SAFETY: (y, x) is inside the image, so the slice lies in the caller's `dst`
            // (asserted n·h·w·cout long); each output pixel belongs to exactly one tile, and
            // each tile to one task, so no two live slices overlap.
            (y < h && x < w).then(|| unsafe {
                std::slice::from_raw_parts_mut(out.0.add(((i * h + y) * w + x) * cout), cout)
            })
        };
        let mut px = [pixel(0, 0), pixel(0, 1), pixel(1, 0), pixel(1, 1)];
        output_tile(
            &m[(first + k) * cout..],
            stride(rows, cout),
            &mut px,
            bias,
            relu,
        );
    }
}

pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: used only to hand disjoint regions of one buffer to rayon tasks (see the GEMM loop).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// `out[p·stride + c] = (Bᵀ d B)[p]` for each channel c; `d[k]` is the input at (k / 4, k % 4).
///
/// # Safety
/// `out` must be valid for writes at p·stride + c for p < P, c < cin.
unsafe fn input_tile(d: &[&[f32]; P], out: *mut f32, stride: usize, cin: usize) {
    let d: [&[f32]; P] = std::array::from_fn(|k| &d[k][..cin]);
    // SAFETY: the P runs of cin values the caller vouched for.
    let run: [&mut [f32]; P] = std::array::from_fn(|p| unsafe {
        std::slice::from_raw_parts_mut(out.add(p * stride), cin)
    });
    // Columns of Bᵀ d first, then rows of (Bᵀ d) B, per channel; all additions.
    for c in 0..cin {
        let col = |j: usize| {
            let (a, b, e, f) = (d[j][c], d[4 + j][c], d[8 + j][c], d[12 + j][c]);
            [a - e, b + e, e - b, b - f]
        };
        let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
        for r in 0..4 {
            let (a, b, e, f) = (c0[r], c1[r], c2[r], c3[r]);
            run[r * 4][c] = a - e;
            run[r * 4 + 1][c] = b + e;
            run[r * 4 + 2][c] = e - b;
            run[r * 4 + 3][c] = b - f;
        }
    }
}

/// The 2×2 outputs of one tile from its P products `t[p·stride..][..cout]`, with bias and
/// optional ReLU, into the output pixels that exist (`None` past the image edge), ordered (0,0),
/// (0,1), (1,0), (1,1).
fn output_tile(
    t: &[f32],
    stride: usize,
    px: &mut [Option<&mut [f32]>; 4],
    bias: &[f32],
    relu: bool,
) {
    let cout = bias.len();
    let runs: [&[f32]; P] = std::array::from_fn(|p| &t[p * stride..p * stride + cout]);
    for c in 0..cout {
        let mm = |p: usize| runs[p][c];
        // s = Aᵀ m: two rows of four.
        let s0: [f32; 4] = std::array::from_fn(|j| mm(j) + mm(4 + j) + mm(8 + j));
        let s1: [f32; 4] = std::array::from_fn(|j| mm(4 + j) - mm(8 + j) - mm(12 + j));
        let y = [
            s0[0] + s0[1] + s0[2],
            s0[1] - s0[2] - s0[3],
            s1[0] + s1[1] + s1[2],
            s1[1] - s1[2] - s1[3],
        ];
        for (o, val) in px.iter_mut().zip(y) {
            if let Some(o) = o {
                let s = val + bias[c];
                o[c] = if relu { s.max(0.0) } else { s };
            }
        }
    }
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
            let mut wg = Winograd3x3::new(&wt, cin, cout);
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
                        "{n}x{h}x{w}x{cin}->{cout} relu={relu} at {k}: {g} vs {e}"
                    );
                }
            }
        }
    }
}
