//! Single-thread GFLOP/s of the packed GEMM (`packed_gemm`) on given shapes, with the output
//! hot in cache and cold (113 blocks written into one big buffer, as a convolution's output
//! blocks are), bias + ReLU epilogue on.
//!
//!   cargo run --release -p inference-server --example bench_gemm -- 888x147x64 888x64x256
//! (M×K×N: 888 × 147 × 64 is one stem block, 888 × 64 × 256 one of layer 1's 1×1 convolutions.)

use std::time::Instant;

use inference_server::model::cpu::isa::Isa;
use inference_server::model::cpu::packed_gemm::{Epilogue, PackedB, gemm};

const BLOCKS: usize = 113;

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() -> anyhow::Result<()> {
    let isa = Isa::detect();
    println!("kernel: {isa:?}");
    for shape in std::env::args().skip(1) {
        let dims: Vec<usize> = shape.split('x').map(str::parse).collect::<Result<_, _>>()?;
        let &[m, k, n] = dims.as_slice() else {
            anyhow::bail!("shape {shape}: expected MxKxN");
        };
        let a: Vec<f32> = (0..m * k)
            .map(|i| (i * 7919 % 1000) as f32 * 1e-3)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| (i * 104_729 % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let bias = vec![0.1f32; n];
        let packed = PackedB::new(&b, k, n, n);
        let epi = || {
            Some(Epilogue {
                bias: &bias,
                relu: true,
            })
        };
        // SAFETY (both closures): C holds m × n (or BLOCKS × m × n) floats with row stride n.
        let mut hot = vec![0f32; m * n];
        let t_hot = best_of(20, || unsafe {
            gemm(
                isa,
                &a,
                k,
                m,
                &packed,
                0..n,
                hot.as_mut_ptr(),
                n,
                false,
                epi(),
            )
        });
        let mut cold = vec![0f32; BLOCKS * m * n];
        let t_cold = best_of(5, || {
            for blk in cold.chunks_exact_mut(m * n) {
                unsafe {
                    gemm(
                        isa,
                        &a,
                        k,
                        m,
                        &packed,
                        0..n,
                        blk.as_mut_ptr(),
                        n,
                        false,
                        epi(),
                    )
                }
            }
        });
        let flop = 2.0 * (m * k * n) as f64;
        println!(
            "{m}x{k}x{n}: {:.1} GFLOP/s with C in cache, {:.1} GFLOP/s writing {} MiB of C",
            flop / t_hot / 1e9,
            flop * BLOCKS as f64 / t_cold / 1e9,
            (BLOCKS * m * n * 4) >> 20
        );
    }
    Ok(())
}
