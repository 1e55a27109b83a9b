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
# A cold run writes about 8 GB (a fresh clone's target/ reached 6 GB; images and the test
# clusters add the rest), more when target/ holds old builds: say so now rather than fail later on
# a half-written file (a CI run most likely died that way, with an empty error).
disk_check() {
  local free_gb; free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
  echo "${free_gb} GB free on the filesystem of $PWD"
  if [ "$free_gb" -lt 10 ]; then
    echo "tools/test.sh: only ${free_gb} GB free; a cold run needs about 8 GB and headroom (free some: make sweep, cargo clean in old checkouts, podman image prune)" >&2
    return 1
  fi
  [ "$free_gb" -ge 20 ] || echo "warning: under 20 GB free; a cold run may run out" >&2
}
phase "free disk space" disk_check
phase "control plane binaries (hack/build-control-plane.sh)" hack/build-control-plane.sh
# NVIDIA's tritonclient (PyPI) drives the v2 API in inference/tests/tritonclient.rs.
phase "tritonclient venv (tools/triton-requirements.txt)" tools/venv.sh triton 'import tritonclient.http, numpy'
export TRITON_CLIENT_PYTHON=$PWD/.state/venv-triton/bin/python
# moto's S3 server (PyPI) for `fetch s3://` (inference/tests/fetch_s3.rs, operator/tests/e2e.rs).
phase "S3 test server venv (tools/s3-requirements.txt)" tools/venv.sh s3 'import moto.server, boto3'
export S3_PYTHON=$PWD/.state/venv-s3/bin/python
# Integration tests run these binaries as real processes (server, operator).
phase "build release binaries" cargo build --release --workspace --bins
# The images users deploy, built from the Dockerfiles with buildah (base images and the cargo
# caches inside the build are kept between runs); inference/tests/image.rs and
# operator/tests/image.rs run them with podman.
export CONTAINERS_CONF=$PWD/hack/containers/containers.conf
phase "hadolint venv (tools/lint-venv.sh)" tools/lint-venv.sh
export HADOLINT=$PWD/.state/venv-lint/bin/hadolint
# The same venv's Python validates examples/eksctl and examples/ecs (operator/tests/examples.rs).
export EXAMPLES_PYTHON=$PWD/.state/venv-lint/bin/python
phase "container images (hack/images.sh)" env -u IMAGE_REPO hack/images.sh
# The real node's add-ons (CoreDNS, metrics-server: Go modules, cached) and a client image;
# operator/tests/real_node.rs and test-cluster/tests/real_node_teardown.rs run the real node.
phase "real-node add-on images (hack/build-node-addons.sh)" hack/build-node-addons.sh
# The custom-metrics pipeline (hack/metrics-adapter and Prometheus: Go builds, cached by
# version) that operator/tests/real_node.rs scales on by request rate.
phase "metrics adapter and Prometheus images (hack/build-metrics-adapter.sh)" hack/build-metrics-adapter.sh
phase "metrics adapter unit tests (go test)" bash -c 'cd hack/metrics-adapter && go test ./...'
phase "cargo test (workspace, release)" cargo test --release --workspace --no-fail-fast
# The CPU network picks the widest kernels the CPU has; run the narrower ones here too, so every
# kernel set is tested on this machine (the GEMM unit test already covers each one alone).
narrower_kernels() {
  local isa
  for isa in avx2 portable; do
    if [ "$isa" = avx2 ] && ! grep -qw avx2 /proc/cpuinfo; then continue; fi
    if [ "$isa" = avx2 ] && ! grep -qw avx512vl /proc/cpuinfo; then
      echo "avx2 is this CPU's widest set: the main run covered it"; continue
    fi
    INFERENCE_ISA=$isa cargo test --release -p inference-server --test model_equivalence \
      -- cpu_model_matches_stock_candle_resnet50
  done
}
phase "CPU network with forced narrower kernels (INFERENCE_ISA)" narrower_kernels
echo "::: all tests: $(( $(date +%s) - start ))s :::"
