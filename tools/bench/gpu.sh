#!/usr/bin/env bash
# GPU forward-pass benchmark, for a machine with an NVIDIA GPU and driver (not runnable on CPU-only
# machines: the CUDA build does not even start without libcuda.so.1).
# Runs inference/examples/bench_forward.rs built with `--features cuda` (next to
# `make build-cuda`'s target-cuda/release/inference-server, same target dir, so it reuses that
# build) on --device cuda at batch 1/8/32: our model (the server's GPU path, f16), the same network
# in f32 (candle-folded) and candle-transformers' stock resnet50 (f32),
# and prints median/p90 latency and img/s. Input and logits stay on the GPU; each timed forward
# ends with a device synchronize. Then tools/bench/gpu_server.py runs the server on the GPU:
# torchvision parity over HTTP (exits non-zero when it fails) and img/s at BENCH_CONC.
#
#   tools/bench/gpu.sh                     # build if needed, then benchmark
#   BENCH_QUICK=1 tools/bench/gpu.sh       # 2 warm-up + 10 runs (default 5 + 50)
# Knobs: BENCH_BATCHES (1,8,32), BENCH_WARMUP, BENCH_RUNS, BENCH_BACKENDS (ours = f16, candle-folded = f32, candle-stock),
#   BENCH_GPU (cuda = GPU 0; cuda:N), BENCH_BUILD=1 (rebuild even if the binary exists),
#   CUDA_WHEELS_DIR (as tools/cuda-env.sh; where the CUDA runtime libraries are found at run time).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ ${BENCH_QUICK:-0} == 1 ]]; then d_warmup=2 d_runs=10; else d_warmup=5 d_runs=50; fi
BATCHES=${BENCH_BATCHES:-1,8,32}
WARMUP=${BENCH_WARMUP:-$d_warmup}
RUNS=${BENCH_RUNS:-$d_runs}
BACKENDS=${BENCH_BACKENDS:-ours,candle-folded,candle-stock}
GPU=${BENCH_GPU:-cuda}
TARGET=target-cuda
BIN=$TARGET/release/examples/bench_forward
SERVER=$TARGET/release/inference-server
WEIGHTS=.state/weights/resnet50-random-seed42.safetensors
OUT=${BENCH_OUT:-.state/bench/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

# Build: `make build-cuda`'s command plus the example (the first cold build takes 25-35 min on
# 2 cores for candle's kernels; with target-cuda already built it only compiles the example).
if [[ ! -x $BIN || ! -x $SERVER || ${BENCH_BUILD:-0} == 1 ]]; then
  # cuda-env.sh is written for a plain shell (as `make build-cuda` sources it): not under -eu.
  set +eu +o pipefail
  # shellcheck source=tools/cuda-env.sh
  source tools/cuda-env.sh || { echo "gpu.sh: tools/cuda-env.sh failed" >&2; exit 1; }
  set -eu -o pipefail
  CARGO_TARGET_DIR=$TARGET cargo build --release -p inference-server --features cuda \
    --bin inference-server --example bench_forward
fi

# Run time: candle links libcudart/libcublas/libcurand/libnvrtc by soname; where they are not
# installed system-wide, take them from the wheels tools/cuda-env.sh installed (never its stub
# libcuda: the driver's real libcuda.so.1 must be the one loaded).
cuda_lib=${CUDA_WHEELS_DIR:-$HOME/.cache/inference-cuda/${CUDA_TOOLKIT_VERSION:-13.0}}/nvidia/cu13/lib
if [[ -d $cuda_lib ]]; then
  export LD_LIBRARY_PATH=$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if missing=$(ldd "$BIN" | grep 'not found'); then
  echo "gpu.sh: $BIN cannot start, shared libraries not found:" >&2
  echo "$missing" >&2
  echo "(libcuda.so.1 comes with the NVIDIA driver; the others with the CUDA runtime: set CUDA_WHEELS_DIR or LD_LIBRARY_PATH)" >&2
  exit 1
fi
command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /'

if [[ ! -f $WEIGHTS ]]; then
  "$SERVER" generate-weights --seed 42 --out "$WEIGHTS"
fi

"$BIN" --device "$GPU" --weights "$WEIGHTS" --batches "$BATCHES" --warmup "$WARMUP" \
  --runs "$RUNS" --backends "$BACKENDS" | tee "$OUT/forward-gpu.jsonl"
echo
# report.py needs only the Python standard library.
python3 tools/bench/report.py "$OUT/forward-gpu.jsonl" | tee "$OUT/report.txt"
echo
# The server itself on the GPU: torchvision parity over HTTP, then img/s with oha (skipped
# where oha is not installed: `cargo install oha`).
conc=${BENCH_CONC:-1,8,32,64}
command -v oha >/dev/null || [[ -x $HOME/.cargo/bin/oha ]] || { echo "(no oha: HTTP throughput skipped)"; conc=; }
python3 tools/bench/gpu_server.py --server-bin "$SERVER" --weights "$WEIGHTS" --conc "$conc" \
  --duration "${BENCH_DURATION:-10}" --logs "$OUT/server" | tee -a "$OUT/report.txt"
echo "(results in $OUT)"
