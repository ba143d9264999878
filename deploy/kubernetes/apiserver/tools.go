//go:build tools

// Package apiserver pins the kube-apiserver that kvsync's leader-election
// tests run against. k8s.io/kubernetes cannot be installed with `go install`
// (its go.mod points its staging modules at local paths), so this module
// requires it with each staging module replaced by its published release,
// and build.sh builds the server from here. The blank import keeps
// `go mod tidy` from dropping what the build needs.
package apiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"
