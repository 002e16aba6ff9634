package serverapp

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/tallyid/tally/attest/k8spsat"
	"github.com/tallyid/tally/internal/kube"
	"github.com/tallyid/tally/registrar"
)

// psatAttestor builds the k8s_psat attestor from the config, talking to
// the cluster with the kubeconfig (or in-cluster credentials) at the
// configured rate limit, and logging why it refuses attestations to log.
func psatAttestor(cfg Config, td spiffeid.TrustDomain, log *slog.Logger) (*k8spsat.Attestor, error) {
	rc, err := kube.Config(cfg.PSATKubeconfig)
	if err != nil {
		return nil, fmt.Errorf("server: k8s_psat: kubernetes client config: %w", err)
	}
	rc.QPS, rc.Burst = cfg.PSATKubeQPS, cfg.PSATKubeBurst
	cluster, err := k8spsat.NewCluster(rc)
	if err != nil {
		return nil, fmt.Errorf("server: k8s_psat: %w", err)
	}
	return k8spsat.New(k8spsat.Config{
		TrustDomain:     td,
		ClusterName:     cfg.PSATCluster,
		Audience:        cfg.PSATAudience,
		ServiceAccounts: cfg.PSATServiceAccounts,
		NodeLabelKeys:   cfg.PSATNodeLabelKeys,
		Cluster:         cluster,
		Logger:          log,
	})
}

// kubeClients are the registrar's clients of the psat cluster: its own
// (informers hold a watch each), at the psat rate limit.
func kubeClients(cfg Config) (kubernetes.Interface, dynamic.Interface, error) {
	rc, err := kube.Config(cfg.PSATKubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("server: registrar: kubernetes client config: %w", err)
	}
	rc.QPS, rc.Burst = cfg.PSATKubeQPS, cfg.PSATKubeBurst
	rc.UserAgent = "tally-server/registrar"
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("server: registrar: %w", err)
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("server: registrar: %w", err)
	}
	return kc, dc, nil
}

// newRegistrar builds the Kubernetes registrar for the psat cluster.
func newRegistrar(cfg Config, td spiffeid.TrustDomain, kc kubernetes.Interface, dc dynamic.Interface, entries registrar.Entries, metrics prometheus.Registerer, log *slog.Logger) (*registrar.Registrar, error) {
	var le *registrar.LeaderElection
	if cfg.RegistrarLeaseNamespace != "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("server: registrar: lease identity: %w", err)
		}
		le = &registrar.LeaderElection{Namespace: cfg.RegistrarLeaseNamespace, Name: cfg.RegistrarLeaseName, Identity: host}
	}
	return registrar.New(registrar.Config{TrustDomain: td, Cluster: cfg.PSATCluster, Kube: kc, Dynamic: dc, Entries: entries,
		LeaderElection: le, Metrics: metrics, Clock: cfg.Clock, Logger: log})
}
