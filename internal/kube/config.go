// Package kube builds the Kubernetes API clients of the agent and the
// server: the client configuration, from a kubeconfig file or the pod's
// in-cluster credentials, and a REST client whose scheme knows only the
// types its caller reads.
package kube

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config returns the client configuration of the kubeconfig file at path
// (its current context), or, when path is "", the in-cluster configuration
// of the pod's service account. The error says which of the two was tried;
// outside a pod the in-cluster error wraps rest.ErrNotInCluster. The
// returned Config is the caller's to change.
func Config(path string) (*rest.Config, error) {
	if path != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("kube: kubeconfig %s: %w", path, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("kube: in-cluster config (no kubeconfig given): %w", err)
	}
	return cfg, nil
}
