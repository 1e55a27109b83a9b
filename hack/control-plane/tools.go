//go:build tools

// Package tools keeps the Kubernetes commands in go.mod/go.sum; build them with
// `go build k8s.io/kubernetes/cmd/kube-apiserver` (see hack/build-control-plane.sh).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
