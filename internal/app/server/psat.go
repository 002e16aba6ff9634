package serverapp

import (
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/attest/k8spsat"
	"github.com/tallyid/tally/internal/kube"
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
