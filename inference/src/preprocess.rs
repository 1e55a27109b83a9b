//! Image bytes → normalised (3, 224, 224) f32, exactly as the seed's torchvision transform:
//! `Image.open(..).convert("RGB")`, `Resize(256)` (PIL antialiased bilinear), `CenterCrop(224)`,
//! `ToTensor()`, `Normalize(ImageNet mean/std)`.
//! Self-contained (only `image` and `thiserror`) so the fuzz target can build it alone.

use std::io::Cursor;

use image::error::{ImageError, LimitErrorKind};
use image::{DynamicImage, ImageReader, Limits, RgbImage};

/// The model's input: (3, 224, 224).
pub const INPUT_SIZE: usize = 224;
pub const INPUT_LEN: usize = 3 * INPUT_SIZE * INPUT_SIZE;
pub const RESIZE_SHORT_SIDE: u32 = 256;
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest decoded image accepted (width × height): the decompression-bomb guard.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PreprocessError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("the data is not an image in a known format (JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    UnknownFormat,
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    #[error("image is {width}x{height} = {} pixels, more than the limit of {limit}", *width as u64 * *height as u64)]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("cannot decode the image: {0}")]
    Decode(String),
}

fn classify(e: ImageError) -> PreprocessError {
    match e {
        ImageError::Unsupported(u) => PreprocessError::Unsupported(u.to_string()),
        ImageError::Limits(l)
            if matches!(
                l.kind(),
                LimitErrorKind::DimensionError | LimitErrorKind::InsufficientMemory
            ) =>
        {
            PreprocessError::Decode(format!("image exceeds the decoder limits: {l}"))
        }
        other => PreprocessError::Decode(other.to_string()),
    }
}

/// Decodes any supported format to 8-bit RGB like PIL's `convert("RGB")`: grey is replicated,
/// palettes are expanded, alpha is dropped (not composited), 16-bit samples are scaled to 8 bits.
/// EXIF orientation is ignored, as PIL does without `ImageOps.exif_transpose`.
pub fn decode_rgb8(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| PreprocessError::UnknownFormat)?;
    if !format.reading_enabled() {
        return Err(PreprocessError::Unsupported(format!("{format:?}")));
    }
    // Read the header first, so a bomb is refused before anything is allocated for it.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(classify)?;
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(PreprocessError::Decode(
            "truncated JPEG: no end-of-image marker".into(),
        ));
    }
    if format == image::ImageFormat::Jpeg
        && let Some(rgb) = decode_jpeg_libjpeg(bytes)?
    {
        return Ok(rgb);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = Limits::default();
    l.max_image_width = Some(width);
    l.max_image_height = Some(height);
    // Room for the widest decoded pixel type (RGBA 16-bit) plus decoder scratch.
    l.max_alloc = Some(width as u64 * height as u64 * 8 + (64 << 20));
    reader.limits(l);
    let img = reader.decode().map_err(classify)?;
    Ok(to_rgb8_like_pil(img))
}

/// 8-bit RGB the way PIL gets there, which for 16-bit samples is not "scale to 8 bits":
/// 16-bit grey opens as mode `I;16` and `convert("RGB")` clips it at 255; 16-bit RGB(A) and
/// grey+alpha open as 8-bit RGB(A) keeping the high byte (PNG rawmode `RGB;16B`).
fn to_rgb8_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_fn =
        |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(g) => from_fn(&|x, y| [g.get_pixel(x, y).0[0].min(255) as u8; 3]),
        DynamicImage::ImageLumaA16(g) => from_fn(&|x, y| [(g.get_pixel(x, y).0[0] >> 8) as u8; 3]),
        DynamicImage::ImageRgb16(c) => from_fn(&|x, y| c.get_pixel(x, y).0.map(|v| (v >> 8) as u8)),
        DynamicImage::ImageRgba16(c) => from_fn(&|x, y| {
            let [r, g, b, _] = c.get_pixel(x, y).0;
            [r, g, b].map(|v| (v >> 8) as u8)
        }),
        // 8-bit grey is replicated, 8-bit alpha dropped (not composited), as PIL does.
        other => other.to_rgb8(),
    }
}

/// JPEG through libjpeg-turbo's decoder (mozjpeg's copy of it), as PIL decodes it: integer
/// "slow" IDCT and fancy chroma upsampling, so pixels match PIL's exactly (zune-jpeg, the `image`
/// crate's decoder, differs by 1-4 levels on ~20% of pixels). `None` for colour spaces PIL
/// converts differently (CMYK/YCCK): those go through the `image` crate.
fn decode_jpeg_libjpeg(bytes: &[u8]) -> Result<Option<RgbImage>, PreprocessError> {
    use mozjpeg::{ColorSpace, Decompress};
    // libjpeg reports fatal errors by unwinding; keep any such unwind inside this function.
    let result = std::panic::catch_unwind(|| -> std::io::Result<Option<RgbImage>> {
        let d = Decompress::new_mem(bytes)?;
        if !matches!(
            d.color_space(),
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_RGB
        ) {
            return Ok(None);
        }
        let (w, h) = d.size();
        let mut started = d.rgb()?;
        let data = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok(RgbImage::from_raw(w as u32, h as u32, data))
    });
    match result {
        Ok(Ok(Some(img))) => Ok(Some(img)),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(PreprocessError::Decode(format!("invalid JPEG: {e}"))),
        Err(_) => Err(PreprocessError::Decode("invalid JPEG data".into())),
    }
}

/// The JPEG decoder fills a cut-off stream with grey instead of failing; PIL refuses it
/// ("image file is truncated"), and so do we: an end-of-image marker (FF D9) must follow the
/// last start-of-scan (FF DA). Entropy-coded data never contains either (FF is byte-stuffed).
/// Scanning back from the end, the first of the two met decides: in a whole file that is the
/// EOI in the last bytes, without reading the (megabyte-long) scan data before it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .rev()
        .find(|w| *w == [0xFF, 0xD9] || *w == [0xFF, 0xDA])
        .is_some_and(|w| w[1] == 0xD9)
}

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
/// a few tenths of a ms of work, against ~tens of µs to start a thread. Photos up to ~1000 px stay
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
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    } else {
        1
    };
    if threads > 1 {
        let rows_per = (row_end - row_first).div_ceil(threads);
        std::thread::scope(|scope| {
            for (i, part) in tmp.chunks_mut(rows_per * side * 3).enumerate() {
                let run = &horizontal_rows;
                scope.spawn(move || run(row_first + i * rows_per, part));
            }
        });
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

/// ToTensor + Normalize: HWC u8 → CHW f32, computed with the same f32 operations as torch
/// (`v / 255`, then `(x - mean) / std`), through a 3×256 lookup table.
pub fn normalize_into(rgb224: &[u8], out: &mut [f32]) {
    assert_eq!(rgb224.len(), INPUT_LEN);
    assert_eq!(out.len(), INPUT_LEN);
    let lut: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - MEAN[c]) / STD[c]));
    let plane = INPUT_SIZE * INPUT_SIZE;
    for (i, px) in rgb224.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = lut[c][px[c] as usize];
        }
    }
}

/// The whole transform, writing into `out` (one image's slot in a batch buffer).
pub fn preprocess_into(
    bytes: &[u8],
    limits: &DecodeLimits,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    let rgb = decode_rgb8(bytes, limits)?;
    normalize_into(&resize_center_crop(&rgb), out);
    Ok(())
}

pub fn preprocess(bytes: &[u8], limits: &DecodeLimits) -> Result<Vec<f32>, PreprocessError> {
    let mut out = vec![0f32; INPUT_LEN];
    preprocess_into(bytes, limits, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn normalize_is_torch_arithmetic() {
        let rgb = vec![255u8; INPUT_LEN];
        let mut out = vec![0f32; INPUT_LEN];
        normalize_into(&rgb, &mut out);
        assert_eq!(out[0], (1.0f32 - 0.485) / 0.229);
        assert_eq!(out[INPUT_LEN - 1], (1.0f32 - 0.406) / 0.225);
    }

    fn png<P: image::PixelWithColorType<Subpixel = u16>>(
        img: image::ImageBuffer<P, Vec<u16>>,
    ) -> Vec<u8>
    where
        [P::Subpixel]: image::EncodableLayout,
    {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// Expected values are what Pillow 13 gives for the same PNGs (`Image.open(p).convert("RGB")`).
    #[test]
    fn sixteen_bit_pngs_convert_as_pil_does() {
        let l = DecodeLimits::default();
        let grey: Vec<u16> = vec![0, 255, 256, 1000, 32768, 65535];
        let img = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(6, 1, grey).unwrap();
        let rgb = decode_rgb8(&png(img), &l).unwrap();
        assert_eq!(
            rgb.pixels().map(|p| p.0[0]).collect::<Vec<_>>(),
            [0, 255, 255, 255, 255, 255]
        ); // clipped
        let vals = [0x0000u16, 0x00ff, 0x7fff, 0x80ff, 0xff00, 0xffff];
        let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(
            6,
            1,
            vals.iter().flat_map(|&v| [v; 3]).collect(),
        )
        .unwrap();
        let rgb = decode_rgb8(&png(img), &l).unwrap();
        assert_eq!(
            rgb.pixels().map(|p| p.0[1]).collect::<Vec<_>>(),
            [0, 0, 127, 128, 255, 255]
        ); // high byte
        let img = image::ImageBuffer::<image::LumaA<u16>, _>::from_raw(
            6,
            1,
            vals.iter().flat_map(|&v| [v, 0x1234]).collect(),
        )
        .unwrap();
        let rgb = decode_rgb8(&png(img), &l).unwrap();
        assert_eq!(
            rgb.pixels().map(|p| p.0[2]).collect::<Vec<_>>(),
            [0, 0, 127, 128, 255, 255]
        );
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

    #[test]
    fn a_jpeg_is_complete_when_an_end_marker_follows_the_last_scan() {
        let soi = [0xFF, 0xD8];
        let (sos, eoi) = ([0xFF, 0xDA], [0xFF, 0xD9]);
        // An EXIF thumbnail: a whole JPEG (scan and end marker) before the main image's scan.
        let thumb = [&soi[..], &sos, &[1, 2], &eoi].concat();
        let whole = [&soi[..], &thumb, &sos, &[7, 0xFF, 0, 9], &eoi].concat();
        assert!(jpeg_is_complete(&whole));
        assert!(jpeg_is_complete(&[&whole[..], &[0, 0]].concat())); // trailing bytes
        assert!(!jpeg_is_complete(&whole[..whole.len() - 2])); // cut before the end marker
        assert!(!jpeg_is_complete(&[&soi[..], &thumb, &sos, &[7]].concat()));
        assert!(!jpeg_is_complete(&[&soi[..], &[1, 2, 3]].concat())); // no scan at all
    }

    #[test]
    fn rejects_garbage_and_empty() {
        let l = DecodeLimits::default();
        assert_eq!(decode_rgb8(b"", &l).unwrap_err(), PreprocessError::Empty);
        assert_eq!(
            decode_rgb8(b"hello world, not an image", &l).unwrap_err(),
            PreprocessError::UnknownFormat
        );
    }
}
