//go:build tools

// Package tools keeps helm in go.mod/go.sum; it lives in its own module because helm
// v3.22 requires k8s.io/* v0.37 while the control-plane module pins v0.34.
// Build: go build helm.sh/helm/v3/cmd/helm (see hack/build-control-plane.sh).
package tools

import _ "helm.sh/helm/v3/cmd/helm"
