//! The GPU network as cuDNN calls: NHWC f16 activations, every convolution one fused cuDNN call
//! (convolution + folded-BatchNorm bias + ReLU, and the residual add on the last convolution of
//! each block), the whole forward pass captured once per batch size as a CUDA graph and replayed.
//!
//! This file holds what needs no GPU (batch buckets, weight layouts) and is tested on any
//! machine; [`cudnn`] (the `cuda` feature) runs it.

#[cfg(feature = "cuda")]
pub mod cudnn;

use half::f16;

/// Batch sizes that get a plan (buffers, algorithms, a CUDA graph) of their own. A batch runs
/// in the smallest bucket that holds it, the unused rows computed and thrown away: a graph's
/// shapes are fixed, and one per size up to 256 would cost a start-up of minutes.
const BUCKETS: [usize; 13] = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256];

/// The buckets for batches of at most `max_batch` images: the fixed steps below it, and
/// `max_batch` itself.
pub fn batch_buckets(max_batch: usize) -> Vec<usize> {
    let max_batch = max_batch.max(1);
    let mut out: Vec<usize> = BUCKETS.iter().copied().filter(|&b| b < max_batch).collect();
    out.push(max_batch);
    out
}

/// The smallest bucket that holds `n` images, if any.
pub fn bucket_for(n: usize, buckets: &[usize]) -> Option<usize> {
    buckets.iter().copied().find(|&b| b >= n)
}

/// Channels the first convolution's input is padded to: tensor-core convolution kernels want a
/// channel count that is a multiple of 4 or 8; the extra channels are zero in the image and in
/// the filter, so the result is the same.
pub fn stem_channels(requested: usize) -> usize {
    requested.clamp(3, 8)
}

/// A convolution filter in PyTorch's (out, in, kh, kw) order → cuDNN's NHWC filter layout
/// (out, kh, kw, in_padded) in f16, the channels past `cin` zero.
pub fn pack_filter_nhwc(oihw: &[f32], dims: [usize; 4], cin_padded: usize) -> Vec<f16> {
    let [o, i, kh, kw] = dims;
    assert_eq!(
        oihw.len(),
        o * i * kh * kw,
        "filter holds {} values, not {dims:?}",
        oihw.len()
    );
    assert!(cin_padded >= i);
    let mut out = vec![f16::ZERO; o * kh * kw * cin_padded];
    for oc in 0..o {
        for ic in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    let src = ((oc * i + ic) * kh + y) * kw + x;
                    let dst = ((oc * kh + y) * kw + x) * cin_padded + ic;
                    out[dst] = f16::from_f32(oihw[src]);
                }
            }
        }
    }
    out
}

/// f32 → f16 into `dst` (round to nearest even); the host side of the input upload.
pub fn to_f16_into(src: &[f32], dst: &mut [f16]) {
    use half::slice::HalfFloatSliceExt;
    dst[..src.len()].convert_from_f32_slice(src);
}

/// Output height/width of a convolution or pooling window.
pub fn out_size(input: usize, k: usize, stride: usize, pad: usize) -> usize {
    (input + 2 * pad - k) / stride + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_end_at_the_largest_batch_and_hold_every_size() {
        assert_eq!(batch_buckets(1), vec![1]);
        assert_eq!(batch_buckets(8), vec![1, 2, 4, 8]);
        assert_eq!(batch_buckets(40), vec![1, 2, 4, 8, 12, 16, 24, 32, 40]);
        assert_eq!(*batch_buckets(256).last().unwrap(), 256);
        for max in [1, 7, 64, 100, 256] {
            let b = batch_buckets(max);
            for n in 1..=max {
                let got = bucket_for(n, &b).unwrap();
                assert!(got >= n && got <= max, "n={n} max={max} got={got}");
            }
            assert_eq!(bucket_for(max + 1, &b), None);
        }
        assert_eq!(bucket_for(9, &batch_buckets(64)), Some(12));
        assert_eq!(bucket_for(33, &batch_buckets(64)), Some(48));
    }

    #[test]
    fn filters_move_to_nhwc_with_zero_channels_appended() {
        // 2 out, 3 in, 2x2: value = 1000*o + 100*i + 10*y + x, exact in f16.
        let dims = [2, 3, 2, 2];
        let mut w = Vec::new();
        for o in 0..2 {
            for i in 0..3 {
                for y in 0..2 {
                    for x in 0..2 {
                        w.push((100 * o + 10 * i + 2 * y + x) as f32);
                    }
                }
            }
        }
        let p = pack_filter_nhwc(&w, dims, 4);
        assert_eq!(p.len(), 2 * 2 * 2 * 4);
        for o in 0..2 {
            for y in 0..2 {
                for x in 0..2 {
                    for c in 0..4 {
                        let v = p[((o * 2 + y) * 2 + x) * 4 + c].to_f32();
                        let want = if c < 3 {
                            (100 * o + 10 * c + 2 * y + x) as f32
                        } else {
                            0.0
                        };
                        assert_eq!(v, want, "o={o} y={y} x={x} c={c}");
                    }
                }
            }
        }
    }

    #[test]
    fn half_conversion_rounds_to_nearest() {
        let src = [1.0f32, -2.5, 65504.0, 1.0 + 1.0 / 4096.0, 0.1];
        let mut dst = [f16::ZERO; 6];
        to_f16_into(&src, &mut dst);
        assert_eq!(dst[0].to_f32(), 1.0);
        assert_eq!(dst[1].to_f32(), -2.5);
        assert_eq!(dst[2].to_f32(), 65504.0);
        assert_eq!(dst[3].to_f32(), 1.0); // below half an ulp (2^-11): rounds down
        assert!((dst[4].to_f32() - 0.1).abs() < 1e-4);
        assert_eq!(dst[5], f16::ZERO, "past the source: untouched");
    }

    #[test]
    fn resnet_sizes() {
        assert_eq!(out_size(224, 7, 2, 3), 112);
        assert_eq!(out_size(112, 3, 2, 1), 56);
        assert_eq!(out_size(56, 3, 2, 1), 28);
        assert_eq!(out_size(56, 1, 2, 0), 28);
        assert_eq!(stem_channels(4), 4);
        assert_eq!(stem_channels(1), 3);
        assert_eq!(stem_channels(100), 8);
    }
}
