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
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    last_sos.is_some_and(|i| bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]))
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
/// about 1 ms of work, so the thread start-up (~tens of µs) is noise. Photos up to ~1000 px stay
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
    Taps {
        bounds,
        weights,
        ksize,
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
    let half = 1i32 << (PRECISION_BITS - 1);

    // Horizontal pass: (row_end - row_first) rows × 224 columns. On a big photo this is most of
    // the resize (a 2048² JPEG: ~1800 rows × 17 taps), so it is split over threads: rows are
    // independent and each is computed exactly as before.
    let mut tmp = vec![0u8; (row_end - row_first) * side * 3];
    let horizontal_rows = |first_row: usize, tmp: &mut [u8]| {
        for (r, out) in tmp.chunks_exact_mut(side * 3).enumerate() {
            let y = first_row + r;
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for (xo, &(xmin, n)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xo * horiz.ksize..xo * horiz.ksize + n];
                let mut acc = [half; 3];
                for (t, &kt) in k.iter().enumerate() {
                    let p = &row[(xmin + t) * 3..(xmin + t) * 3 + 3];
                    acc[0] += p[0] as i32 * kt;
                    acc[1] += p[1] as i32 * kt;
                    acc[2] += p[2] as i32 * kt;
                }
                out[xo * 3..xo * 3 + 3].copy_from_slice(&[
                    clip8(acc[0]),
                    clip8(acc[1]),
                    clip8(acc[2]),
                ]);
            }
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

    // Vertical pass: 224 × 224.
    let mut out = vec![0u8; side * side * 3];
    for (yo, &(ymin, n)) in vert.bounds.iter().enumerate() {
        let k = &vert.weights[yo * vert.ksize..yo * vert.ksize + n];
        for xo in 0..side {
            let mut acc = [half; 3];
            for (t, &kt) in k.iter().enumerate() {
                let o = ((ymin - row_first + t) * side + xo) * 3;
                acc[0] += tmp[o] as i32 * kt;
                acc[1] += tmp[o + 1] as i32 * kt;
                acc[2] += tmp[o + 2] as i32 * kt;
            }
            let o = (yo * side + xo) * 3;
            out[o..o + 3].copy_from_slice(&[clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]);
        }
    }
    out
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
