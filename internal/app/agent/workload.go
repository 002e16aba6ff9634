package agentapp

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/tallyid/tally/attest"
	k8sattest "github.com/tallyid/tally/attest/k8s"
	unixattest "github.com/tallyid/tally/attest/unix"
	"github.com/tallyid/tally/internal/kube"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/workloadapi"
)

// workloadAttestors runs every configured workload attestor on a caller
// and joins their selectors; any failure refuses the caller.
type workloadAttestors []workloadapi.Attestor

func (w workloadAttestors) Attest(ctx context.Context, p attest.Process) ([]attest.Selector, error) {
	var out []attest.Selector
	for _, a := range w {
		sels, err := a.Attest(ctx, p)
		if err != nil {
			return nil, err
		}
		out = append(out, sels...)
	}
	return out, nil
}

// newWorkloadAttestors builds the unix attestor and, with a pod source, the
// Kubernetes one; run is non-nil when an attestor needs a loop (the pod
// watch).
func newWorkloadAttestors(c Config, log *slog.Logger) (workloadAttestors, func(context.Context) error, error) {
	list := workloadAttestors{unixattest.New(unixattest.Config{})}
	if c.PodSource == "" {
		return list, nil, nil
	}
	cfg := k8sattest.Config{
		NodeName:      c.NodeName,
		PodSource:     c.PodSource,
		KubeletURL:    c.KubeletURL,
		KubeletCAFile: c.KubeletCAFile,
		TokenPath:     c.KubeletTokenPath,
		Logger:        log.With(logkey.Component, "k8s-attestor"),
	}
	if c.PodSource == k8sattest.SourceAPIServer {
		rc, err := kube.Config(c.Kubeconfig)
		if err != nil {
			return nil, nil, fmt.Errorf("agent: kubernetes client config: %w", err)
		}
		if cfg.Pods, err = k8sattest.PodListWatch(rc, c.NodeName); err != nil {
			return nil, nil, fmt.Errorf("agent: %w", err)
		}
	}
	k8s, err := k8sattest.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	return append(list, k8s), k8s.Run, nil
}
