//! The folded-BatchNorm model must compute what candle-transformers' stock resnet50 computes.

mod common;

use candle_core::{Device, Module, Tensor};
use inference_server::model::{self, INPUT_LEN, ResNet50};
use inference_server::weights;

/// Deterministic pseudo-random inputs in the range of normalised images (about -2.1 .. 2.6).
fn inputs(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..n * INPUT_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 4.7 - 2.1
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn folded_model_matches_stock_candle_resnet50() {
    let w = weights::load(common::weights(), &Device::Cpu).unwrap();
    let ours = ResNet50::new(&w).unwrap();
    let stock = model::stock(&w, &Device::Cpu).unwrap();
    let x = inputs(2, 1);
    let a = model::forward_flat(&ours, x.clone(), 2, &Device::Cpu).unwrap();
    let t = Tensor::from_vec(x, (2, 3, 224, 224), &Device::Cpu).unwrap();
    let b: Vec<f32> = stock
        .forward(&t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&a, &b);
    // Folding BN changes rounding only: ~1e-6 relative per layer over 53 layers.
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "max |Δ| {diff} vs logit scale {scale}"
    );
    assert!(
        scale > 0.1,
        "degenerate logits (scale {scale}): the test would be blind"
    );
}

#[test]
fn batching_does_not_change_answers() {
    let w = weights::load(common::weights(), &Device::Cpu).unwrap();
    let ours = ResNet50::new(&w).unwrap();
    let (x1, x2) = (inputs(1, 7), inputs(1, 9));
    let batch =
        model::forward_flat(&ours, [x1.clone(), x2.clone()].concat(), 2, &Device::Cpu).unwrap();
    let one = model::forward_flat(&ours, x1, 1, &Device::Cpu).unwrap();
    let two = model::forward_flat(&ours, x2, 1, &Device::Cpu).unwrap();
    assert!(max_abs_diff(&batch[..1000], &one) < 1e-3);
    assert!(max_abs_diff(&batch[1000..], &two) < 1e-3);
    assert!(
        max_abs_diff(&one, &two) > 1e-3,
        "different inputs, same logits"
    );
}
