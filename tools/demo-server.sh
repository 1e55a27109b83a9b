#!/usr/bin/env bash
# Starts the server on generated weights, waits until ready, classifies a real photo, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
weights=$1
port=${DEMO_PORT:-18080}
MODEL_PATH=$weights PORT=$port HOST=127.0.0.1 LOG_FORMAT=text target/release/inference-server > .state/demo-server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf localhost:$port/ready >/dev/null && break; sleep 0.2; done
curl -sf -F file=@inference/tests/fixtures/images/cat.jpg "localhost:$port/predict?top_k=3"; echo
