//! Winograd F(2×2, 3×3) for ResNet50's 3×3 stride-1 convolutions, NHWC.
//!
//! A 2×2 output tile needs 16 multiplies per (cin, cout) pair instead of 36: the input's 4×4
//! tiles and the filters are transformed into 16 "frequency" positions, each position is one GEMM
//! (tiles × cin) · (cin × cout), and the 16 results transform back to 2×2 outputs. That cuts the
//! GEMM work of these convolutions 2.25×, for additions-only transforms (F(2,3)'s matrices hold
//! only 0, ±1 and ½, so rounding stays at the level of a plain convolution).
//!
//! Layouts: filters U as 16 × (cin × cout) matrices, transformed once at load (in f64). Per call,
//! V is (tiles, 16, cin) and M is (tiles, 16, cout), so each tile's transform reads or writes one
//! contiguous block and each GEMM sees a strided matrix (row stride 16·cin or 16·cout).

use gemm::Parallelism;
use rayon::prelude::*;

/// Positions of the 4×4 transformed tile.
const P: usize = 16;

pub struct Winograd3x3 {
    cin: usize,
    cout: usize,
    /// P matrices of (cin × cout), row-major.
    u: Vec<f32>,
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
        Self { cin, cout, u }
    }

    /// `dst = act(conv3x3(src) + bias)`, stride 1, padding 1; `src` is (n, h, w, cin), `dst`
    /// (n, h, w, cout). `v` and `m` are scratch kept by the caller.
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
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let tiles = n * th * tw;
        grow(v, tiles * P * cin);
        grow(m, tiles * P * cout);
        let v = &mut v[..tiles * P * cin];
        let m = &mut m[..tiles * P * cout];
        assert!(src.len() >= n * h * w * cin && dst.len() >= n * h * w * cout);

        // Input transform Bᵀ d B, one tile row per task.
        let zeros = vec![0f32; cin];
        v.par_chunks_mut(tw * P * cin)
            .enumerate()
            .for_each(|(r, row)| {
                let (i, ty) = (r / th, r % th);
                for tx in 0..tw {
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
                    input_tile(&d, &mut row[tx * P * cin..(tx + 1) * P * cin], cin);
                }
            });

        // The P GEMMs: M[:, p, :] = V[:, p, :] · U[p]. Each is single-threaded; they run side by
        // side, which keeps both cores busy even when `tiles` is small.
        let (vp, mp, up) = (
            SendPtr(v.as_ptr() as *mut f32),
            SendPtr(m.as_mut_ptr()),
            SendPtr(self.u.as_ptr() as *mut f32),
        );
        (0..P).into_par_iter().for_each(|p| {
            let (vp, mp, up) = (&vp, &mp, &up);
            // SAFETY: `v` holds tiles × P × cin values and `m` tiles × P × cout (sized above),
            // `u` P × cin × cout; GEMM p reads column block p of V and writes column block p of M,
            // so the P calls write disjoint elements of `m`.
            unsafe {
                gemm::gemm(
                    tiles,
                    cout,
                    cin,
                    mp.0.add(p * cout),
                    1,
                    (P * cout) as isize,
                    false,
                    vp.0.add(p * cin),
                    1,
                    (P * cin) as isize,
                    up.0.add(p * cin * cout),
                    1,
                    cout as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                )
            }
        });

        // Output transform Aᵀ M A + bias (+ ReLU), two output rows per task.
        let m = &*m;
        dst[..n * h * w * cout]
            .par_chunks_mut(h * w * cout)
            .enumerate()
            .for_each(|(i, image)| {
                image
                    .par_chunks_mut(2 * w * cout)
                    .enumerate()
                    .for_each(|(ty, rows)| {
                        let row_tiles = ((i * th + ty) * tw) * P * cout;
                        for tx in 0..tw {
                            let t = &m[row_tiles + tx * P * cout..][..P * cout];
                            output_tile(t, rows, (tx, w, cout), bias, relu);
                        }
                    });
            });
    }
}

pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: used only to hand disjoint regions of one buffer to rayon tasks (see the GEMM loop).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// `out[p·cin + c] = (Bᵀ d B)[p]` for each channel c; `d[k]` is the input at (k / 4, k % 4).
fn input_tile(d: &[&[f32]; P], out: &mut [f32], cin: usize) {
    let d: [&[f32]; P] = std::array::from_fn(|k| &d[k][..cin]);
    let out = &mut out[..P * cin];
    // Columns of Bᵀ d first, then rows of (Bᵀ d) B, per channel; all additions.
    for c in 0..cin {
        let col = |j: usize| {
            let (a, b, e, f) = (d[j][c], d[4 + j][c], d[8 + j][c], d[12 + j][c]);
            [a - e, b + e, e - b, b - f]
        };
        let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
        for r in 0..4 {
            let (a, b, e, f) = (c0[r], c1[r], c2[r], c3[r]);
            out[(r * 4) * cin + c] = a - e;
            out[(r * 4 + 1) * cin + c] = b + e;
            out[(r * 4 + 2) * cin + c] = e - b;
            out[(r * 4 + 3) * cin + c] = b - f;
        }
    }
}

/// The 2×2 outputs of tile `tx` from its P × cout block `t`, into `rows` (one or two output rows
/// of width `w`), with bias and optional ReLU; outputs past the image edge are dropped.
fn output_tile(
    t: &[f32],
    rows: &mut [f32],
    (tx, w, cout): (usize, usize, usize),
    bias: &[f32],
    relu: bool,
) {
    let row_len = w * cout;
    let nrows = rows.len() / row_len;
    let ncols = (w - 2 * tx).min(2);
    for c in 0..cout {
        let mm = |p: usize| t[p * cout + c];
        // s = Aᵀ m: two rows of four.
        let s0: [f32; 4] = std::array::from_fn(|j| mm(j) + mm(4 + j) + mm(8 + j));
        let s1: [f32; 4] = std::array::from_fn(|j| mm(4 + j) - mm(8 + j) - mm(12 + j));
        let y = [
            [s0[0] + s0[1] + s0[2], s0[1] - s0[2] - s0[3]],
            [s1[0] + s1[1] + s1[2], s1[1] - s1[2] - s1[3]],
        ];
        for (a, yr) in y.iter().enumerate().take(nrows) {
            for (b, &val) in yr.iter().enumerate().take(ncols) {
                let s = val + bias[c];
                rows[a * row_len + (2 * tx + b) * cout + c] = if relu { s.max(0.0) } else { s };
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
        for (n, h, w, cin, cout) in [(2, 5, 3, 7, 9), (1, 4, 6, 16, 5), (1, 7, 7, 3, 32)] {
            let src = pseudo_random(n * h * w * cin, 1);
            let wt = pseudo_random(9 * cin * cout, 2);
            let bias = pseudo_random(cout, 3);
            let want = direct(&src, (n, h, w, cin), &wt, cout);
            let wg = Winograd3x3::new(&wt, cin, cout);
            for relu in [false, true] {
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
