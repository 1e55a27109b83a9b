//! Bytes → 8-bit RGB, the way PIL's `Image.open(..).convert("RGB")` gets there.

use std::io::Cursor;

use image::error::{ImageError, LimitErrorKind};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest decoded image accepted (width × height): the decompression-bomb guard.
    pub max_pixels: u64,
    /// 0: JPEGs decode at full size, pixel for pixel as PIL. Else a JPEG whose shorter side is
    /// at least twice this is decoded at 1/2, 1/4 or 1/8 scale in libjpeg's DCT (as PIL's
    /// `Image.draft` does), the smallest that keeps the shorter side at least this long: the
    /// decode of a 2048×2048 photo costs a third, and the antialiased resize still makes the
    /// last reduction of 2× or more. See [`dct_scale`].
    pub jpeg_min_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
            jpeg_min_side: 0,
        }
    }
}

/// libjpeg's scale numerator (out of 8) for a `width`×`height` JPEG whose decoded shorter side
/// must stay at least `min_side` (0: no scaling, 8). Only 1, 2 and 4: the power-of-two scaled
/// IDCTs are the cheap ones.
pub fn dct_scale(width: u32, height: u32, min_side: u32) -> u8 {
    if min_side == 0 {
        return 8;
    }
    let short = u64::from(width.min(height));
    for num in [1u8, 2, 4] {
        // libjpeg rounds scaled sizes up.
        if (short * u64::from(num)).div_ceil(8) >= u64::from(min_side) {
            return num;
        }
    }
    8
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

/// An image checked from its header alone, before any pixel is decoded: its format, size, and
/// the memory decoding it will take.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub format: image::ImageFormat,
    pub width: u32,
    pub height: u32,
    /// The bytes a decode holds at its peak: the decoded buffer (at the decoder's own sample
    /// size: 16-bit RGBA is 8 bytes a pixel), the 8-bit RGB copy when the decoder's output is not
    /// that already, a progressive JPEG's coefficient buffers, and the resize's row buffer.
    pub decode_bytes: u64,
    /// JPEG: the bytes up to its end-of-image marker (what is decoded).
    jpeg_end: Option<usize>,
    /// [`DecodeLimits::jpeg_min_side`], carried to the decode.
    jpeg_min_side: u32,
}

/// Reads the header: the format, the size against `limits`, and for a JPEG its marker
/// structure (complete, not too many scans). Cheap: nothing is decoded.
pub fn probe(bytes: &[u8], limits: &DecodeLimits) -> Result<Probe, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| PreprocessError::UnknownFormat)?;
    if !format.reading_enabled() {
        return Err(PreprocessError::Unsupported(format!("{format:?}")));
    }
    let decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(classify)?;
    let (width, height) = decoder.dimensions();
    let decoded_bpp = decoder.color_type().bytes_per_pixel() as u64;
    let rgb8 = decoder.color_type() == image::ColorType::Rgb8;
    drop(decoder);
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    // Bytes a pixel held at the decode's peak.
    let (per_pixel, jpeg_end) = if format == image::ImageFormat::Jpeg {
        let layout = jpeg_layout(bytes).ok_or_else(|| {
            PreprocessError::Decode("truncated JPEG: no end-of-image marker".into())
        })?;
        if layout.scans > MAX_JPEG_SCANS {
            return Err(PreprocessError::Decode(format!(
                "JPEG has {} scans, more than the limit of {MAX_JPEG_SCANS}",
                layout.scans
            )));
        }
        // libjpeg writes RGB directly; a progressive image also keeps every coefficient
        // (2 bytes per sample, 3 components at most).
        let coefficients = if layout.progressive { 6 } else { 0 };
        (3 + coefficients, Some(layout.end))
    } else {
        // The decoder's buffer, plus the RGB copy when it is not RGB already.
        (decoded_bpp + if rgb8 { 0 } else { 3 }, None)
    };
    // The resize's horizontal pass keeps at most every source row, 224 RGB pixels each (the
    // crop's width; resize.rs's tests decode photos with this file, so it is not imported).
    let decode_bytes = pixels * per_pixel + height as u64 * 224 * 3;
    Ok(Probe {
        format,
        width,
        height,
        decode_bytes,
        jpeg_end,
        jpeg_min_side: limits.jpeg_min_side,
    })
}

/// Decodes any supported format to 8-bit RGB like PIL's `convert("RGB")`: grey is replicated,
/// palettes are expanded, alpha is dropped (not composited), 16-bit samples are scaled to 8 bits.
/// EXIF orientation is ignored, as PIL does without `ImageOps.exif_transpose`.
pub fn decode_rgb8(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, PreprocessError> {
    decode_probed(bytes, &probe(bytes, limits)?)
}

/// [`decode_rgb8`] of an image [`probe`] has passed.
pub fn decode_probed(bytes: &[u8], probe: &Probe) -> Result<RgbImage, PreprocessError> {
    let Probe {
        format,
        width,
        height,
        ..
    } = *probe;
    let bytes = match probe.jpeg_end {
        Some(end) => {
            let bytes = &bytes[..end];
            if let Some(rgb) = decode_jpeg_libjpeg(
                bytes,
                (width, height),
                dct_scale(width, height, probe.jpeg_min_side),
            )? {
                return Ok(rgb);
            }
            bytes
        }
        None => bytes,
    };
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
/// `header`: the size read from the header, which the pixel limit was checked against; the
/// decoder must agree with it before anything is allocated.
fn decode_jpeg_libjpeg(
    bytes: &[u8],
    header: (u32, u32),
    scale: u8,
) -> Result<Option<RgbImage>, PreprocessError> {
    use mozjpeg::{ColorSpace, Decompress};
    // libjpeg reports fatal errors by unwinding; keep any such unwind inside this function.
    let result = std::panic::catch_unwind(|| -> std::io::Result<Option<RgbImage>> {
        let mut d = Decompress::new_mem(bytes)?;
        if !matches!(
            d.color_space(),
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_RGB
        ) {
            return Ok(None);
        }
        let (w, h) = d.size();
        if (w as u64, h as u64) != (header.0 as u64, header.1 as u64) {
            return Err(std::io::Error::other(format!(
                "libjpeg reads {w}x{h}, the header said {}x{}",
                header.0, header.1
            )));
        }
        if scale < 8 {
            d.scale(scale);
        }
        let mut started = d.rgb()?;
        let (w, h) = (started.width(), started.height());
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
/// ("image file is truncated"), and so do we: the markers, walked forward from the start, must
/// reach an end-of-image marker ([`jpeg_layout`]).
/// Most scans a JPEG may have. Each scan of a progressive JPEG makes libjpeg pass over the whole
/// coefficient buffer again, so a small file of thousands of tiny scans is a CPU bomb; real
/// encoders write 1–3 (baseline) or about 10 (progressive, mozjpeg's most).
pub const MAX_JPEG_SCANS: usize = 100;

/// A JPEG's top-level structure, from walking its markers forward as a decoder does.
#[derive(Debug, PartialEq)]
pub struct JpegLayout {
    /// Index just past the first top-level end-of-image marker (FF D9): what a decoder reads.
    /// Anything after it (a phone's motion-photo video, padding) is not image data.
    pub end: usize,
    /// Start-of-scan markers met before the end.
    pub scans: usize,
    /// A progressive frame (SOF2, SOF6, SOF10, SOF14): the decoder keeps every coefficient.
    pub progressive: bool,
}

/// Walks the markers from SOI: a segment's declared length is skipped whole (so the FF D9 of an
/// EXIF thumbnail inside APP1 is never mistaken for the end), and after a start-of-scan the
/// entropy-coded data runs to the next FF that is neither a stuffed FF 00 nor a restart marker.
/// Stray bytes between segments are skipped, as libjpeg does. `None`: the data ends before an
/// end-of-image marker (truncated) or a segment length is impossible.
pub fn jpeg_layout(bytes: &[u8]) -> Option<JpegLayout> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    let mut scans = 0;
    let mut progressive = false;
    loop {
        // The next marker: FF, any number of FF fill bytes, then the code.
        i += memchr::memchr(0xFF, bytes.get(i..)?)?;
        while bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let code = *bytes.get(i + 1)?;
        match code {
            0xD9 => {
                return Some(JpegLayout {
                    end: i + 2,
                    scans,
                    progressive,
                });
            }
            // No length: SOI, TEM, restart markers; FF 00 outside a scan is stray data.
            0x00 | 0x01 | 0xD0..=0xD8 => i += 2,
            _ => {
                let len = u16::from_be_bytes([*bytes.get(i + 2)?, *bytes.get(i + 3)?]) as usize;
                if len < 2 {
                    return None;
                }
                i += 2 + len;
                progressive |= matches!(code, 0xC2 | 0xC6 | 0xCA | 0xCE);
                if code == 0xDA {
                    scans += 1;
                    // Entropy-coded data: up to the first FF followed by a real marker.
                    loop {
                        i += memchr::memchr(0xFF, bytes.get(i..)?)?;
                        match *bytes.get(i + 1)? {
                            0x00 | 0xD0..=0xD7 | 0xFF => i += 1,
                            _ => break,
                        }
                    }
                }
            }
        }
    }
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

    /// A segment: marker, big-endian length (counting itself), payload.
    fn segment(code: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() + 2) as u16;
        [&[0xFF, code][..], &len.to_be_bytes(), payload].concat()
    }

    #[test]
    fn the_jpeg_walk_finds_the_top_level_end_marker() {
        let (soi, eoi) = ([0xFF, 0xD8], [0xFF, 0xD9]);
        let sos = segment(0xDA, &[1, 1, 0, 0, 0x3F, 0]);
        // An EXIF thumbnail inside APP1: a whole JPEG, end marker included.
        let thumb = [&soi[..], &sos, &[1, 2], &eoi].concat();
        let app1 = segment(0xE1, &thumb);
        // Entropy data with a stuffed FF 00, fill bytes and a restart marker.
        let data = [7, 0xFF, 0, 9, 0xFF, 0xD0, 3, 0xFF, 0xFF, 0xD1, 4];
        let whole = [&soi[..], &app1, &sos, &data, &eoi].concat();
        let layout = jpeg_layout(&whole).unwrap();
        assert_eq!((layout.end, layout.scans), (whole.len(), 1));
        // A motion photo: an MP4 after the end marker, whose bytes hold FF DA and FF D9.
        let mp4 = [
            &[0, 0, 0, 0x18][..],
            b"ftypmp42",
            &[0xFF, 0xDA, 0, 4, 0xFF, 0xD9, 0xFF],
        ]
        .concat();
        let motion = [&whole[..], &mp4].concat();
        assert_eq!(jpeg_layout(&motion).unwrap().end, whole.len());
        // Truncated: before the end marker, inside the entropy data, inside a segment.
        assert_eq!(jpeg_layout(&whole[..whole.len() - 2]), None);
        assert_eq!(jpeg_layout(&whole[..whole.len() - 5]), None);
        assert_eq!(jpeg_layout(&whole[..app1.len()]), None);
        assert_eq!(jpeg_layout(&[0xFF, 0xD8, 1, 2, 3]), None);
        assert_eq!(jpeg_layout(b"not a jpeg"), None);
        // Three scans (progressive).
        let three = [&soi[..], &sos, &[1], &sos, &[2], &sos, &[3], &eoi].concat();
        assert_eq!(jpeg_layout(&three).unwrap().scans, 3);
    }

    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// Pillow reads a phone's motion photo (JPEG + MP4 appended) as the JPEG; so do we, pixel
    /// for pixel.
    #[test]
    fn a_jpeg_with_a_video_appended_decodes_as_the_jpeg() {
        let jpeg = fixture("cat.jpg");
        let mut motion = jpeg.clone();
        motion.extend_from_slice(&[0, 0, 0, 0x18]);
        motion.extend_from_slice(b"ftypmp42isommp42");
        motion.extend((0..50_000u32).map(|i| [0xFF, 0xDA, 0x00, 0xD9][i as usize % 4]));
        let l = DecodeLimits::default();
        assert_eq!(
            decode_rgb8(&motion, &l).unwrap(),
            decode_rgb8(&jpeg, &l).unwrap()
        );
    }

    /// Thousands of tiny scans make libjpeg pass over the whole image again each time.
    #[test]
    fn a_jpeg_with_too_many_scans_is_refused_before_decoding() {
        let jpeg = fixture("cat.jpg");
        let empty_scan = segment(0xDA, &[1, 1, 0, 0, 0x3F, 0]);
        let mut bomb = jpeg[..jpeg.len() - 2].to_vec();
        for _ in 0..MAX_JPEG_SCANS {
            bomb.extend_from_slice(&empty_scan);
        }
        bomb.extend_from_slice(&[0xFF, 0xD9]);
        let err = decode_rgb8(&bomb, &DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("scans"), "{err}");
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
