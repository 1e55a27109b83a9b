//! Parity with torchvision: the same generated weights and the same real photos must give the
//! logits that `torchvision.models.resnet50` + the seed's transform gave (fixture written by
//! `tools/parity/make_fixture.py`, see `make parity-fixture`), on both implementations: the CPU
//! network the server runs on CPUs and the candle network it runs on GPUs.

mod common;

use candle_core::Device;
use inference_server::model::weights;
use inference_server::model::{INPUT_LEN, INPUT_SIZE, Model, ResNet50};
use inference_server::preprocess::{self, DecodeLimits, Filter};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Largest |Δlogit| accepted. Preprocessing is bit-identical to PIL (checked below), so what is
/// left is float32 summation order (candle vs torch): measured ≤ 6e-5 here, plus the fixture's
/// 6-significant-digit rounding (≤ 1e-5). Real mistakes are far larger (`make_fixture.py
/// --perturb` on these photos): one uint8 level on the resized pixels 5e-3..2.3e-2, a 1-px crop
/// shift ≥ 2.0e-2, bicubic instead of bilinear ≥ 3.7e-2. 1e-3 is 15x above the noise and 20x
/// below the smallest mistake; `tolerance_catches_wrong_filter_and_wrong_crop` re-proves the
/// second half on every run.
const TOL: f32 = 1e-3;

fn fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture("parity.json")).unwrap()).unwrap()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The server's CPU model (the optimised NHWC network) on the fixture's weights.
fn model() -> Model {
    let model = Model::new(&checked_weights(), &Device::Cpu).unwrap();
    assert_eq!(model.implementation(), "cpu-nhwc");
    model
}

fn checked_weights() -> weights::Weights {
    let fx = fixture();
    let path = common::weights();
    assert_eq!(
        hex_sha256(&std::fs::read(path).unwrap()),
        fx["weights"]["sha256"].as_str().unwrap(),
        "generate-weights --seed {} no longer writes the weights the fixture was made from: regenerate it (make parity-fixture)",
        common::SEED
    );
    weights::load(path, &Device::Cpu).unwrap()
}

fn top5(logits: &[f32]) -> Vec<u64> {
    inference_server::model::labels::top_k_raw(logits, 5)
        .into_iter()
        .map(|(id, _)| id as u64)
        .collect()
}

struct Case {
    file: String,
    bytes: Vec<u8>,
    expected: Vec<f32>,
    top5: Vec<u64>,
    image: Value,
}

fn cases() -> Vec<Case> {
    let fx = fixture();
    fx["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| {
            let file = im["file"].as_str().unwrap().to_string();
            let bytes = common::image(&file);
            assert_eq!(
                hex_sha256(&bytes),
                im["sha256"].as_str().unwrap(),
                "{file} changed since the fixture was made"
            );
            Case {
                expected: im["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect(),
                top5: im["top5"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect(),
                file,
                bytes,
                image: im.clone(),
            }
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn bytes_to_logits_matches_torchvision() {
    let fx = fixture();
    let models = common::both_models(&checked_weights());
    let positions = fx["sample_positions"].as_array().unwrap();
    let mut report = Vec::new();
    for case in cases() {
        let input = preprocess::preprocess(&case.bytes, &DecodeLimits::default()).unwrap();
        // The input tensor first: a preprocessing mistake shows here before it blurs into logits.
        let plane = INPUT_SIZE * INPUT_SIZE;
        for (pos, want) in positions
            .iter()
            .zip(case.image["input_stats"]["sample"].as_array().unwrap())
        {
            let p: Vec<usize> = pos
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let got = input[p[0] * plane + p[1] * INPUT_SIZE + p[2]];
            let want = want.as_f64().unwrap() as f32;
            assert_eq!(
                got, want,
                "{}: input{p:?} differs from torchvision's",
                case.file
            );
        }
        let sum: f64 = input.iter().map(|&v| v as f64).sum();
        let want_sum = case.image["input_stats"]["sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() < 1e-6 * INPUT_LEN as f64,
            "{}: input sum {sum}, torchvision {want_sum}",
            case.file
        );

        for model in &models {
            let which = model.implementation();
            let logits = model.forward_flat(input.clone(), 1).unwrap();
            let diff = max_abs_diff(&logits, &case.expected);
            report.push(format!("{} [{which}]: max|Δlogit| {diff:.2e}", case.file));
            assert_eq!(
                top5(&logits),
                case.top5,
                "{} [{which}]: top-5 differs from torchvision",
                case.file
            );
            assert!(
                diff <= TOL,
                "{} [{which}]: max |Δlogit| {diff} > {TOL}",
                case.file
            );
        }
    }
    println!("{}", report.join("\n"));
}

/// Breaks the preprocessing on purpose (bicubic instead of bilinear; crop moved by one pixel) and
/// checks the parity test would have failed on every photo: the tolerance is tight enough.
#[test]
fn tolerance_catches_wrong_filter_and_wrong_crop() {
    let model = model();
    for (what, filter, shift) in [
        ("bicubic", Filter::Bicubic, 0),
        ("crop +1px", Filter::Bilinear, 1),
    ] {
        for case in cases() {
            let rgb = preprocess::decode_rgb8(&case.bytes, &DecodeLimits::default()).unwrap();
            let mut input = vec![0f32; INPUT_LEN];
            preprocess::normalize_into(
                &preprocess::resize_center_crop_with(&rgb, filter, shift),
                &mut input,
            );
            let logits = model.forward_flat(input, 1).unwrap();
            let diff = max_abs_diff(&logits, &case.expected);
            assert!(
                diff > TOL,
                "{what} on {} stays within tolerance ({diff} <= {TOL}): the parity test is blind to it",
                case.file
            );
        }
    }
}

/// The GPU default: the candle network with f16 convolutions. Run here on the CPU (no GPU in CI;
/// CUDA's f16 kernels round differently but at the same precision), it must keep torchvision's
/// top-5 on every photo; logits may move by f16's ~1e-3 relative rounding per layer.
#[test]
fn f16_candle_network_keeps_torchvision_top5() {
    let w = checked_weights();
    let model = Model::Candle {
        net: ResNet50::with_dtype(&w, candle_core::DType::F16).unwrap(),
        device: Device::Cpu,
    };
    assert_eq!(model.implementation(), "candle-f16");
    let mut report = Vec::new();
    for case in cases() {
        let input = preprocess::preprocess(&case.bytes, &DecodeLimits::default()).unwrap();
        let logits = model.forward_flat(input, 1).unwrap();
        let diff = max_abs_diff(&logits, &case.expected);
        let scale = case.expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        report.push(format!(
            "{} [candle-f16]: max|Δlogit| {diff:.2e} (scale {scale:.2})",
            case.file
        ));
        assert_eq!(
            top5(&logits),
            case.top5,
            "{}: f16 changes the top-5",
            case.file
        );
        // Measured ≤ 6.6e-3 on these photos; a wrong cast or a missing bias is far larger.
        assert!(diff <= 5e-2, "{}: f16 max |Δlogit| {diff}", case.file);
    }
    println!("{}", report.join("\n"));
}

/// The GPU server's default for large JPEGs (`JPEG_DCT_SCALING`): a photo whose shorter side is
/// at least 1024 decodes at a reduced size in libjpeg's DCT, then takes the same antialiased
/// resize. Not PIL's pixels any more: this measures how far from torchvision it lands (the
/// input, in uint8 levels, and the logits on the f32 network) and requires torchvision's top-5.
#[test]
fn dct_scaled_decode_stays_near_torchvision() {
    let model = model();
    let scaled = DecodeLimits {
        jpeg_min_side: 2 * preprocess::RESIZE_SHORT_SIDE,
        ..DecodeLimits::default()
    };
    let mut report = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let probe = preprocess::probe(&case.bytes, &scaled).unwrap();
        let num = preprocess::decode::dct_scale(probe.width, probe.height, scaled.jpeg_min_side);
        if num == 8 {
            // Below 1024 on the shorter side: decoded as before, pixel for pixel.
            assert_eq!(
                preprocess::preprocess(&case.bytes, &scaled).unwrap(),
                preprocess::preprocess(&case.bytes, &DecodeLimits::default()).unwrap(),
                "{}: not scaled, yet different",
                case.file
            );
            continue;
        }
        checked += 1;
        let full = preprocess::preprocess(&case.bytes, &DecodeLimits::default()).unwrap();
        let input = preprocess::preprocess(&case.bytes, &scaled).unwrap();
        // Back to uint8 levels: normalised value × std × 255 (std ≥ 0.224).
        let levels: Vec<f32> = full
            .iter()
            .zip(&input)
            .enumerate()
            .map(|(i, (a, b))| {
                (a - b).abs() * [0.229, 0.224, 0.225][i / (INPUT_SIZE * INPUT_SIZE)] * 255.0
            })
            .collect();
        let mean = levels.iter().sum::<f32>() / levels.len() as f32;
        let max = levels.iter().fold(0f32, |m, &v| m.max(v));
        let logits = model.forward_flat(input, 1).unwrap();
        let diff = max_abs_diff(&logits, &case.expected);
        report.push(format!(
            "{} ({}x{} decoded at {num}/8): input mean |Δ| {mean:.2} levels, max {max:.1}; max|Δlogit| {diff:.2e}",
            case.file, probe.width, probe.height
        ));
        assert_eq!(
            top5(&logits),
            case.top5,
            "{}: DCT scaling changes the top-5",
            case.file
        );
        // Measured: see the report (README, "GPU engine"); a wrong scale (1/8 instead of 1/4)
        // or a decode at the wrong size is far larger.
        assert!(
            mean < 1.5,
            "{}: input moved by {mean} levels on average",
            case.file
        );
        assert!(diff <= 0.1, "{}: max |Δlogit| {diff}", case.file);
    }
    println!("{}", report.join("\n"));
    assert!(
        checked > 0,
        "no fixture photo is large enough to be scaled: nothing was measured"
    );
}
