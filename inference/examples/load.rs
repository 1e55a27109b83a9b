//! Closed-loop HTTP load for `POST /predict` with a mix of real image files: `--conc`
//! connections (one thread each, keep-alive), each sending the files in turn (from its own
//! starting point, so every moment has a mix of sizes), for `--duration` seconds after
//! `--warmup`. Prints one JSON line: img/s, latency percentiles, statuses, and, given the
//! server's `--pid`, the server's CPU time per image; with `--gpu-util`, the mean GPU
//! utilisation nvidia-smi reported during the run.
//!
//!   cargo run --release -p inference-server --example load -- --url http://127.0.0.1:8080/predict \
//!       --conc 64 --duration 10 [--warmup 2] [--pid PID] [--gpu-util] PHOTO...
//! std only (plus clap and serde_json): no HTTP client crate is needed for HTTP/1.1 keep-alive.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Closed-loop POST /predict load with mixed images")]
struct Args {
    /// http://HOST:PORT/PATH
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 8)]
    conc: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// The server's PID: its CPU time (user + system) over the measured window is reported.
    #[arg(long)]
    pid: Option<u32>,
    /// Sample `nvidia-smi` GPU utilisation during the measured window.
    #[arg(long)]
    gpu_util: bool,
    photos: Vec<PathBuf>,
}

struct Target {
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .context("--url must start with http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok(Target {
        host: host.to_string(),
        path: path.to_string(),
    })
}

#[derive(Default)]
struct Tally {
    /// (started after warm-up, latency µs, status)
    samples: Vec<(bool, u64, u16)>,
    io_errors: u64,
}

/// One request on `conn`; returns the status and whether the server keeps the connection.
fn exchange(conn: &mut BufReader<TcpStream>, head: &[u8], body: &[u8]) -> Result<(u16, bool)> {
    let s = conn.get_mut();
    s.write_all(head)?;
    s.write_all(body)?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let (mut len, mut keep) = (None, true);
    loop {
        line.clear();
        ensure!(
            conn.read_line(&mut line)? > 0,
            "connection closed in the headers"
        );
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = Some(v.trim().parse::<usize>()?);
        } else if lower.starts_with("connection:") && lower.contains("close") {
            keep = false;
        } else if lower.starts_with("transfer-encoding:") {
            bail!("chunked answers are not expected from /predict");
        }
    }
    let mut buf = vec![0; len.context("answer without Content-Length")?];
    conn.read_exact(&mut buf)?;
    Ok((status, keep))
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e3
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(!args.photos.is_empty(), "give at least one image file");
    ensure!(args.conc > 0, "--conc must be at least 1");
    let target = parse_url(&args.url)?;
    let bodies: Vec<(Vec<u8>, Vec<u8>)> = args
        .photos
        .iter()
        .map(|p| {
            let body = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                target.path,
                target.host,
                body.len()
            );
            Ok((head.into_bytes(), body))
        })
        .collect::<Result<_>>()?;
    let bodies = Arc::new(bodies);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);

    let threads: Vec<_> = (0..args.conc)
        .map(|i| {
            let bodies = bodies.clone();
            let host = target.host.clone();
            std::thread::spawn(move || {
                let mut t = Tally::default();
                let mut k = i % bodies.len();
                let mut conn: Option<BufReader<TcpStream>> = None;
                while Instant::now() < end {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match TcpStream::connect(&host) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                conn.insert(BufReader::new(s))
                            }
                            Err(_) => {
                                t.io_errors += 1;
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        },
                    };
                    let (head, body) = &bodies[k];
                    k = (k + 1) % bodies.len();
                    let t0 = Instant::now();
                    match exchange(c, head, body) {
                        Ok((status, keep)) => {
                            let us = t0.elapsed().as_micros() as u64;
                            t.samples.push((t0 >= measure_from, us, status));
                            if !keep {
                                conn = None;
                            }
                        }
                        Err(_) => {
                            t.io_errors += 1;
                            conn = None;
                        }
                    }
                }
                t
            })
        })
        .collect();

    // CPU and GPU readings over the measured window.
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let cpu0 = args.pid.and_then(cpu_ticks);
    let smi = if args.gpu_util {
        std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()
    } else {
        None
    };
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let cpu1 = args.pid.and_then(cpu_ticks);
    let gpu_util = smi.and_then(|mut child| {
        let _ = child.kill();
        let mut out = String::new();
        child.stdout.take()?.read_to_string(&mut out).ok()?;
        let _ = child.wait();
        let v: Vec<f64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    });

    let mut lat = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let mut io_errors = 0;
    for th in threads {
        let t = th
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        io_errors += t.io_errors;
        for (measured, us, status) in t.samples {
            if measured {
                *statuses.entry(status).or_default() += 1;
                if status == 200 {
                    lat.push(us);
                }
            }
        }
    }
    lat.sort_unstable();
    let ok = lat.len() as f64;
    let hz = 100.0; // /proc's clock ticks (USER_HZ), 100 on Linux
    let cpu_ms_per_image = match (cpu0, cpu1) {
        (Some(a), Some(b)) if ok > 0.0 => Some((b - a) as f64 / hz * 1e3 / ok),
        _ => None,
    };
    let line = serde_json::json!({
        "conc": args.conc,
        "duration_s": args.duration,
        "images": args.photos.len(),
        "ok": lat.len(),
        "images_per_s": (ok / args.duration * 10.0).round() / 10.0,
        "p50_ms": percentile(&lat, 50.0),
        "p90_ms": percentile(&lat, 90.0),
        "p99_ms": percentile(&lat, 99.0),
        "max_ms": lat.last().map(|&v| v as f64 / 1e3),
        "statuses": statuses,
        "io_errors": io_errors,
        "server_cpu_ms_per_image": cpu_ms_per_image.map(|v| (v * 100.0).round() / 100.0),
        "gpu_util_pct": gpu_util.map(|v| (v * 10.0).round() / 10.0),
    });
    println!("{line}");
    Ok(())
}
