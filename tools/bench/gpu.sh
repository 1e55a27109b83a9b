#!/usr/bin/env bash
# GPU benchmark (`make bench-gpu`), for a machine with an NVIDIA GPU and driver. In one run, on
# one GPU, with the same generated weights:
#   1. forward only at batch 1/8/32/128 (input already on the GPU, each run ends with a
#      synchronize): our cuDNN engine (the server's default) and its variants (no CUDA graphs,
#      unfused, measured algorithms, stem padded to 3/8 channels), the candle f16 network the
#      server ran before (the baseline), each cuDNN variant's error against the f32 network;
#   2. the server over HTTP (tools/bench/gpu_server.py): torchvision parity, then closed-loop
#      load with the parity set's JPEGs mixed (2048x2048 included) at 1/8/32/64/256
#      connections and with cat.jpg alone (the load earlier figures used): img/s, p50/p99, GPU
#      utilisation, server CPU per image; also with JPEG_DCT_SCALING=on and with one lane, and
#      the candle engine as the baseline;
#   3. PyTorch on the same GPU (tools/bench/torch_gpu_forward.py): eager fp16 channels_last,
#      then torch.compile (default mode, and reduce-overhead: with CUDA graphs);
#   4. preprocessing images/s on 1..N threads;
# then tools/bench/gpu_report.py prints the tables and issue 20's goals checked on them.
#
#   tools/bench/gpu.sh                 # build what is missing (the CUDA build: make build-cuda)
#   BENCH_QUICK=1 tools/bench/gpu.sh   # fewer runs, shorter HTTP rows
# Knobs: BENCH_BATCHES, BENCH_BACKENDS, BENCH_TORCH (torch backends; empty skips),
#   BENCH_CONC, BENCH_DURATION, BENCH_PHASES (forward,http,torch,preprocess), BENCH_HTTP (labels
#   of phase 2), GPU_BIN_DIR (prebuilt CUDA binaries: inference-server and
#   bench_forward), CPU_BIN_DIR (prebuilt load and bench_preprocess examples), BENCH_OUT.
# Each phase runs under a time limit and the next one runs whatever happened; the exit status
# is non-zero when a phase failed.
set -uo pipefail
cd "$(dirname "$0")/../.."

if [[ ${BENCH_QUICK:-0} == 1 ]]; then d_warmup=5 d_runs=20 d_dur=5; else d_warmup=10 d_runs=50 d_dur=8; fi
BATCHES=${BENCH_BATCHES:-1,8,32,128}
BACKENDS=${BENCH_BACKENDS:-ours,candle-f16,cudnn-nograph,cudnn-unfused,cudnn-find,cudnn-stem3,cudnn-stem8}
TORCH=${BENCH_TORCH-torch-eager,torch-compile,torch-compile-ro}
CONC=${BENCH_CONC:-1,8,32,64,256}
DURATION=${BENCH_DURATION:-$d_dur}
GPU_BIN=${GPU_BIN_DIR:-target-cuda/release}
CPU_BIN=${CPU_BIN_DIR:-target/release/examples}
SERVER=$GPU_BIN/inference-server
FORWARD=$GPU_BIN/bench_forward
[[ -x $FORWARD ]] || FORWARD=$GPU_BIN/examples/bench_forward
LOAD=$CPU_BIN/load
PRE=$CPU_BIN/bench_preprocess
WEIGHTS=.state/weights/resnet50-random-seed42.safetensors
OUT=${BENCH_OUT:-.state/bench/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
phase() { echo "== $* ($(date +%T))"; }
failed=0

if [[ ! -x $SERVER || ! -x $FORWARD ]]; then
  phase "building the CUDA binaries"
  set +eu +o pipefail
  # shellcheck source=tools/cuda-env.sh
  source tools/cuda-env.sh || { echo "gpu.sh: tools/cuda-env.sh failed" >&2; exit 1; }
  set -u -o pipefail
  CARGO_TARGET_DIR=target-cuda cargo build --release -p inference-server --features cuda \
    --bin inference-server --example bench_forward || exit 1
  SERVER=target-cuda/release/inference-server FORWARD=target-cuda/release/examples/bench_forward
fi
if [[ ! -x $LOAD || ! -x $PRE ]]; then
  phase "building the load generator"
  cargo build --release -p inference-server --example load --example bench_preprocess || exit 1
  LOAD=target/release/examples/load PRE=target/release/examples/bench_preprocess
fi

# Run time: the CUDA and cuDNN libraries by soname. Where they are not installed system-wide,
# take them from Python's NVIDIA wheels (PyTorch's, on a machine that has it) or from the
# wheels tools/cuda-env.sh installed; never from its stub libcuda (the driver's must load).
libdirs=
for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) \
    "${CUDA_WHEELS_DIR:-$HOME/.cache/inference-cuda/${CUDA_TOOLKIT_VERSION:-13.0}}"; do
  [[ -d $sp/nvidia ]] || continue
  for d in "$sp"/nvidia/*/lib "$sp"/nvidia/cu13/lib; do
    [[ -d $d ]] && libdirs=$libdirs${libdirs:+:}$d
  done
done
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for b in "$SERVER" "$FORWARD"; do
  if missing=$(ldd "$b" | grep 'not found'); then
    echo "gpu.sh: $b cannot start, shared libraries not found:" >&2
    echo "$missing" >&2
    echo "(libcuda.so.1 comes with the NVIDIA driver; the others with the CUDA runtime and cuDNN: set LD_LIBRARY_PATH)" >&2
    exit 1
  fi
done
command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | sed 's/^/gpu: /' | tee "$OUT/gpu.txt"
echo "cpus: $(nproc)" | tee -a "$OUT/gpu.txt"

if [[ ! -f $WEIGHTS ]]; then
  mkdir -p "$(dirname "$WEIGHTS")"
  "$SERVER" generate-weights --seed 42 --out "$WEIGHTS" || exit 1
fi

PHASES=${BENCH_PHASES:-forward,http,torch,preprocess}
phase "1. forward: ours and the candle baseline"
if [[ ,$PHASES, == *,forward,* ]]; then
  timeout 240 "$FORWARD" --device cuda --weights "$WEIGHTS" --batches "$BATCHES" \
    --warmup "${BENCH_WARMUP:-$d_warmup}" --runs "${BENCH_RUNS:-$d_runs}" --backends "$BACKENDS" \
    > "$OUT/forward-ours.jsonl" 2> "$OUT/forward-ours.log" || { failed=1; tail -20 "$OUT/forward-ours.log"; }
  cat "$OUT/forward-ours.jsonl"
fi

phase "2. the server over HTTP"
# Labels (BENCH_HTTP picks some): cudnn = the server's defaults; cudnn-dct = JPEG_DCT_SCALING=on;
# cudnn-one-lane = GPU_LANES=1; candle-baseline = the server as it was (candle's kernels,
# MAX_BATCH_SIZE 32). Each: parity first, then the rows.
http() { # label timeout conc single-conc [VAR=value...]
  local label=$1 limit=$2 conc=$3 single=$4; shift 4
  [[ ,${BENCH_HTTP:-cudnn,cudnn-dct,cudnn-one-lane,candle-baseline}, == *,$label,* ]] || return 0
  env "$@" timeout "$limit" python3 tools/bench/gpu_server.py --server-bin "$SERVER" \
    --weights "$WEIGHTS" --load-bin "$LOAD" --conc "$conc" --single-conc "$single" \
    --duration "$DURATION" --label "$label" --logs "$OUT/server-$label" >> "$OUT/http.jsonl" || failed=1
}
if [[ ,$PHASES, == *,http,* ]]; then
  : > "$OUT/http.jsonl"
  http cudnn 300 "$CONC" 8,32,64 GPU_ENGINE=cudnn
  http cudnn-dct 180 32,64 "" GPU_ENGINE=cudnn JPEG_DCT_SCALING=on
  http cudnn-one-lane 180 32,64 8,64 GPU_ENGINE=cudnn GPU_LANES=1
  http candle-baseline 240 "${BENCH_BASE_CONC:-1,32,64}" 64 GPU_ENGINE=candle MAX_BATCH_SIZE=32
fi

phase "3. PyTorch on the same GPU"
if [[ -n $TORCH && ,$PHASES, == *,torch,* ]]; then
  timeout "${BENCH_TORCH_TIMEOUT:-400}" python3 tools/bench/torch_gpu_forward.py --weights "$WEIGHTS" \
    --batches "$BATCHES" --warmup "${BENCH_WARMUP:-$d_warmup}" --runs "${BENCH_RUNS:-$d_runs}" \
    --backends "$TORCH" > "$OUT/forward-torch.jsonl" 2> "$OUT/forward-torch.log" || { failed=1; tail -5 "$OUT/forward-torch.log"; }
  cat "$OUT/forward-torch.jsonl"
fi

phase "4. preprocessing on 1..$(nproc) threads"
if [[ ,$PHASES, == *,preprocess,* ]]; then
  threads=1 list=1
  while (( threads * 2 <= $(nproc) )); do threads=$((threads * 2)); list=$list,$threads; done
  # With large JPEGs DCT-scaled (JPEG_DCT_SCALING=on), then PIL-exact (the default).
  : > "$OUT/preprocess.jsonl"
  for side in 512 0; do
    timeout 100 "$PRE" --runs 5 --scaling "$list" --seconds 2 --jpeg-min-side $side \
      inference/tests/fixtures/images/*.jpg >> "$OUT/preprocess.jsonl" || failed=1
  done
fi

phase "report"
python3 tools/bench/gpu_report.py "$OUT" | tee "$OUT/report.txt"
echo "(results in $OUT)"
exit $failed
