//! torchvision's `Resize(256)` + `CenterCrop(224)` as Pillow computes them (`Resample.c`),
//! for only the 224×224 pixels the crop keeps, with SIMD passes that stay bit-identical.

use image::RgbImage;

/// The crop's side, and so the network's input: (3, INPUT_SIZE, INPUT_SIZE).
pub const INPUT_SIZE: usize = 224;
/// `Resize(256)`: the short side after resizing.
pub const RESIZE_SHORT_SIDE: u32 = 256;

/// torchvision `Resize(256)`: the short side becomes 256, the long side `int(256 * long / short)`.
pub fn resized_size(width: u32, height: u32) -> (u32, u32) {
    let s = RESIZE_SHORT_SIDE as f64;
    if width <= height {
        (RESIZE_SHORT_SIDE, (s * height as f64 / width as f64) as u32)
    } else {
        ((s * width as f64 / height as f64) as u32, RESIZE_SHORT_SIDE)
    }
}

/// torchvision `CenterCrop`: `int(round((size - 224) / 2))`, with Python's round-half-to-even.
pub fn center_crop_offset(size: u32) -> u32 {
    ((size - INPUT_SIZE as u32) as f64 / 2.0).round_ties_even() as u32
}

/// Pillow's resampling filters (`Resample.c`): the kernel and its support radius.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Filter {
    /// `Image.BILINEAR`, what torchvision's `Resize` uses on PIL images.
    Bilinear,
    /// `Image.BICUBIC` (a = -0.5); only used by tests that prove a wrong filter is noticed.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear if x < 1.0 => 1.0 - x,
            Filter::Bicubic if x < 1.0 => ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1.0,
            Filter::Bicubic if x < 2.0 => (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5,
            _ => 0.0,
        }
    }
}

/// Tap products (rows × 224 × taps) above which the horizontal resize pass is split over threads:
/// a few tenths of a ms of work, against ~tens of µs to hand work to the pool. Photos up to ~1000 px stay
/// on the request's thread.
const PARALLEL_RESIZE_WORK: usize = 2_000_000;

/// Pillow's fixed-point precision for 8-bit images: `32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;

/// Filter taps for output pixels `first..first + count` of a resize `in_size → out_size`:
/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`, expression for expression, so the
/// same doubles round to the same fixed-point weights.
struct Taps {
    /// (first source pixel, number of taps) per output pixel.
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    ksize: usize,
    /// The weights of output pixels 2i and 2i + 1 side by side, each repeated for 4 lanes:
    /// (pair, tap, 8), for the two-pixel SIMD loop.
    pairs: Vec<i32>,
}

fn taps(in_size: usize, out_size: usize, first: usize, count: usize, filter: Filter) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(count);
    let mut weights = vec![0i32; count * ksize];
    let mut k = vec![0f64; ksize];
    for (i, xx) in (first..first + count).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C `(int)` truncates
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *kx;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let v = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            weights[i * ksize + x] = if v < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    let pairs = (0..count / 2)
        .flat_map(|p| (0..ksize).flat_map(move |t| (0..8).map(move |l| (p, t, l))))
        .map(|(p, t, l)| weights[(2 * p + l / 4) * ksize + t])
        .collect();
    Taps {
        bounds,
        weights,
        ksize,
        pairs,
    }
}

fn clip8(v: i32) -> u8 {
    if v >= 255 << PRECISION_BITS {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resize(256) + CenterCrop(224) as Pillow computes them, for only the 224×224 pixels kept:
/// a horizontal pass (rounded to u8, as Pillow does) over the source rows the crop needs, then
/// a vertical pass. Bit-identical to `img.resize(...)` followed by the crop.
pub fn resize_center_crop(img: &RgbImage) -> Vec<u8> {
    resize_center_crop_with(img, Filter::Bilinear, 0)
}

/// [`resize_center_crop`] with another filter or a crop moved by `shift` pixels: only for tests
/// that prove the parity check notices such mistakes.
pub fn resize_center_crop_with(img: &RgbImage, filter: Filter, shift: u32) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (new_w, new_h) = resized_size(img.width(), img.height());
    let (left, top) = (
        center_crop_offset(new_w) + shift,
        center_crop_offset(new_h) + shift,
    );
    let side = INPUT_SIZE;
    let horiz = taps(w, new_w as usize, left as usize, side, filter);
    let vert = taps(h, new_h as usize, top as usize, side, filter);
    let row_first = vert.bounds[0].0;
    let row_end = vert
        .bounds
        .iter()
        .map(|&(s, n)| s + n)
        .max()
        .expect("224 rows");
    let src = img.as_raw();

    // Horizontal pass: (row_end - row_first) rows × 224 columns. On a big photo this is most of
    // the resize (a 2048² JPEG: ~1800 rows × 17 taps), so it is split over threads: rows are
    // independent and each is computed exactly as before.
    let row_bytes = w * 3;
    let mut tmp = vec![0u8; (row_end - row_first) * side * 3];
    let horizontal_rows = |first_row: usize, tmp: &mut [u8]| {
        for (r, out) in tmp.chunks_exact_mut(side * 3).enumerate() {
            let y = first_row + r;
            horizontal_row(&src[y * row_bytes..(y + 1) * row_bytes], &horiz, out);
        }
    };
    let work = (row_end - row_first) * side * horiz.ksize;
    let threads = if work >= PARALLEL_RESIZE_WORK {
        rayon::current_num_threads().min(4)
    } else {
        1
    };
    if threads > 1 {
        // On the process's rayon pool (the server's inference threads), not new OS threads per
        // image: the decode holds the CPU turn, so the pool is free.
        use rayon::prelude::*;
        let rows_per = (row_end - row_first).div_ceil(threads);
        tmp.par_chunks_mut(rows_per * side * 3)
            .enumerate()
            .for_each(|(i, part)| horizontal_rows(row_first + i * rows_per, part));
    } else {
        horizontal_rows(row_first, &mut tmp);
    }

    // Vertical pass: 224 × 224, a weighted sum of whole rows of `tmp`.
    let mut out = vec![0u8; side * side * 3];
    let mut acc = vec![0i32; side * 3];
    for (yo, &(ymin, n)) in vert.bounds.iter().enumerate() {
        let k = &vert.weights[yo * vert.ksize..yo * vert.ksize + n];
        let first = (ymin - row_first) * side * 3;
        vertical_row(
            &tmp[first..first + n * side * 3],
            k,
            &mut acc,
            &mut out[yo * side * 3..(yo + 1) * side * 3],
        );
    }
    out
}

/// Pillow's rounding offset, added before the fixed-point sum is shifted down.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// One source row (RGB) → the 224 kept output pixels of the horizontal pass.
///
/// Integer sums are exact in any order, so the SIMD versions are bit-identical to the scalar one
/// (and to Pillow); a test checks them on real photos.
fn horizontal_row(row: &[u8], taps: &Taps, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") {
            // SAFETY: the CPU has AVX2 (and so SSE4.1), checked just above.
            return unsafe { horizontal_row_avx2(row, taps, out) };
        }
        if has!("sse4.1") {
            // SAFETY: the CPU has SSE4.1, checked just above.
            return unsafe { horizontal_pixels_sse41(row, taps, 0, out) };
        }
    }
    horizontal_row_scalar(row, taps, out)
}

fn horizontal_row_scalar(row: &[u8], taps: &Taps, out: &mut [u8]) {
    for (xo, &(xmin, n)) in taps.bounds.iter().enumerate() {
        let k = &taps.weights[xo * taps.ksize..xo * taps.ksize + n];
        let mut acc = [HALF; 3];
        for (t, &kt) in k.iter().enumerate() {
            let p = &row[(xmin + t) * 3..(xmin + t) * 3 + 3];
            acc[0] += p[0] as i32 * kt;
            acc[1] += p[1] as i32 * kt;
            acc[2] += p[2] as i32 * kt;
        }
        out[xo * 3..xo * 3 + 3].copy_from_slice(&[clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]);
    }
}

/// Output pixels `first..` one per 4-lane vector (R, G, B, and a lane that is thrown away):
/// each tap is a 4-byte load widened to i32, one multiply and one add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1")]
unsafe fn horizontal_pixels_sse41(row: &[u8], taps: &Taps, first: usize, out: &mut [u8]) {
    use std::arch::x86_64::*;
    // A pixel is read as 4 bytes; the row's last pixel has only 3, so it is read on its own.
    let last = row.len() / 3 - 1;
    for (xo, &(xmin, n)) in taps.bounds.iter().enumerate().skip(first) {
        assert!(xmin + n <= last + 1);
        let k = &taps.weights[xo * taps.ksize..xo * taps.ksize + n];
        let mut acc = _mm_set1_epi32(HALF);
        for (t, &kt) in k.iter().enumerate() {
            let x = xmin + t;
            let px = if x < last {
                // SAFETY: x < last, so bytes 3x..3x+4 lie inside the row.
                unsafe { row.as_ptr().add(3 * x).cast::<i32>().read_unaligned() }
            } else {
                i32::from_le_bytes([row[3 * x], row[3 * x + 1], row[3 * x + 2], 0])
            };
            let px = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(px));
            acc = _mm_add_epi32(acc, _mm_mullo_epi32(px, _mm_set1_epi32(kt)));
        }
        // clip8 on each lane: an arithmetic shift, then saturation to 0..=255.
        let v = _mm_srai_epi32::<{ PRECISION_BITS as i32 }>(acc);
        let v = _mm_packus_epi16(_mm_packs_epi32(v, v), v);
        let rgb = (_mm_cvtsi128_si32(v) as u32).to_le_bytes();
        out[xo * 3..xo * 3 + 3].copy_from_slice(&rgb[..3]);
    }
}

/// Two output pixels per 8-lane vector, each reading all `ksize` taps (the weights past its own
/// count are zero), so every pixel runs the same loop: no branch on its tap count to mispredict.
/// Pixels whose `ksize` taps would run past the row's end go through the SSE4.1 path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_row_avx2(row: &[u8], taps: &Taps, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let (ks, pixels) = (taps.ksize, row.len() / 3);
    let mut xo = 0;
    while xo + 1 < taps.bounds.len() {
        let (a, b) = (taps.bounds[xo].0, taps.bounds[xo + 1].0);
        // Reads 4 bytes at pixels up to b + ks - 1, which must not be the row's last pixel.
        if a.max(b) + ks >= pixels {
            break;
        }
        let w = &taps.pairs[xo / 2 * ks * 8..(xo / 2 + 1) * ks * 8];
        let mut acc = _mm256_set1_epi32(HALF);
        for t in 0..ks {
            // SAFETY: a + t and b + t are below pixels - 1 (checked above).
            let (pa, pb) = unsafe {
                (
                    row.as_ptr().add(3 * (a + t)).cast::<i32>().read_unaligned(),
                    row.as_ptr().add(3 * (b + t)).cast::<i32>().read_unaligned(),
                )
            };
            let px = _mm256_cvtepu8_epi32(_mm_insert_epi32::<1>(_mm_cvtsi32_si128(pa), pb));
            // SAFETY: `w` holds ks × 8 weights.
            let k = unsafe { _mm256_loadu_si256(w.as_ptr().add(t * 8).cast()) };
            acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(px, k));
        }
        let v = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(acc);
        let v16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let px = (_mm_cvtsi128_si64(_mm_packus_epi16(v16, v16)) as u64).to_le_bytes();
        out[xo * 3..xo * 3 + 3].copy_from_slice(&px[..3]);
        out[xo * 3 + 3..xo * 3 + 6].copy_from_slice(&px[4..7]);
        xo += 2;
    }
    // SAFETY: AVX2 implies SSE4.1.
    unsafe { horizontal_pixels_sse41(row, taps, xo, out) }
}

/// One output row of the vertical pass: `rows` holds the n source rows (224 × 3 bytes each) that
/// `k`'s n taps weigh. Row by row over contiguous bytes, so the compiler vectorises it.
fn vertical_row(rows: &[u8], k: &[i32], acc: &mut [i32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { vertical_row_avx2(rows, k, acc, out) };
    }
    vertical_row_generic(rows, k, acc, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_row_avx2(rows: &[u8], k: &[i32], acc: &mut [i32], out: &mut [u8]) {
    vertical_row_generic(rows, k, acc, out)
}

#[inline(always)]
fn vertical_row_generic(rows: &[u8], k: &[i32], acc: &mut [i32], out: &mut [u8]) {
    acc.fill(HALF);
    for (row, &kt) in rows.chunks_exact(acc.len()).zip(k) {
        for (a, &p) in acc.iter_mut().zip(row) {
            *a += p as i32 * kt;
        }
    }
    for (o, &a) in out.iter_mut().zip(acc.iter()) {
        *o = clip8(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::decode::decode_rgb8;

    #[test]
    fn resize_matches_torchvision_sizes() {
        assert_eq!(resized_size(512, 512), (256, 256));
        assert_eq!(resized_size(640, 480), (341, 256)); // int(256 * 640 / 480) = int(341.33)
        assert_eq!(resized_size(480, 640), (256, 341));
        assert_eq!(resized_size(1, 3), (256, 768));
    }

    #[test]
    fn crop_offset_rounds_half_to_even_like_python() {
        assert_eq!(center_crop_offset(256), 16);
        assert_eq!(center_crop_offset(341), 58); // round(58.5) == 58 in Python 3
        assert_eq!(center_crop_offset(343), 60); // round(59.5) == 60
        assert_eq!(center_crop_offset(224), 0);
    }

    /// The SIMD passes against the scalar ones (Pillow's loops), pixel for pixel: every row of
    /// real photos, and a small noisy image that is upscaled, wide, and filtered with bicubic's
    /// negative weights (sums below 0 and above 255 exercise the clipping).
    #[test]
    fn simd_resize_passes_match_the_scalar_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
        let mut images: Vec<RgbImage> = ["astronaut-2048.jpg", "cat.jpg", "logo-rgba.png"]
            .iter()
            .map(|f| decode_rgb8(&std::fs::read(dir.join(f)).unwrap(), &Default::default()))
            .collect::<Result<_, _>>()
            .unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        images.push(RgbImage::from_fn(301, 97, |_, _| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            image::Rgb([seed as u8, (seed >> 8) as u8, (seed >> 16) as u8])
        }));
        for img in &images {
            for filter in [Filter::Bilinear, Filter::Bicubic] {
                let (w, h) = (img.width() as usize, img.height() as usize);
                let (new_w, new_h) = resized_size(img.width(), img.height());
                let horiz = taps(
                    w,
                    new_w as usize,
                    center_crop_offset(new_w) as usize,
                    224,
                    filter,
                );
                let (mut simd, mut scalar) = (vec![0u8; 224 * 3], vec![0u8; 224 * 3]);
                for row in img.as_raw().chunks_exact(w * 3) {
                    horizontal_row(row, &horiz, &mut simd);
                    horizontal_row_scalar(row, &horiz, &mut scalar);
                    assert_eq!(simd, scalar, "{w}x{h} {filter:?}: horizontal pass");
                    // The one-pixel path, which AVX2 CPUs use only near a row's end.
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("sse4.1") {
                        // SAFETY: the CPU has SSE4.1.
                        unsafe { horizontal_pixels_sse41(row, &horiz, 0, &mut simd) };
                        assert_eq!(simd, scalar, "{w}x{h} {filter:?}: one pixel at a time");
                    }
                }
                // The vertical pass over the first 224 columns of the source.
                let vert = taps(
                    h,
                    new_h as usize,
                    center_crop_offset(new_h) as usize,
                    224,
                    filter,
                );
                let cols: Vec<u8> = img
                    .as_raw()
                    .chunks_exact(w * 3)
                    .flat_map(|r| r.iter().cycle().take(224 * 3).copied())
                    .collect();
                let mut acc = vec![0i32; 224 * 3];
                for (yo, &(ymin, n)) in vert.bounds.iter().enumerate() {
                    let k = &vert.weights[yo * vert.ksize..yo * vert.ksize + n];
                    let rows = &cols[ymin * 224 * 3..(ymin + n) * 224 * 3];
                    vertical_row(rows, k, &mut acc, &mut simd);
                    for (i, s) in scalar.iter_mut().enumerate() {
                        let sum: i32 = (0..n).map(|t| rows[t * 224 * 3 + i] as i32 * k[t]).sum();
                        *s = clip8(HALF + sum);
                    }
                    assert_eq!(simd, scalar, "{w}x{h} {filter:?}: vertical pass, row {yo}");
                }
            }
        }
    }
}
