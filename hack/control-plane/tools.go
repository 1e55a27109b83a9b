//go:build tools

// Package tools keeps the Kubernetes commands (control plane and node) in go.mod/go.sum; build them with
// `go build k8s.io/kubernetes/cmd/kube-apiserver` (see hack/build-control-plane.sh).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
