//! torchvision's `ToTensor()` + `Normalize(ImageNet mean/std)`: the 224×224 crop (HWC, u8) →
//! the network's input (CHW, f32).

use super::resize::INPUT_SIZE;

/// One normalised image: 3 planes of INPUT_SIZE × INPUT_SIZE.
pub const INPUT_LEN: usize = 3 * INPUT_SIZE * INPUT_SIZE;
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_torch_arithmetic() {
        let rgb = vec![255u8; INPUT_LEN];
        let mut out = vec![0f32; INPUT_LEN];
        normalize_into(&rgb, &mut out);
        assert_eq!(out[0], (1.0f32 - 0.485) / 0.229);
        assert_eq!(out[INPUT_LEN - 1], (1.0f32 - 0.406) / 0.225);
    }
}
