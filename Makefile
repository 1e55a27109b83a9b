# The front door. `make demo` and `make test` are all a fresh machine needs (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
PYTHON ?= python3
STATE := .state
WEIGHTS := $(STATE)/weights/resnet50-random-seed42.safetensors

.PHONY: help deps build build-cuda images image-cuda test weights demo bench bench-hostile bench-operator bench-gpu fuzz crds cluster-up cluster-down parity-fixture sweep clean

help:
	@echo "make demo          bring the system up locally and print a real prediction"
	@echo "make test          all tests (what CI runs)"
	@echo "make bench         forward-pass and HTTP benchmarks side by side with PyTorch/ONNX Runtime"
	@echo "make bench-hostile memory, slow-client and tritonclient figures for the server"
	@echo "make bench-operator the operator with 1000 InferenceServices, beside a baseline operator"
	@echo "make images        build the CPU inference image and the operator image (buildah)"
	@echo "make crds          regenerate crds/, rbac/ and the chart's CRD and RBAC rules from the Rust code"
	@echo "make cluster-up    start the local control plane (etcd, kube-apiserver, controller-manager)"
	@echo "make cluster-down  stop it and remove its state"
	@echo "make sweep         delete stale test binaries cargo leaves in target/ (tens of GB over a day)"

# System packages the build needs: nasm assembles libjpeg-turbo's SIMD decoder.
# buildah / podman / runc / mmdebstrap build and run the images (make images, its tests);
# containerd and the CNI plugins run the real node (hack/real-node.sh).
DEB_TOOLS := nasm:nasm buildah:buildah podman:podman runc:runc mmdebstrap:mmdebstrap containerd:containerd \
	/usr/lib/cni/bridge:containernetworking-plugins
deps:
	@missing=""; for t in $(DEB_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing (apt)"; \
	  apt-get install -y -qq $$missing >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; } \
	  || { echo "make deps: apt-get could not install$$missing" >&2; exit 1; }; fi

build: deps
	$(CARGO) build --release --workspace --bins

# The GPU build (needs no GPU to build; ~25-35 min cold on 2 cores for candle's CUDA kernels).
# Output: target-cuda/release/inference-server, which starts only where the NVIDIA driver is.
build-cuda: deps
	bash -c 'source tools/cuda-env.sh && CARGO_TARGET_DIR=target-cuda $(CARGO) build --release -p inference-server --features cuda'

# The CPU inference image and the operator image, built with buildah from the Dockerfiles and
# tagged $(IMAGE_REPO)/<name>:<workspace version>; prints sizes, layers and build times.
IMAGE_REPO ?= ghcr.io/inference-server
images: deps
	IMAGE_REPO=$(IMAGE_REPO) hack/images.sh

# The CUDA image, where NVIDIA's base images can be pulled (not here): docker or buildah.
# CUDA_COMPUTE_CAP as for build-cuda (80: A100; 86: A10G; 89: L4; 90: H100).
CUDA_COMPUTE_CAP ?= 80
CONTAINER_BUILD ?= $(shell docker info >/dev/null 2>&1 && echo docker build || echo buildah build --layers --format docker)
image-cuda:
	$(CONTAINER_BUILD) -f Dockerfile.inference --target cuda --build-arg CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) \
	  -t $(IMAGE_REPO)/inference-server:$$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)-cuda .

# Python with torch/torchvision for reference fixtures and benchmarks (~5 GB: CUDA wheels).
.venv/.installed: tools/requirements.txt
	$(PYTHON) -m venv .venv
	.venv/bin/pip install -q -r tools/requirements.txt
	touch $@

# Rewrites the torchvision reference logits the parity test compares against.
parity-fixture: .venv/.installed build
	target/release/inference-server generate-weights --seed 42 --out $(STATE)/parity/resnet50-seed42.safetensors
	.venv/bin/python tools/parity/make_fixture.py --weights $(STATE)/parity/resnet50-seed42.safetensors \
		--images inference/tests/fixtures/images --out inference/tests/fixtures/parity.json

# Random weights for tests and the demo (real weights: see README "Model weights").
weights: $(WEIGHTS)
$(WEIGHTS): deps
	$(CARGO) run --release -q -p inference-server -- generate-weights --seed 42 --out $@

test: deps
	tools/test.sh

fuzz:
	tools/fuzz.sh

# Forward-only (ours, stock candle, PyTorch eager, ONNX Runtime) and HTTP (ours vs the seed's
# Flask + gunicorn app) side by side, same weights, same run. BENCH_QUICK=1 for a smoke run.
bench: deps .venv/.installed
	tools/bench/run.sh

# The server under hostile load: peak RSS under worst-case images against the documented bound
# (and without the budget), a normal client beside 70 slow uploaders, tritonclient's checks.
bench-hostile: build weights
	tools/venv.sh triton 'import tritonclient.http, numpy'
	$(PYTHON) tools/bench/hostile.py --weights $(WEIGHTS) --triton-python .state/venv-triton/bin/python

# The operator with 1000 InferenceServices on a private control plane (no node): time to build
# every child and status, API requests at rest (audit log), RSS, one spec change's latency; the
# same figures for a baseline operator (BASELINE_REV) in the same run.
bench-operator: deps
	tools/bench/operator_scale.sh

# On a machine with an NVIDIA GPU (builds what is missing): forward img/s against PyTorch, the
# server over HTTP against the candle baseline, preprocessing by cores (README "Benchmarks").
bench-gpu:
	tools/bench/gpu.sh

# Generated files: the CRD from the operator's Rust types (a test fails when these are stale).
crds:
	$(CARGO) run -q --release -p inference-operator --bin crdgen -- --rbac rbac --chart charts/inference-operator crds

# The local cluster, built from Go modules: etcd, kube-apiserver, kube-controller-manager and a
# real node (hack/real-node.sh: kubelet, containerd, kube-proxy in a network namespace,
# kube-scheduler, CoreDNS, metrics-server) with the project's images imported (make images).
# Needs root. The environment line it prints sets KUBECONFIG.
VERSION := $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
CLUSTER_IMAGES := $(IMAGE_REPO)/inference-server:$(VERSION) $(IMAGE_REPO)/inference-operator:$(VERSION) $(IMAGE_REPO)/resnet50-demo:$(VERSION)
cluster-up: images
	CLUSTER_NODE=real REAL_NODE_IMAGES="$(CLUSTER_IMAGES)" hack/cluster.sh up

# Stops everything cluster-up started (the real node, then the control plane) and removes its state.
cluster-down:
	@if [ -f $(STATE)/demo/operator.pid ]; then kill $$(cat $(STATE)/demo/operator.pid) 2>/dev/null || true; rm -f $(STATE)/demo/operator.pid; fi
	hack/cluster.sh down

# The images, the cluster with a real node, the operator from its chart, an InferenceService,
# and a prediction from a client pod through the Service's DNS name.
demo: images
	tools/demo.sh

sweep:
	tools/sweep-target.sh

clean:
	rm -rf $(STATE)
