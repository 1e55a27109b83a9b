//! Bytes → 8-bit RGB, the way PIL's `Image.open(..).convert("RGB")` gets there.

use std::io::Cursor;

use image::error::{ImageError, LimitErrorKind};
use image::{DynamicImage, ImageReader, Limits, RgbImage};

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

#[cfg(test)]
mod tests {
    use super::*;

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
