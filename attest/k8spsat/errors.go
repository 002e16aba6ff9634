package k8spsat

import "errors"

// ErrNotFound is what a Cluster returns (wrapped) for a pod or node that does
// not exist. The Attestor refuses such an attestation with attest.ErrDenied;
// any other Cluster error is reported as a failure of the Kubernetes API.
var ErrNotFound = errors.New("not found")
