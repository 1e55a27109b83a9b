//! Preprocessing cost per photo (decode → resize 256 → crop 224 → normalise), split into decode
//! and resize+normalise, single-threaded as the server runs it per request.
//!
//!   cargo run --release -p inference-server --example bench_preprocess -- [--runs 20] PHOTO...
//! Prints one JSON object per photo.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use inference_server::model::INPUT_LEN;
use inference_server::preprocess::{self, DecodeLimits};

#[derive(Parser)]
#[command(about = "Preprocessing cost per photo")]
struct Args {
    #[arg(long, default_value_t = 20)]
    runs: usize,
    photos: Vec<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let limits = DecodeLimits::default();
    for path in &args.photos {
        let bytes = std::fs::read(path)?;
        let (mut dec, mut rest) = (Vec::new(), Vec::new());
        let mut out = vec![0f32; INPUT_LEN];
        for _ in 0..args.runs {
            let t0 = Instant::now();
            let rgb = preprocess::decode_rgb8(&bytes, &limits)?;
            let t1 = Instant::now();
            preprocess::normalize_into(&preprocess::resize_center_crop(&rgb), &mut out);
            let t2 = Instant::now();
            dec.push((t1 - t0).as_secs_f64() * 1e3);
            rest.push((t2 - t1).as_secs_f64() * 1e3);
            std::hint::black_box(&out);
        }
        let rgb = preprocess::decode_rgb8(&bytes, &limits)?;
        println!(
            "{}",
            serde_json::json!({
                "kind": "preprocess",
                "photo": path.file_name().map(|f| f.to_string_lossy()),
                "bytes": bytes.len(), "width": rgb.width(), "height": rgb.height(),
                "decode_ms": (median(dec.clone()) * 1e3).round() / 1e3,
                "resize_normalize_ms": (median(rest.clone()) * 1e3).round() / 1e3,
            })
        );
    }
    Ok(())
}
