//! Forward-only ResNet50 latency/throughput of our model (the server's path), of the candle model
//! with BatchNorm folded, and of candle-transformers' stock resnet50, on the same weights.
//!
//! Prints one JSON object per (backend, batch) on stdout, with the same keys as
//! `tools/bench/torch_forward.py` so `tools/bench/report.py` can put them side by side:
//!   {"backend":"ours","batch":4,"threads":2,"warmup":3,"runs":20,"median_ms":..,"p90_ms":..,
//!    "min_ms":..,"max_ms":..,"images_per_s":..,"candle":"0.11.1","device":"cpu",..}
//! Input is a fixed pseudo-random [N,3,224,224] f32 tensor already on the device (no decoding,
//! no preprocessing, logits stay on the device; CUDA is synchronised before the clock stops).
//!
//!   cargo run --release -p inference-server --example bench_forward -- \
//!       --weights W.safetensors [--threads 2] [--batches 1,4,8] [--warmup 3] [--runs 20] \
//!       [--backends ours,candle-stock] [--device cpu|cuda]
//! `--device cuda` needs a build with `--features cuda` (see tools/bench/gpu.sh).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Module, Tensor};
use clap::Parser;
use inference_server::model::weights;
use inference_server::model::{INPUT_SIZE, Model, ResNet50, stock};

#[derive(Parser)]
#[command(about = "Forward-only ResNet50 benchmark (candle: ours and stock)")]
struct Args {
    #[arg(long)]
    weights: PathBuf,
    /// CPU threads for candle's kernels (RAYON_NUM_THREADS); 0 = one per CPU.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, default_value = "1,4,8", value_delimiter = ',')]
    batches: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// `ours` (what the server runs: the NHWC network on CPU, candle with BatchNorm folded on
    /// CUDA), `candle-folded`, `candle-stock` (candle-transformers resnet50).
    #[arg(long, default_value = "ours,candle-stock", value_delimiter = ',')]
    backends: Vec<String>,
    /// Idle pause before each timed run, in ms: requests that arrive one at a time find the
    /// thread pool asleep and the caches cold; 0 = back to back.
    #[arg(long, default_value_t = 0.0)]
    gap_ms: f64,
    /// `cpu` or `cuda` (GPU 0; `cuda:N` for another ordinal).
    #[arg(long, default_value = "cpu")]
    device: String,
}

type Forward = dyn Fn(&Tensor) -> candle_core::Result<Tensor>;

fn device(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)
            .context("cannot open CUDA device 0 (built with --features cuda?)")?,
        s if s.starts_with("cuda:") => {
            let n: usize = s[5..].parse().context("--device cuda:N")?;
            Device::new_cuda(n).with_context(|| format!("cannot open CUDA device {n}"))?
        }
        other => bail!("unknown --device {other} (cpu, cuda, cuda:N)"),
    })
}

/// Deterministic input in [-2, 2): timing does not depend on the values.
fn input(n: usize, device: &Device) -> Result<Tensor> {
    let len = n * 3 * INPUT_SIZE * INPUT_SIZE;
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15 ^ n as u64;
    let data: Vec<f32> = (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Ok(Tensor::from_vec(data, (n, 3, INPUT_SIZE, INPUT_SIZE), &Device::Cpu)?.to_device(device)?)
}

fn time_ms(
    f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    x: &Tensor,
    dev: &Device,
    warmup: usize,
    runs: usize,
    gap_ms: f64,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        let _y = f(x)?;
        dev.synchronize()?;
    }
    let mut ts = Vec::with_capacity(runs);
    for _ in 0..runs {
        if gap_ms > 0.0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(gap_ms / 1e3));
        }
        let t0 = Instant::now();
        let y = f(x)?;
        dev.synchronize()?;
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(y);
    }
    Ok(ts)
}

/// One result line: the keys torch_forward.py prints (median, nearest-rank p90, ...) for
/// `ts` (ms per run of batch `b`), then `extra`.
fn result_line(
    backend: &str,
    b: usize,
    threads: usize,
    args: &Args,
    ts: &[f64],
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut s = ts.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    let p90 = s[((0.9 * (n - 1) as f64).round_ties_even() as usize).min(n - 1)];
    let mut line = serde_json::json!({
        "backend": backend, "batch": b, "threads": threads,
        "warmup": args.warmup, "runs": n,
        "median_ms": round3(med), "p90_ms": round3(p90),
        "min_ms": round3(s[0]), "max_ms": round3(s[n - 1]),
        "images_per_s": (b as f64 * 1e3 / med * 100.0).round() / 100.0,
        "device": args.device,
    });
    if let (Some(line), serde_json::Value::Object(extra)) = (line.as_object_mut(), extra) {
        line.extend(extra);
    }
    line
}

/// The cuDNN engine (`model::gpu`): every variant builds its own plans; input is uploaded once
/// and each timed run replays the forward pass on it (as PyTorch's input stays on the GPU).
/// Each batch's logits are also compared with the f32 candle network's on the same input.
#[cfg(feature = "cuda")]
mod cudnn {
    use super::*;
    use inference_server::model::gpu::cudnn::{GpuNet, GpuOptions, Lane};

    pub fn variant(backend: &str, dev: &Device) -> Option<GpuOptions> {
        if !matches!(dev, Device::Cuda(_)) {
            return None;
        }
        let d = GpuOptions::default();
        Some(match backend {
            "ours" | "cudnn" => d,
            "cudnn-nograph" => GpuOptions { graphs: false, ..d },
            "cudnn-unfused" => GpuOptions { fused: false, ..d },
            "cudnn-find" => GpuOptions { find: true, ..d },
            "cudnn-stem3" => GpuOptions {
                stem_channels: 3,
                ..d
            },
            "cudnn-stem8" => GpuOptions {
                stem_channels: 8,
                ..d
            },
            _ => return None,
        })
    }

    pub fn bench(
        args: &Args,
        backend: &str,
        opts: GpuOptions,
        w: &weights::Weights,
        dev: &Device,
        threads: usize,
    ) -> Result<()> {
        let host_w =
            weights::load(&args.weights, &Device::Cpu).map_err(|e| anyhow::anyhow!("{e}"))?;
        let t0 = Instant::now();
        let net = GpuNet::new(&host_w, 0, opts)?;
        let mut lane = Lane::with_buckets(net, args.batches.clone())?;
        let plan_s = t0.elapsed().as_secs_f64();
        let reference = ResNet50::new(w)?;
        for &b in &args.batches {
            let x = input(b, &Device::Cpu)?;
            let host: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let got = lane.stage(&host, b)?;
            let want: Vec<f32> = reference
                .forward(&x.to_device(dev)?)?
                .flatten_all()?
                .to_vec1()?;
            let (mut num, mut den, mut agree) = (0f64, 0f64, 0usize);
            for (g, r) in got.chunks(1000).zip(want.chunks(1000)) {
                for (a, b) in g.iter().zip(r) {
                    num += f64::from(a - b).powi(2);
                    den += f64::from(*b).powi(2);
                }
                let top = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j]));
                agree += usize::from(top(g) == top(r));
            }
            for _ in 0..args.warmup {
                lane.forward_resident(b)?;
            }
            let mut ts = Vec::with_capacity(args.runs);
            for _ in 0..args.runs {
                let t = Instant::now();
                lane.forward_resident(b)?;
                ts.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let line = result_line(
                backend,
                b,
                threads,
                args,
                &ts,
                serde_json::json!({
                    "graph": lane.graphed(b),
                    "plans_s": round3(plan_s),
                    "rel_err_vs_f32": (num / den.max(1e-30)).sqrt(),
                    "top1_agree": format!("{agree}/{b}"),
                    "options": format!("{opts:?}"),
                    "libraries": inference_server::model::gpu::cudnn::versions(),
                }),
            );
            println!("{line}");
        }
        Ok(())
    }
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = if args.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        args.threads
    };
    // As the server does (main.rs): candle sizes its CPU parallelism from RAYON_NUM_THREADS.
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("rayon pool")?;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }

    let dev = device(&args.device)?;
    let w = weights::load(&args.weights, &dev).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    for backend in &args.backends {
        #[cfg(feature = "cuda")]
        if let Some(opts) = cudnn::variant(backend, &dev) {
            cudnn::bench(&args, backend, opts, &w, &dev, threads)?;
            continue;
        }
        let f: Box<Forward> = match backend.as_str() {
            // What the server runs on this device (the NHWC network, model::cpu, on the CPU).
            "ours" | "candle-f16" => match Model::new(&w, &dev)? {
                Model::Cpu(m) => Box::new(move |x| m.forward_tensor(x)),
                Model::Candle { net, .. } => Box::new(move |x| net.forward(x)),
                #[cfg(feature = "cuda")]
                Model::Cudnn { .. } => unreachable!("Model::new builds candle on a GPU"),
            },
            "candle-folded" => {
                let m = ResNet50::new(&w)?;
                Box::new(move |x| m.forward(x))
            }
            "candle-stock" => {
                let m = stock(&w, &dev)?;
                Box::new(move |x| m.forward(x))
            }
            other => bail!(
                "unknown backend {other} (ours, candle-f16, candle-folded, candle-stock; on CUDA also cudnn, cudnn-nograph, cudnn-unfused, cudnn-find, cudnn-stem3, cudnn-stem8)"
            ),
        };
        for &b in &args.batches {
            let x = input(b, &dev)?;
            let ts = time_ms(&*f, &x, &dev, args.warmup, args.runs, args.gap_ms)?;
            let line = result_line(
                backend,
                b,
                threads,
                &args,
                &ts,
                serde_json::json!({
                    "candle": "0.11.1", "cpus": cpus, "machine": std::env::consts::ARCH,
                }),
            );
            println!("{line}");
        }
    }
    Ok(())
}
