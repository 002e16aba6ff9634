package serverapp

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/attest/k8spsat"
	"github.com/tallyid/tally/internal/kube"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/kubebundle"
	"github.com/tallyid/tally/registrar"
)

// kubeSide is what the server runs for its Kubernetes clusters.
type kubeSide struct {
	attestor   attest.NodeAttestor // k8s_psat; nil without clusters
	registrars []*registrar.Registrar
	policies   *registrar.PolicyWatcher // the first registrar cluster's DelegationPolicies
	bundles    []*kubebundle.Publisher
}

// buildKube builds, for every cluster of the config, its k8s_psat
// attestor (one, or a router by token issuer when there are several), its
// registrar and its bundle publisher, each with clients of its own at the
// psat rate limit.
func buildKube(cfg Config, td spiffeid.TrustDomain, deps kubeDeps, log *slog.Logger) (*kubeSide, error) {
	var k kubeSide
	byIssuer := map[string]*k8spsat.Attestor{}
	for _, cl := range cfg.clusters() {
		kc, dc, cluster, err := kubeClients(cfg, cl)
		if err != nil {
			return nil, err
		}
		a, err := k8spsat.New(k8spsat.Config{
			TrustDomain:     td,
			ClusterName:     cl.Name,
			Audience:        cfg.PSATAudience,
			ServiceAccounts: cl.ServiceAccounts,
			NodeLabelKeys:   cl.NodeLabelKeys,
			Cluster:         cluster,
			Logger:          log.With(logkey.Component, "k8spsat", logkey.Cluster, cl.Name),
		})
		if err != nil {
			return nil, err
		}
		k.attestor, byIssuer[cl.Issuer] = a, a
		if cl.Registrar {
			r, err := newRegistrar(cfg, cl, td, kc, dc, deps.entries, deps.metrics, log)
			if err != nil {
				return nil, err
			}
			k.registrars = append(k.registrars, r)
			if k.policies == nil {
				if k.policies, err = registrar.NewPolicyWatcher(registrar.PolicyConfig{Kube: kc, Dynamic: dc, Sink: deps.policies, Logger: log}); err != nil {
					return nil, err
				}
			}
		}
		if cl.BundleConfigMap != "" {
			ns, name, _ := strings.Cut(cl.BundleConfigMap, "/")
			p, err := kubebundle.New(kubebundle.Config{Kube: kc, Namespace: ns, Name: name, Source: deps.bundle, Clock: cfg.Clock,
				Logger: log.With(logkey.Cluster, cl.Name)})
			if err != nil {
				return nil, err
			}
			k.bundles = append(k.bundles, p)
		}
	}
	if len(byIssuer) > 1 {
		router, err := k8spsat.NewClusters(byIssuer, log.With(logkey.Component, "k8spsat"))
		if err != nil {
			return nil, err
		}
		k.attestor = router
	}
	return &k, nil
}

// kubeDeps are the server's parts the Kubernetes side feeds.
type kubeDeps struct {
	entries  registrar.Entries
	policies registrar.PolicySink
	bundle   kubebundle.Source
	metrics  prometheus.Registerer
}

// kubeClients are the clients of cluster cl: its kubeconfig, or the pod's
// in-cluster credentials when it has none.
func kubeClients(cfg Config, cl ClusterConfig) (kubernetes.Interface, dynamic.Interface, k8spsat.Cluster, error) {
	rc, err := kube.Config(cl.Kubeconfig)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("server: cluster %s: kubernetes client config: %w", cl.Name, err)
	}
	rc.QPS, rc.Burst = cfg.PSATKubeQPS, cfg.PSATKubeBurst
	cluster, err := k8spsat.NewCluster(rc)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("server: cluster %s: %w", cl.Name, err)
	}
	rc.UserAgent = "tally-server/registrar"
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("server: cluster %s: %w", cl.Name, err)
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("server: cluster %s: %w", cl.Name, err)
	}
	return kc, dc, cluster, nil
}

// newRegistrar builds the registrar of cluster cl; with a lease namespace
// its replicas elect one through the Lease registrar_lease_name there.
func newRegistrar(cfg Config, cl ClusterConfig, td spiffeid.TrustDomain, kc kubernetes.Interface, dc dynamic.Interface, entries registrar.Entries, metrics prometheus.Registerer, log *slog.Logger) (*registrar.Registrar, error) {
	var le *registrar.LeaderElection
	if cl.LeaseNamespace != "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("server: registrar: lease identity: %w", err)
		}
		le = &registrar.LeaderElection{Namespace: cl.LeaseNamespace, Name: cfg.RegistrarLeaseName, Identity: host}
	}
	// Each registrar's metrics carry its cluster's name.
	metrics = prometheus.WrapRegistererWith(prometheus.Labels{"cluster": cl.Name}, metrics)
	return registrar.New(registrar.Config{TrustDomain: td, Cluster: cl.Name, Kube: kc, Dynamic: dc, Entries: entries,
		LeaderElection: le, Metrics: metrics, Clock: cfg.Clock, Logger: log})
}
