// Package realnode installs Tally the way a user does, on a real Kubernetes node
// (test/internal/node: kubelet, scheduler, controller-manager and containerd): the images of
// `make images` (plus examples/greeter's) imported into the node, the kustomize base
// (deploy/base) and the Helm chart (deploy/helm/tally) each through one test overlay that
// changes only what this machine forces (see overlay_test.go), and real workloads that get
// their SVIDs from the agent through the real kubelet and containerd cgroups.
//
// The tests need root (they are skipped otherwise) and take the machine-wide node lock; each
// installs into the namespace tally and removes everything it created before it ends.
//
//	go test ./test/realnode/ -count=1 -v -timeout 20m
package realnode
