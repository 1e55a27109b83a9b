//! ResNet50 forward pass for the CPU, NHWC, built for speed.
//!
//! candle's conv2d spends most of its time around the matrix multiply (im2col in NCHW, per-call
//! weight repacking, layout copies, separate bias/ReLU passes). Here:
//! - activations are NHWC end to end, so a 1×1 stride-1 convolution is one GEMM straight on the
//!   activation and a k×k one a GEMM over im2col rows built from contiguous channel runs;
//! - BatchNorm is folded at load (the same f64 fold as the candle network, `model::fold`), and the weights, as a
//!   (kh·kw·cin, cout) matrix, are packed once in the order the micro-kernel reads them;
//! - each convolution call cuts its output into blocks, one or more per pool thread (`fused`):
//!   a thread builds only its block's im2col rows, runs one single-threaded GEMM per term and
//!   applies bias (+ residual, which is the GEMM's destination) + ReLU while the block is in
//!   cache; a downsample block's two biases are summed at load;
//! - the 3×3 stride-1 convolutions run as Winograd F(4×4, 3×3), or F(2×2, 3×3) on the 7×7 map
//!   (`winograd`);
//! - buffers live between calls (fresh multi-megabyte allocations page-fault on every forward).
//!
//! The GEMM is `packed_gemm`: weights pre-packed, bias + ReLU (+ residual) applied in registers,
//! AVX-512 or AVX2 kernels picked by CPU feature at run time, so one binary runs on any x86-64.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::{SendPtr, grow};
use super::isa::Isa;
use super::packed_gemm::{self, Epilogue, PackedB};
use super::winograd::{Tiling, Winograd3x3};
use crate::model::fold::folded_conv;
use crate::model::weights::{self, Weights};
use crate::preprocess::INPUT_SIZE;

/// A convolution with BatchNorm folded in, weights as a (k·k·cin, cout) matrix packed for the
/// micro-kernel.
struct Conv {
    k: usize,
    stride: usize,
    pad: usize,
    cin: usize,
    cout: usize,
    /// Empty for Winograd convolutions (they keep only their transformed filters).
    w: Option<PackedB>,
    b: Vec<f32>,
    /// Set for 3×3 stride-1 convolutions: they run as Winograd.
    winograd: Option<Winograd3x3>,
}

impl Conv {
    /// `size`: the side of the (square) input map, which picks the Winograd tiling.
    fn new(
        w: &Weights,
        conv: &str,
        bn: &str,
        (stride, pad): (usize, usize),
        size: usize,
    ) -> Result<Self> {
        let (weight, bias) = folded_conv(w, conv, bn)?;
        let (cout, cin, k, _) = weight.dims4()?;
        // (cout, cin, kh, kw) → (kh, kw, cin, cout): the im2col row order below.
        let w = weight.permute((2, 3, 1, 0))?.flatten_all()?.to_vec1()?;
        let b = bias.flatten_all()?.to_vec1()?;
        let winograd = (k == 3 && stride == 1 && pad == 1)
            .then(|| winograd_tiling(size))
            .flatten()
            .map(|tiling| Winograd3x3::new(&w, cin, cout, tiling));
        let w = winograd
            .is_none()
            .then(|| PackedB::new(&w, k * k * cin, cout, cout));
        Ok(Self {
            k,
            stride,
            pad,
            cin,
            cout,
            w,
            b,
            winograd,
        })
    }

    /// `dst = act(conv(src) + bias)`. Returns the output (h, w).
    fn forward(
        &self,
        src: &[f32],
        (n, h, w): (usize, usize, usize),
        ws: &mut Scratch,
        dst: &mut [f32],
        relu: bool,
    ) -> (usize, usize) {
        if let Some(wg) = &self.winograd {
            wg.forward(src, (n, h, w), &mut ws.v, &mut ws.m, dst, &self.b, relu);
            return (h, w);
        }
        let term = Term {
            conv: self,
            src,
            dims: (n, h, w),
        };
        fused(&[term], dst, false, &self.b, relu);
        self.out_size(h, w)
    }

    fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.k) / self.stride + 1,
            (w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }

    /// A 1×1 stride-1 convolution reads its input rows as they are; others go through im2col.
    fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1
    }
}

/// One product summed into a fused output: `conv` applied to `src`, (n, h, w, conv.cin).
struct Term<'a> {
    conv: &'a Conv,
    src: &'a [f32],
    dims: (usize, usize, usize),
}

/// `dst (m × cout) = act([dst +] Σ conv(src) + bias)` for terms that share one output shape.
///
/// The output is cut into blocks and each pool thread takes whole blocks: for each it builds the
/// im2col rows it needs in its own cache-sized scratch, runs one single-threaded GEMM per term,
/// and applies bias and ReLU while the block is still in cache. One synchronisation per call,
/// and no im2col matrix or output makes a round trip through memory between passes.
fn fused(terms: &[Term], dst: &mut [f32], accumulate: bool, bias: &[f32], relu: bool) {
    let first = terms.first().expect("at least one term");
    let (n, h, w) = first.dims;
    let (ho, wo) = first.conv.out_size(h, w);
    let (m, cout) = (n * ho * wo, first.conv.cout);
    for t in terms {
        let (n, h, w) = t.dims;
        let (ho, wo) = t.conv.out_size(h, w);
        assert_eq!((n * ho * wo, t.conv.cout), (m, cout));
        assert!(t.src.len() >= n * h * w * t.conv.cin);
    }
    assert!(dst.len() >= m * cout && bias.len() == cout);
    let im2col_k = terms
        .iter()
        .filter(|t| !t.conv.direct())
        .map(|t| t.conv.k * t.conv.k * t.conv.cin)
        .max();
    let blocks = output_blocks(m, cout, im2col_k, rayon::current_num_threads());
    let out = SendPtr(dst.as_mut_ptr());
    let isa = Isa::detect();
    blocks.par_iter().for_each(|&(r0, rows, c0, cols)| {
        let out = &out;
        for (j, t) in terms.iter().enumerate() {
            let c = t.conv;
            let w =
                c.w.as_ref()
                    .expect("fused convolutions have packed weights");
            let kk = c.k * c.k * c.cin;
            let acc = accumulate || j > 0;
            // Bias and ReLU ride on the last product into the block.
            let epilogue = (j + 1 == terms.len()).then_some(Epilogue { bias, relu });
            // SAFETY: the block lies inside `dst` (asserted above) and blocks are disjoint.
            let gemm = |a: &[f32]| unsafe {
                packed_gemm::gemm(
                    isa,
                    a,
                    kk,
                    rows,
                    w,
                    c0..c0 + cols,
                    out.0.add(r0 * cout),
                    cout,
                    acc,
                    epilogue,
                )
            };
            if c.direct() {
                gemm(&t.src[r0 * kk..]);
            } else {
                COL.with(|col| {
                    let mut col = col.borrow_mut();
                    let col = grow(&mut col, rows * kk);
                    let (n, h, w) = t.dims;
                    im2col_rows(
                        t.src,
                        (n, h, w, c.cin),
                        (c.k, c.stride, c.pad),
                        r0..r0 + rows,
                        col,
                    );
                    gemm(col);
                });
            }
        }
    });
}

thread_local! {
    /// Each pool thread's im2col rows for the block it is computing.
    static COL: std::cell::RefCell<Vec<f32>> = Default::default();
}

struct Bottleneck {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    downsample: Option<Conv>,
    /// conv3's bias, plus the downsample's when there is one (both land in the same sum).
    out_bias: Vec<f32>,
}

/// Activation buffers kept between forward passes (fresh multi-megabyte buffers page-fault on
/// every pass). They grow to the largest batch, ~25 MB an image, and shrink again once the
/// recent passes ([`RECENT_PASSES`]) were all less than half that batch: one burst of big
/// batches does not hold its memory for the rest of the process's life.
#[derive(Default)]
struct Workspace {
    x: Vec<f32>,
    t1: Vec<f32>,
    t2: Vec<f32>,
    shortcut: Vec<f32>,
    scratch: Scratch,
    /// The batch the buffers were last grown or shrunk for, and the recent passes' batches.
    sized_for: usize,
    recent: Vec<usize>,
}

/// Passes a workspace looks back over before it shrinks.
const RECENT_PASSES: usize = 16;

impl Workspace {
    /// Records a pass of `n` images; shrinks the buffers when the recent passes needed less than
    /// half of them. Every buffer's length is proportional to the batch, so a buffer sized for
    /// `sized_for` images is cut to the same share for the recent peak.
    fn passed(&mut self, n: usize) {
        self.sized_for = self.sized_for.max(n);
        if self.recent.len() == RECENT_PASSES {
            self.recent.remove(0);
        }
        self.recent.push(n);
        let peak = self.recent.iter().copied().max().unwrap_or(n);
        if self.recent.len() < RECENT_PASSES || peak * 2 > self.sized_for {
            return;
        }
        let (old, new) = (self.sized_for, peak);
        for v in [
            &mut self.x,
            &mut self.t1,
            &mut self.t2,
            &mut self.shortcut,
            &mut self.scratch.v,
            &mut self.scratch.m,
        ] {
            v.truncate(v.len() / old * new);
            v.shrink_to_fit();
        }
        self.sized_for = new;
    }

    #[cfg(test)]
    fn floats(&self) -> usize {
        [
            &self.x,
            &self.t1,
            &self.t2,
            &self.shortcut,
            &self.scratch.v,
            &self.scratch.m,
        ]
        .iter()
        .map(|v| v.capacity())
        .sum()
    }
}

/// Winograd's transformed input and products (whole-tensor schedule).
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
}

/// The Winograd tiling for a 3×3 stride-1 convolution on a `size` × `size` map.
/// `INFERENCE_WINOGRAD` overrides the choice, to measure what each brings: `0` turns Winograd off
/// (im2col + GEMM), `2` / `4` force F(2×2) / F(4×4) everywhere.
fn winograd_tiling(size: usize) -> Option<Tiling> {
    match std::env::var("INFERENCE_WINOGRAD").as_deref() {
        Ok("0") => None,
        Ok("2") => Some(Tiling::F2),
        Ok("4") => Some(Tiling::F4),
        // F(4×4) on the 56, 28 and 14 maps (14 wastes a quarter of its tiles and still gains);
        // F(2×2) on 7×7: its 512-channel filters would grow from 17 to 38 MB per convolution
        // under F(4×4), and at small batches that stage streams its filters from memory.
        _ if size >= 14 => Some(Tiling::F4),
        _ => Some(Tiling::F2),
    }
}

pub struct CpuResNet50 {
    stem: Conv,
    blocks: Vec<Bottleneck>,
    fc_w: PackedB, // (2048, classes)
    fc_b: Vec<f32>,
    workspace: Mutex<Workspace>,
}

impl CpuResNet50 {
    pub fn new(w: &Weights) -> Result<Self> {
        let stem = Conv::new(w, "conv1", "bn1", (2, 3), INPUT_SIZE)?;
        let mut blocks = Vec::new();
        // Side of the block's input map: 224 → stem (/2) → max pool (/2).
        let mut size = INPUT_SIZE / 4;
        for spec in weights::blocks() {
            let p = &spec.prefix;
            let conv = |c: &str, bn: &str, stride, pad| {
                Conv::new(
                    w,
                    &format!("{p}.{c}"),
                    &format!("{p}.{bn}"),
                    (stride, pad),
                    size,
                )
            };
            let conv3 = conv("conv3", "bn3", 1, 0)?;
            let downsample = spec
                .downsample
                .then(|| conv("downsample.0", "downsample.1", spec.stride, 0))
                .transpose()?;
            let out_bias = match &downsample {
                Some(d) => conv3.b.iter().zip(&d.b).map(|(a, b)| a + b).collect(),
                None => conv3.b.clone(),
            };
            blocks.push(Bottleneck {
                conv1: conv("conv1", "bn1", 1, 0)?,
                // torchvision v1.5: the stride sits on the 3×3 conv.
                conv2: conv("conv2", "bn2", spec.stride, 1)?,
                conv3,
                downsample,
                out_bias,
            });
            size /= spec.stride;
        }
        let fc_b: Vec<f32> = w.tensors["fc.bias"].to_vec1()?;
        let fc_t: Vec<f32> = w.tensors["fc.weight"].t()?.flatten_all()?.to_vec1()?;
        let fc_w = PackedB::new(&fc_t, fc_t.len() / fc_b.len(), fc_b.len(), fc_b.len());
        Ok(Self {
            stem,
            blocks,
            fc_w,
            fc_b,
            workspace: Mutex::default(),
        })
    }

    /// `input`: n normalised images, NCHW (n, 3, 224, 224), flat → (n, classes) logits, flat.
    pub fn forward(&self, input: &[f32], n: usize) -> Vec<f32> {
        // Run the whole pass on a pool thread: the ~200 parallel steps inside then fork from a
        // worker (cheap) instead of each being injected from outside and waited for (a wake-up
        // round trip per step).
        rayon::scope(|_| self.forward_on_pool(input, n))
    }

    fn forward_on_pool(&self, input: &[f32], n: usize) -> Vec<f32> {
        let s = INPUT_SIZE;
        assert_eq!(input.len(), n * 3 * s * s, "input is not n × 3 × 224 × 224");
        // A panic mid-forward leaves only scratch data behind: the buffers are still usable.
        let mut guard = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        let ws = &mut *guard;

        nchw_to_nhwc(input, (n, 3, s, s), grow(&mut ws.x, n * s * s * 3));
        let mut c = self.stem.cout;
        let (h, w) = self.stem.out_size(s, s);
        let stem_out = grow(&mut ws.t1, n * h * w * c);
        self.stem
            .forward(&ws.x, (n, s, s), &mut ws.scratch, stem_out, true);
        let (mut h, mut w) = max_pool_3x3s2(&ws.t1, (n, h, w, c), &mut ws.x);

        for block in &self.blocks {
            let width = block.conv1.cout;
            let cout = block.conv3.cout;
            let t1 = grow(&mut ws.t1, n * h * w * width);
            block
                .conv1
                .forward(&ws.x, (n, h, w), &mut ws.scratch, t1, true);
            let (ho, wo) = block.conv2.out_size(h, w);
            let mo = n * ho * wo;
            let t2 = grow(&mut ws.t2, mo * width);
            block
                .conv2
                .forward(&ws.t1, (n, h, w), &mut ws.scratch, t2, true);
            // conv3 accumulates onto the shortcut: the block input itself, or the downsample
            // computed in the same output blocks.
            let main = Term {
                conv: &block.conv3,
                src: &ws.t2,
                dims: (n, ho, wo),
            };
            if let Some(ds) = &block.downsample {
                let shortcut = Term {
                    conv: ds,
                    src: &ws.x,
                    dims: (n, h, w),
                };
                let out = grow(&mut ws.shortcut, mo * cout);
                fused(&[shortcut, main], out, false, &block.out_bias, true);
                std::mem::swap(&mut ws.x, &mut ws.shortcut);
            } else {
                debug_assert_eq!(c, cout);
                fused(&[main], &mut ws.x[..mo * cout], true, &block.out_bias, true);
            }
            (h, w, c) = (ho, wo, cout);
        }

        // Global average pool, then the classifier.
        let hw = h * w;
        let mut pooled = vec![0f32; n * c];
        for (i, p) in pooled.chunks_exact_mut(c).enumerate() {
            for px in ws.x[i * hw * c..(i + 1) * hw * c].chunks_exact(c) {
                p.iter_mut().zip(px).for_each(|(a, b)| *a += b);
            }
            p.iter_mut().for_each(|a| *a /= hw as f32);
        }
        ws.passed(n);
        let classes = self.fc_b.len();
        let mut logits = vec![0f32; n * classes];
        let bias = Epilogue {
            bias: &self.fc_b,
            relu: false,
        };
        // SAFETY: `logits` is n × classes and only this call touches it.
        unsafe {
            packed_gemm::gemm(
                Isa::detect(),
                &pooled,
                c,
                n,
                &self.fc_w,
                0..classes,
                logits.as_mut_ptr(),
                classes,
                false,
                Some(bias),
            )
        };
        logits
    }

    pub fn classes(&self) -> usize {
        self.fc_b.len()
    }
}

/// The network as a candle op, so callers holding tensors keep tensors: (n, 3, 224, 224) f32 on
/// the CPU → (n, classes).
impl CustomOp1 for CpuResNet50 {
    fn name(&self) -> &'static str {
        "cpu-resnet50"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        if (c, h, w) != (3, INPUT_SIZE, INPUT_SIZE) {
            candle_core::bail!(
                "cpu-resnet50 expects (n, 3, 224, 224), got {:?}",
                layout.shape()
            );
        }
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("cpu-resnet50 expects f32 input");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("cpu-resnet50 expects a contiguous input");
        };
        let logits = self.forward(&data[start..end], n);
        Ok((CpuStorage::F32(logits), Shape::from((n, self.classes()))))
    }
}

impl CpuResNet50 {
    /// Tensor in, tensor out (see the `CustomOp1` impl).
    pub fn forward_tensor(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }
}

/// Bytes of im2col rows one block may hold (per thread, in L2 with the weights' panel).
const COL_BLOCK_BYTES: usize = 512 << 10;

/// (first row, rows, first column, columns) of the blocks an m × n output is computed in.
/// Many rows: row blocks, at least one per thread and a multiple of the thread count; when the
/// rows are built by im2col (`im2col_k` = its row length), small enough for their im2col rows to
/// stay in cache, but not below 2n rows (each block streams the k × n weights again). Few rows:
/// one column block per thread.
fn output_blocks(
    m: usize,
    n: usize,
    im2col_k: Option<usize>,
    parts: usize,
) -> Vec<(usize, usize, usize, usize)> {
    const ALIGN: usize = 16;
    // Row blocks in whole micro-kernel tiles (12 rows; AVX2's are 6).
    const ROW_ALIGN: usize = 12;
    let parts = parts.max(1);
    // Rows when there are more output rows than weight columns; otherwise columns, so that each
    // thread reads only its share of the weights.
    if m >= 4 * ALIGN * parts && (m >= n || parts == 1) {
        let cap = im2col_k.map_or(m, |k| (COL_BLOCK_BYTES / (4 * k)).max(2 * n).max(4 * ALIGN));
        let count = m.div_ceil(cap).max(parts).next_multiple_of(parts);
        let step = m.div_ceil(count).next_multiple_of(ROW_ALIGN);
        (0..m)
            .step_by(step)
            .map(|r| (r, step.min(m - r), 0, n))
            .collect()
    } else if parts > 1 && m * n >= 64 * 64 {
        // Column blocks start on packed panels.
        let step = n.div_ceil(parts).next_multiple_of(packed_gemm::NR);
        (0..n)
            .step_by(step)
            .map(|c| (0, m, c, step.min(n - c)))
            .collect()
    } else {
        vec![(0, m, 0, n)]
    }
}

fn nchw_to_nhwc(src: &[f32], (n, c, h, w): (usize, usize, usize, usize), dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), n * c * h * w);
    dst.par_chunks_mut(w * c).enumerate().for_each(|(r, out)| {
        let (i, y) = (r / h, r % h);
        for (x, px) in out.chunks_exact_mut(c).enumerate() {
            for (ch, v) in px.iter_mut().enumerate() {
                *v = src[((i * c + ch) * h + y) * w + x];
            }
        }
    });
}

/// NHWC im2col of output rows `rows` (row r = (image, oy, ox) in raster order) into `dst`: each
/// row holds the k×k input patch as (ky, kx, c), zeros where the patch hangs over the border. For
/// a given ky the in-bounds kx run is one contiguous slice of input.
fn im2col_rows(
    src: &[f32],
    (_n, h, w, c): (usize, usize, usize, usize),
    (k, stride, pad): (usize, usize, usize),
    rows: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (w + 2 * pad - k) / stride + 1;
    let row = k * k * c;
    debug_assert_eq!(dst.len(), rows.len() * row);
    for (patch, r) in dst.chunks_exact_mut(row).zip(rows) {
        let (i, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
        // kx range whose input column is inside [0, w).
        let x0 = (ox * stride) as isize - pad as isize;
        let kx_lo = (-x0).max(0) as usize;
        let kx_hi = ((w as isize - x0).min(k as isize)).max(0) as usize;
        for ky in 0..k {
            let seg = &mut patch[ky * k * c..(ky + 1) * k * c];
            let iy = (oy * stride + ky) as isize - pad as isize;
            if iy < 0 || iy >= h as isize || kx_lo >= kx_hi {
                seg.fill(0.0);
                continue;
            }
            seg[..kx_lo * c].fill(0.0);
            seg[kx_hi * c..].fill(0.0);
            let ix = (x0 + kx_lo as isize) as usize;
            let at = ((i * h + iy as usize) * w + ix) * c;
            seg[kx_lo * c..kx_hi * c].copy_from_slice(&src[at..at + (kx_hi - kx_lo) * c]);
        }
    }
}

/// 3×3 stride-2 max-pool with padding 1 (padding never wins: out-of-range taps are skipped).
/// Returns the output (h, w).
fn max_pool_3x3s2(
    src: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    dst: &mut Vec<f32>,
) -> (usize, usize) {
    let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    grow(dst, n * ho * wo * c)
        .par_chunks_mut(wo * c)
        .enumerate()
        .for_each(|(r, out)| {
            let (i, oy) = (r / ho, r % ho);
            for ox in 0..wo {
                let o = &mut out[ox * c..(ox + 1) * c];
                o.fill(f32::NEG_INFINITY);
                for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                    for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                        let at = ((i * h + iy) * w + ix) * c;
                        o.iter_mut()
                            .zip(&src[at..at + c])
                            .for_each(|(a, b)| *a = a.max(*b));
                    }
                }
            }
        });
    (ho, wo)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers grown for a big batch come back once the recent passes are all small.
    #[test]
    fn the_workspace_shrinks_after_a_burst() {
        let mut ws = Workspace::default();
        let per_image = 1000;
        let pass = |ws: &mut Workspace, n: usize| {
            grow(&mut ws.t1, n * per_image);
            grow(&mut ws.scratch.v, n * per_image / 2);
            ws.passed(n);
        };
        pass(&mut ws, 8);
        let big = ws.floats();
        for _ in 0..RECENT_PASSES - 1 {
            pass(&mut ws, 1);
            assert_eq!(ws.floats(), big, "shrunk before the window was full");
        }
        pass(&mut ws, 1);
        assert!(
            ws.floats() <= big / 8,
            "{} of {big} floats kept",
            ws.floats()
        );
        // Steady batches of 3 keep their buffers: a batch over half the size does not shrink.
        let mut steady = Workspace::default();
        for n in [4, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3] {
            pass(&mut steady, n);
        }
        assert_eq!(steady.sized_for, 4);
    }

    #[test]
    fn output_blocks_cover_the_output_exactly_once() {
        for (m, n, k, parts) in [
            (1, 1000, None, 2),
            (49, 2048, Some(4608), 2),
            (3136, 64, None, 2),
            (12544, 64, Some(147), 2),
            (25088, 64, Some(576), 3),
            (196, 256, None, 4),
            (196, 1024, None, 2),
            (1568, 1024, Some(2304), 2),
            (10, 10, None, 2),
            (300, 20, Some(9), 1),
        ] {
            let mut seen = vec![0u8; m * n];
            let blocks = output_blocks(m, n, k, parts);
            assert!(
                blocks.len() >= parts.min(2) || m * n < 64 * 64,
                "{m}x{n}: {blocks:?}"
            );
            for (r0, rows, c0, cols) in blocks {
                // Column blocks start and end on packed panels.
                if n % packed_gemm::NR == 0 {
                    assert!(c0 % packed_gemm::NR == 0 && cols % packed_gemm::NR == 0);
                }
                for r in r0..r0 + rows {
                    for c in c0..c0 + cols {
                        seen[r * n + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{m}x{n} over {parts}");
        }
    }

    #[test]
    fn im2col_and_max_pool_match_their_definitions() {
        let (n, h, w, c) = (2, 5, 4, 3);
        let src: Vec<f32> = (0..n * h * w * c).map(|v| v as f32).collect();
        let at = |i: usize, y: isize, x: isize, ch: usize| {
            if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                None
            } else {
                Some(src[((i * h + y as usize) * w + x as usize) * c + ch])
            }
        };
        // 3×3, stride 2, padding 1.
        let (ho, wo) = (3, 2);
        let mut col = vec![f32::NAN; n * ho * wo * 9 * c];
        im2col_rows(&src, (n, h, w, c), (3, 2, 1), 0..n * ho * wo, &mut col);
        let mut pooled = Vec::new();
        assert_eq!(max_pool_3x3s2(&src, (n, h, w, c), &mut pooled), (ho, wo));
        for i in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let row = (i * ho + oy) * wo + ox;
                    for ch in 0..c {
                        let mut max = f32::NEG_INFINITY;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let v = at(
                                    i,
                                    (2 * oy + ky) as isize - 1,
                                    (2 * ox + kx) as isize - 1,
                                    ch,
                                );
                                assert_eq!(
                                    col[row * 9 * c + (ky * 3 + kx) * c + ch],
                                    v.unwrap_or(0.0)
                                );
                                max = max.max(v.unwrap_or(f32::NEG_INFINITY));
                            }
                        }
                        assert_eq!(pooled[row * c + ch], max);
                    }
                }
            }
        }
    }
}
