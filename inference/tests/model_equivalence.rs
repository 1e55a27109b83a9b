//! Both of our ResNet50 implementations (the CPU network and the candle network with BatchNorm
//! folded) must compute what candle-transformers' stock resnet50 computes, on random inputs.

mod common;

use candle_core::{Device, Module, Tensor};
use inference_server::model::cpu::isa::Isa;
use inference_server::model::weights;
use inference_server::model::{self, INPUT_LEN, Model};

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

fn stock_logits(w: &weights::Weights, x: Vec<f32>, n: usize) -> Vec<f32> {
    let stock = model::stock(w, &Device::Cpu).unwrap();
    let t = Tensor::from_vec(x, (n, 3, 224, 224), &Device::Cpu).unwrap();
    stock
        .forward(&t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `ours` against stock candle on the same random batch.
fn assert_matches_stock(w: &weights::Weights, ours: &Model, n: usize, seed: u32) {
    let x = inputs(n, seed);
    let a = ours.forward_flat(x.clone(), n).unwrap();
    let b = stock_logits(w, x, n);
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&a, &b);
    // Folding BN and a different summation order change rounding only: ~1e-6 relative per layer
    // over 53 layers. A wrong tap, channel order or bias is orders of magnitude larger.
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "{}: max |Δ| {diff} vs logit scale {scale}",
        ours.implementation()
    );
    assert!(
        scale > 0.1,
        "degenerate logits (scale {scale}): the test would be blind"
    );
}

#[test]
fn cpu_model_matches_stock_candle_resnet50() {
    let w = weights::load(common::weights(), &Device::Cpu).unwrap();
    let ours = Model::new(&w, &Device::Cpu).unwrap();
    assert_eq!(ours.implementation(), "cpu-nhwc");
    // tools/test.sh runs this again with INFERENCE_ISA=avx2 / portable: those kernels must be
    // the ones that ran.
    if let Ok(forced) = std::env::var("INFERENCE_ISA") {
        assert_eq!(Isa::detect().name(), forced);
    }
    eprintln!("CPU kernels: {}", Isa::detect().name());
    // Batch 1 and an odd batch (3): GEMM edge tiles and per-image offsets both get exercised.
    assert_matches_stock(&w, &ours, 1, 1);
    assert_matches_stock(&w, &ours, 3, 2);
}

#[test]
fn folded_candle_model_matches_stock_candle_resnet50() {
    let w = weights::load(common::weights(), &Device::Cpu).unwrap();
    let [_, candle] = common::both_models(&w);
    assert_matches_stock(&w, &candle, 2, 1);
}

#[test]
fn batching_does_not_change_answers() {
    let w = weights::load(common::weights(), &Device::Cpu).unwrap();
    for ours in common::both_models(&w) {
        let (x1, x2) = (inputs(1, 7), inputs(1, 9));
        let batch = ours
            .forward_flat([x1.clone(), x2.clone()].concat(), 2)
            .unwrap();
        let one = ours.forward_flat(x1, 1).unwrap();
        let two = ours.forward_flat(x2, 1).unwrap();
        let which = ours.implementation();
        assert!(max_abs_diff(&batch[..1000], &one) < 1e-3, "{which}");
        assert!(max_abs_diff(&batch[1000..], &two) < 1e-3, "{which}");
        assert!(
            max_abs_diff(&one, &two) > 1e-3,
            "{which}: different inputs, same logits"
        );
    }
}
