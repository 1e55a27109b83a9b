#!/usr/bin/env bash
# make test: every test in the workspace, with the real control plane and the real server.
# Prints how long each phase took (a cold machine pays the Go build of the control plane once;
# its binaries are cached under ~/.cache/inference-k8s keyed by version).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
phase() {
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "::: ${name} :::"
  "$@"
  echo "::: ${name}: $(( $(date +%s) - t0 ))s (total $(( $(date +%s) - start ))s) :::"
}
phase "control plane binaries (hack/build-control-plane.sh)" hack/build-control-plane.sh
# Integration tests run these binaries as real processes (server, local node, operator).
phase "build release binaries" cargo build --release --workspace --bins
export INFERENCE_SERVER_BIN=$PWD/target/release/inference-server
export LOCAL_NODE_BIN=$PWD/target/release/local-node
phase "cargo test (workspace, release)" cargo test --release --workspace --no-fail-fast
echo "::: all tests: $(( $(date +%s) - start ))s :::"
