//! Preprocessing cost per photo (decode → resize 256 → crop 224 → normalise), split into decode
//! and resize+normalise, single-threaded as the server runs it per request.
//!
//!   cargo run --release -p inference-server --example bench_preprocess -- [--runs 20] PHOTO...
//! Prints one JSON object per photo. With `--scaling 1,2,4,8,16`: then, for each thread count,
//! the whole preprocessing of the photos in turn on that many threads at once for `--seconds`,
//! as images/s (how decoding scales with cores, as the server's decode threads run it).

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
    #[arg(long, value_delimiter = ',')]
    scaling: Vec<usize>,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// DecodeLimits::jpeg_min_side (the GPU server's JPEG_DCT_SCALING uses 512; 0 = off).
    #[arg(long, default_value_t = 0)]
    jpeg_min_side: u32,
    photos: Vec<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let limits = DecodeLimits {
        jpeg_min_side: args.jpeg_min_side,
        ..DecodeLimits::default()
    };
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
                "kind": "preprocess", "jpeg_min_side": args.jpeg_min_side,
                "photo": path.file_name().map(|f| f.to_string_lossy()),
                "bytes": bytes.len(), "width": rgb.width(), "height": rgb.height(),
                "decode_ms": (median(dec.clone()) * 1e3).round() / 1e3,
                "resize_normalize_ms": (median(rest.clone()) * 1e3).round() / 1e3,
            })
        );
    }
    if !args.scaling.is_empty() {
        let files: Vec<Vec<u8>> = args
            .photos
            .iter()
            .map(std::fs::read)
            .collect::<Result<_, _>>()?;
        let files = std::sync::Arc::new(files);
        for &threads in &args.scaling {
            let end = Instant::now() + std::time::Duration::from_secs_f64(args.seconds);
            let handles: Vec<_> = (0..threads.max(1))
                .map(|t| {
                    let files = files.clone();
                    std::thread::spawn(move || -> anyhow::Result<usize> {
                        let mut out = vec![0f32; INPUT_LEN];
                        let (mut k, mut done) = (t % files.len(), 0);
                        while Instant::now() < end {
                            let rgb = preprocess::decode_rgb8(&files[k], &limits)?;
                            preprocess::normalize_into(
                                &preprocess::resize_center_crop(&rgb),
                                &mut out,
                            );
                            std::hint::black_box(&out);
                            k = (k + 1) % files.len();
                            done += 1;
                        }
                        Ok(done)
                    })
                })
                .collect();
            let mut done = 0;
            for h in handles {
                done += h
                    .join()
                    .map_err(|_| anyhow::anyhow!("a thread panicked"))??;
            }
            println!(
                "{}",
                serde_json::json!({
                    "kind": "preprocess_scaling", "threads": threads, "photos": files.len(),
                    "jpeg_min_side": args.jpeg_min_side,
                    "images_per_s": (done as f64 / args.seconds * 10.0).round() / 10.0,
                })
            );
        }
    }
    Ok(())
}
