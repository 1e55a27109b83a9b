#!/usr/bin/env bash
# make bench: in one run on this machine, side by side
#   1. forward pass only (median, p90, img/s at batch 1/4/8): our candle model (BN folded),
#      candle-transformers' stock resnet50, PyTorch eager, ONNX Runtime — same weights, same
#      thread count;
#   2. HTTP POST /predict with real JPEGs (img/s, p50/p95/p99 at concurrency 1/4/8/16): our
#      server vs the seed's Flask + gunicorn + torch app (tools/seed_app), with wrk, on 127.0.0.1;
#   3. overload: our server offered 2x the rate it sustains, open loop, with oha (responses by
#      status, admitted vs rejected latency, Retry-After, RSS over the run).
# Results: $BENCH_OUT (default .state/bench/<time>/): forward.jsonl, http.jsonl, overload.jsonl,
# report.txt, logs.
#
# Knobs (environment):
#   BENCH_QUICK=1        smoke run: 1 warm-up, 3 runs per batch, 5 s per HTTP run (~3-4 min)
#                        (default, a real run: 3 warm-up + 20 runs, 30 s per HTTP run; ~10-15 min
#                        on 2 cores)
#   BENCH_PARTS          forward,http,overload (default all three)
#   BENCH_THREADS        threads for every backend/server (default: nproc)
#   BENCH_BATCHES        1,4,8          BENCH_CONCURRENCY   1,4,8,16
#   BENCH_WARMUP, BENCH_RUNS (split over BENCH_ROUNDS interleaved rounds, default 3),
#   BENCH_HTTP_DURATION (s), BENCH_HTTP_WARMUP (rounds over the images)
#   CARGO_TARGET_DIR     where the Rust binaries are built (default target)
set -euo pipefail
cd "$(dirname "$0")/../.."

QUICK=${BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
  d_warmup=1 d_runs=3 d_rounds=1 d_http_duration=5 d_http_warmup=1
else
  d_warmup=3 d_runs=21 d_rounds=3 d_http_duration=30 d_http_warmup=2
fi
ROUNDS=${BENCH_ROUNDS:-$d_rounds}
WARMUP=${BENCH_WARMUP:-$d_warmup}
RUNS=${BENCH_RUNS:-$d_runs}
HTTP_DURATION=${BENCH_HTTP_DURATION:-$d_http_duration}
HTTP_WARMUP=${BENCH_HTTP_WARMUP:-$d_http_warmup}
THREADS=${BENCH_THREADS:-$(nproc)}
BATCHES=${BENCH_BATCHES:-1,4,8}
CONCURRENCY=${BENCH_CONCURRENCY:-1,4,8,16}
PARTS=${BENCH_PARTS:-forward,http,overload}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${BENCH_OUT:-.state/bench/$(date +%Y%m%d-%H%M%S)}
PY=.venv/bin/python
WEIGHTS=.state/weights/resnet50-random-seed42.safetensors
IMAGES=(inference/tests/fixtures/images/*.jpg)

start=$(date +%s)
phase() {
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "::: bench: ${name} :::" >&2
  "$@"
  echo "::: bench: ${name}: $(( $(date +%s) - t0 ))s (total $(( $(date +%s) - start ))s) :::" >&2
}
has_part() { [[ ,$PARTS, == *,$1,* ]]; }

mkdir -p "$OUT"
: > "$OUT/forward.jsonl"
: > "$OUT/http.jsonl"
: > "$OUT/overload.jsonl"

# --- prerequisites ---------------------------------------------------------------------------
deps() {
  if has_part http && ! command -v wrk >/dev/null; then
    echo "installing wrk (apt)" >&2
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
  fi
  if has_part overload && ! command -v oha >/dev/null && [[ ! -x $HOME/.cargo/bin/oha ]]; then
    echo "installing oha (cargo install, a few minutes once)" >&2
    cargo install -q --locked oha
  fi
  if [[ ! -x $PY ]]; then python3 -m venv .venv; fi
  if ! $PY -c 'import torch, torchvision, onnx, onnxruntime, flask, gunicorn, prometheus_client, safetensors' 2>/dev/null; then
    echo "installing tools/requirements.txt into .venv (torch: ~5 GB)" >&2
    .venv/bin/pip install -q -r tools/requirements.txt
  fi
  cargo build --release -q -p inference-server --bin inference-server --example bench_forward
  if [[ ! -f $WEIGHTS ]]; then
    "$TARGET/release/inference-server" generate-weights --seed 42 --out "$WEIGHTS"
  fi
}
phase "prerequisites (wrk, .venv, cargo build, weights)" deps

{
  echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(uname -m)"
  echo "threads: $THREADS; quick: $QUICK; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "weights: $WEIGHTS (generated, seed 42); results: $OUT"
} | tee "$OUT/host.txt" >&2

# --- 1. forward pass ---------------------------------------------------------------------------
# The runs are split over $ROUNDS interleaved rounds (ours, candle, torch, ORT, then again) so
# that drift in a shared machine's speed hits every backend alike; report.py takes the median of
# the rounds' medians.
ROUND_RUNS=$(( (RUNS + ROUNDS - 1) / ROUNDS ))
forward_candle() {
  "$TARGET/release/examples/bench_forward" --weights "$WEIGHTS" --threads "$THREADS" \
    --batches "$BATCHES" --warmup "$WARMUP" --runs "$ROUND_RUNS" --backends ours,candle-folded,candle-stock \
    | tee -a "$OUT/forward.jsonl"
}
export_onnx() {
  $PY tools/bench/export_onnx.py --weights "$WEIGHTS" --out "$OUT/resnet50.onnx" --threads "$THREADS" >&2
}
forward_python() {
  $PY tools/bench/torch_forward.py --weights "$WEIGHTS" --onnx "$OUT/resnet50.onnx" \
    --threads "$THREADS" --batches "$BATCHES" --warmup "$WARMUP" --runs "$ROUND_RUNS" \
    --backends torch,ort | tee -a "$OUT/forward.jsonl"
}
if has_part forward; then
  phase "forward: export ONNX from the torch model" export_onnx
  for round in $(seq "$ROUNDS"); do
    phase "forward round $round/$ROUNDS: ours, candle folded, candle stock" forward_candle
    phase "forward round $round/$ROUNDS: PyTorch eager, ONNX Runtime" forward_python
  done
fi

# --- 2. HTTP ------------------------------------------------------------------------------------
http() {
  $PY tools/bench/http_bench.py --server-bin "$TARGET/release/inference-server" \
    --weights "$WEIGHTS" --threads "$THREADS" --concurrency "$CONCURRENCY" \
    --duration "$HTTP_DURATION" --warmup "$HTTP_WARMUP" --servers ours,seed --logs "$OUT" \
    "${IMAGES[@]}" | tee -a "$OUT/http.jsonl"
}
if has_part http; then
  phase "http: ours vs seed (wrk)" http
fi

# --- 3. overload ----------------------------------------------------------------------------------
overload() {
  $PY tools/bench/overload.py --server-bin "$TARGET/release/inference-server" \
    --weights "$WEIGHTS" --threads "$THREADS" --duration "$HTTP_DURATION" \
    --sustain "$(( HTTP_DURATION < 10 ? HTTP_DURATION : 10 ))" --logs "$OUT" \
    inference/tests/fixtures/images/cat.jpg | tee -a "$OUT/overload.jsonl"
}
if has_part overload; then
  phase "overload: ours at 2x its sustainable rate (oha)" overload
fi

# --- report -------------------------------------------------------------------------------------
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/host.txt" >&2
echo
{
  cat "$OUT/host.txt"
  [[ $QUICK == 1 ]] && echo "BENCH_QUICK=1: a smoke run, too few iterations to be a measurement"
  echo
  $PY tools/bench/report.py "$OUT/forward.jsonl" "$OUT/http.jsonl" "$OUT/overload.jsonl"
} | tee "$OUT/report.txt"
echo "(total $(( $(date +%s) - start ))s; results in $OUT)"
