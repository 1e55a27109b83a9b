//! Image bytes → normalised (3, 224, 224) f32, exactly as the seed's torchvision transform:
//! `Image.open(..).convert("RGB")`, `Resize(256)` (PIL antialiased bilinear), `CenterCrop(224)`,
//! `ToTensor()`, `Normalize(ImageNet mean/std)`.
//!
//! Three steps, one file each, none importing this one: [`decode`] turns bytes into 8-bit RGB as
//! PIL's `convert("RGB")` does (libjpeg-turbo for JPEG, the `image` crate for the rest, the pixel
//! limit checked from the header first) and defines the errors; [`resize`] is Pillow's
//! resampling for the 224×224 pixels the crop keeps; [`normalize`] is ToTensor + Normalize. This
//! file chains them.
//!
//! Stands alone (only `image`, `mozjpeg`, `memchr`, `rayon` and `thiserror`; nothing from the rest of the crate) so
//! the fuzz target can build it by itself.

pub mod decode;
pub mod normalize;
pub mod resize;

pub use decode::{DecodeLimits, PreprocessError, Probe, decode_probed, decode_rgb8, probe};
pub use normalize::{INPUT_LEN, normalize_into};
pub use resize::{
    Filter, INPUT_SIZE, RESIZE_SHORT_SIDE, center_crop_offset, resize_center_crop,
    resize_center_crop_with, resized_size,
};

/// The whole transform, writing into `out` (one image's slot in a batch buffer).
pub fn preprocess_into(
    bytes: &[u8],
    limits: &DecodeLimits,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    preprocess_probed(bytes, &probe(bytes, limits)?, out)
}

/// [`preprocess_into`] of an image [`probe`] has passed (the caller has set aside the memory
/// it needs: `probe.decode_bytes`).
pub fn preprocess_probed(
    bytes: &[u8],
    probe: &Probe,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    let rgb = decode_probed(bytes, probe)?;
    normalize_into(&resize_center_crop(&rgb), out);
    Ok(())
}

pub fn preprocess(bytes: &[u8], limits: &DecodeLimits) -> Result<Vec<f32>, PreprocessError> {
    let mut out = vec![0f32; INPUT_LEN];
    preprocess_into(bytes, limits, &mut out)?;
    Ok(out)
}
