#!/usr/bin/env bash
# Prints the directory of the Prometheus Operator's CRDs (ServiceMonitor, PodMonitor,
# PrometheusRule, …) from its Go module (go mod download, cached in Go's module cache), so the
# chart's monitoring objects can be checked by the API server's dry run.
set -euo pipefail
version=v0.85.0
dir=$(GOFLAGS=-mod=mod go mod download -json "github.com/prometheus-operator/prometheus-operator@$version" \
  | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[[ -n "$dir" && -d "$dir/example/prometheus-operator-crd" ]] \
  || { echo "hack/monitoring-crds.sh: go mod download of prometheus-operator $version failed (the Go module proxy must be reachable)" >&2; exit 1; }
echo "$dir/example/prometheus-operator-crd"
