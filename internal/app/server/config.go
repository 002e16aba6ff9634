// Package serverapp is the tally-server binary: its config, and the wiring
// that builds the server's components (store, authority, registry, the Node
// and Admin gRPC APIs, the HTTPS bundle and OIDC endpoints, health) and
// serves them.
package serverapp

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/tallyid/tally/attest/k8spsat"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/exchange"
	"github.com/tallyid/tally/internal/config"
	"github.com/tallyid/tally/internal/dnsname"
	"github.com/tallyid/tally/internal/logging"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Config is the server configuration: a YAML file (unknown keys refused),
// every key also a flag of the same name with dashes.
type Config struct {
	// TrustDomain is the trust domain name, e.g. example.org. Required.
	TrustDomain string `yaml:"trust_domain"`
	// DataDir holds the store and the key files. Default ./tally-data.
	DataDir string `yaml:"data_dir"`
	// BindAddress serves the Node API (and the Admin API over mTLS).
	BindAddress string `yaml:"bind_address"`
	// HTTPAddress serves HTTPS: the SPIFFE bundle endpoint (https_spiffe)
	// at /, OIDC discovery at /.well-known/openid-configuration and /keys.
	HTTPAddress string `yaml:"http_address"`
	// WebAddress serves HTTPS for browsers and standard OIDC clients: the
	// SVID rotation dashboard under /dashboard/ and OIDC discovery, with a
	// web serving certificate (WebCertFile and WebKeyFile, or one for
	// WebDNSNames signed by a local serving CA kept in data_dir/web).
	WebAddress  string   `yaml:"web_address"`
	WebCertFile string   `yaml:"web_cert_file"`
	WebKeyFile  string   `yaml:"web_key_file"`
	WebDNSNames []string `yaml:"web_dns_names"`
	// HealthAddress serves /livez, /readyz and /metrics over plain HTTP.
	HealthAddress string `yaml:"health_address"`
	// AdminSocket is the Admin API's Unix socket (mode 0600).
	AdminSocket string `yaml:"admin_socket"`
	// CATTL is the lifetime of each signing key; rotation prepares a new key
	// at 1/2 and activates it at 5/6 of it.
	CATTL time.Duration `yaml:"ca_ttl"`
	// X509SVIDTTL and JWTSVIDTTL are the default SVID lifetimes; they may
	// not exceed ca_ttl/6. Unset: min(1h, ca_ttl/6) and min(5m, ca_ttl/6).
	X509SVIDTTL time.Duration `yaml:"x509_svid_ttl"`
	JWTSVIDTTL  time.Duration `yaml:"jwt_svid_ttl"`
	// AgentSVIDTTL is the lifetime of agent SVIDs (default x509_svid_ttl).
	AgentSVIDTTL time.Duration `yaml:"agent_svid_ttl"`
	// JWTIssuer is the OIDC issuer URL for JWT-SVIDs (iss claim and
	// discovery). Default: https://<http_address>.
	JWTIssuer string `yaml:"jwt_issuer"`
	// UpstreamCertFile and UpstreamKeyFile: an upstream CA that signs the
	// server's intermediates, instead of a self-signed root.
	UpstreamCertFile string `yaml:"upstream_cert_file"`
	UpstreamKeyFile  string `yaml:"upstream_key_file"`
	// UpstreamStepCA* name an upstream step-ca instead: its URL, the hex
	// SHA-256 of its root certificate, a JWK provisioner and the file with
	// its key's password (docs/upstream.md).
	UpstreamStepCAURL          string `yaml:"upstream_step_ca_url"`
	UpstreamStepCAFingerprint  string `yaml:"upstream_step_ca_fingerprint"`
	UpstreamStepCAProvisioner  string `yaml:"upstream_step_ca_provisioner"`
	UpstreamStepCAPasswordFile string `yaml:"upstream_step_ca_password_file"`
	// AdminIDs may call the Admin API over mTLS on bind_address.
	AdminIDs []string `yaml:"admin_ids"`
	// PSATCluster, when set, enables k8s_psat node attestation for agents of
	// this Kubernetes cluster; the name appears in agent IDs and selectors.
	PSATCluster string `yaml:"psat_cluster"`
	// PSATKubeconfig is the kubeconfig for TokenReview and pod/node reads;
	// empty: the in-cluster service account.
	PSATKubeconfig string `yaml:"psat_kubeconfig"`
	// PSATAudience is the audience agents' projected tokens must carry.
	PSATAudience string `yaml:"psat_audience"`
	// PSATServiceAccounts are the agents' service accounts, "namespace:name".
	PSATServiceAccounts []string `yaml:"psat_service_accounts"`
	// PSATNodeLabelKeys are node label keys that become agent_node_label
	// selectors.
	PSATNodeLabelKeys []string `yaml:"psat_node_label_keys"`
	// PSATKubeQPS and PSATKubeBurst are the client-side rate limit of the
	// Kubernetes client (requests per second, and the burst allowed at once) that
	// every k8s_psat attestation shares: a TokenReview, a pod read and, when
	// not cached, a node read each. Default 200 and 400 (client-go's own
	// 5 and 10 would keep a 1,000-node cluster restart attesting for ten
	// minutes); the apiserver's priority and fairness still applies.
	PSATKubeQPS   float32 `yaml:"psat_kube_qps"`
	PSATKubeBurst int     `yaml:"psat_kube_burst"`
	// Registrar turns on the Kubernetes registrar (docs/kubernetes.md): it
	// keeps the entries of psat_cluster's pods equal to what its
	// ClusterIdentity and ClusterStaticEntry resources render, through the
	// psat_kubeconfig client. Requires psat_cluster.
	Registrar bool `yaml:"registrar"`
	// RegistrarLeaseNamespace, when set, elects one registrar among the
	// server's replicas through the Lease RegistrarLeaseName (default
	// tally-registrar) in that namespace; this replica's name in it is
	// its host name (the pod name).
	RegistrarLeaseNamespace string `yaml:"registrar_lease_namespace"`
	RegistrarLeaseName      string `yaml:"registrar_lease_name"`
	// BundleConfigMap, "namespace/name", is a ConfigMap the server keeps
	// the trust bundle in (PEM, key bundle.pem) for agents yet to start,
	// through the psat_kubeconfig client. Requires psat_cluster.
	BundleConfigMap string `yaml:"bundle_configmap"`
	// PSATIssuer is the iss of psat_cluster's service-account tokens;
	// required with Clusters, whose agents' tokens are told apart by it.
	PSATIssuer string `yaml:"psat_issuer"`
	// Clusters are more Kubernetes clusters sharing this server (file
	// only): their agents attest with k8s_psat, each token reviewed by the
	// cluster whose issuer it names, and each may have a registrar that
	// keeps its own entries (owned by its name) and a bundle ConfigMap.
	Clusters []ClusterConfig `yaml:"clusters"`
	// Exchange is the token-exchange policy (docs/delegation.md): trusted
	// OIDC issuers and the rules of who may exchange for what. Without
	// rules every exchange is refused.
	Exchange exchange.Policy `yaml:"exchange"`
	// LogLevel is debug, info, warn or error; LogFormat is json or text.
	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`

	// Clock is the server's time (rotation, renewals, expiry checks).
	// Default: the real clock. Not a key: tests set it.
	Clock clock.WithTicker
	// Logger receives everything the server logs. Default: discard.
	// tally-server sets one from log_level and log_format.
	Logger *slog.Logger
}

// ClusterConfig is one more cluster of Config.Clusters; its keys mean
// what the psat_*, registrar* and bundle_configmap keys mean for
// psat_cluster (the audience and the rate limit are shared).
type ClusterConfig struct {
	Name            string   `yaml:"name"`
	Kubeconfig      string   `yaml:"kubeconfig"`
	Issuer          string   `yaml:"issuer"`
	ServiceAccounts []string `yaml:"service_accounts"`
	NodeLabelKeys   []string `yaml:"node_label_keys"`
	Registrar       bool     `yaml:"registrar"`
	LeaseNamespace  string   `yaml:"lease_namespace"`
	BundleConfigMap string   `yaml:"bundle_configmap"`
}

// UnmarshalYAML decodes strictly: an unknown key in a clusters entry is an
// error, as it is at the top of the config.
func (cl *ClusterConfig) UnmarshalYAML(n *yaml.Node) error {
	raw, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	type plain ClusterConfig
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	return dec.Decode((*plain)(cl))
}

// clusters are every cluster the server serves: psat_cluster first, then
// Clusters.
func (c Config) clusters() []ClusterConfig {
	var out []ClusterConfig
	if c.PSATCluster != "" {
		out = append(out, ClusterConfig{Name: c.PSATCluster, Kubeconfig: c.PSATKubeconfig, Issuer: c.PSATIssuer,
			ServiceAccounts: c.PSATServiceAccounts, NodeLabelKeys: c.PSATNodeLabelKeys, Registrar: c.Registrar,
			LeaseNamespace: c.RegistrarLeaseNamespace, BundleConfigMap: c.BundleConfigMap})
	}
	return append(out, c.Clusters...)
}

// validateClusters checks every cluster, psat_cluster's keys included
// (each error names the key as it is written).
func (c Config) validateClusters() error {
	if len(c.Clusters) > 0 && c.PSATCluster == "" {
		return errors.New("config: clusters needs psat_cluster (the first cluster)")
	}
	names, issuers := map[string]bool{}, map[string]bool{}
	for i, cl := range c.clusters() {
		// key names the cluster's keys: psat_cluster's own, or clusters[n].
		key := map[string]string{"name": "psat_cluster", "issuer": "psat_issuer", "service_accounts": "psat_service_accounts",
			"bundle_configmap": "bundle_configmap", "lease_namespace": "registrar_lease_namespace"}
		if i > 0 {
			for k := range key {
				key[k] = fmt.Sprintf("clusters[%d].%s", i-1, k)
			}
		}
		where := "config: " + key["name"] + " (" + cl.Name + ")"
		switch {
		case spiffeid.ValidatePathSegment(cl.Name) != nil:
			return fmt.Errorf("%s: name must be a SPIFFE ID path segment", where)
		case names[cl.Name]:
			return fmt.Errorf("%s: name used twice", where)
		case len(c.Clusters) > 0 && cl.Issuer == "":
			return fmt.Errorf("config: %s: issuer is required when several clusters share the server", key["issuer"])
		case cl.Issuer != "" && issuers[cl.Issuer]:
			return fmt.Errorf("config: %s: issuer %q used twice", key["issuer"], cl.Issuer)
		case i > 0 && cl.Kubeconfig == "":
			return fmt.Errorf("%s: kubeconfig is required (in-cluster credentials are psat_cluster's)", where)
		case len(cl.ServiceAccounts) == 0:
			return fmt.Errorf("config: %s is required", key["service_accounts"])
		}
		names[cl.Name], issuers[cl.Issuer] = true, true
		for _, sa := range cl.ServiceAccounts {
			if ns, name, ok := strings.Cut(sa, ":"); !ok || ns == "" || name == "" {
				return fmt.Errorf("config: %s: %q: want namespace:name", key["service_accounts"], sa)
			}
		}
		if cl.BundleConfigMap != "" {
			ns, name, ok := strings.Cut(cl.BundleConfigMap, "/")
			if !ok || len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(name)) > 0 {
				return fmt.Errorf("config: %s %q: want namespace/name", key["bundle_configmap"], cl.BundleConfigMap)
			}
		}
		if cl.LeaseNamespace != "" {
			if errs := validation.IsDNS1123Label(cl.LeaseNamespace); len(errs) > 0 {
				return fmt.Errorf("config: %s %q: %s", key["lease_namespace"], cl.LeaseNamespace, strings.Join(errs, "; "))
			}
		}
	}
	return nil
}

// withDefaults fills what the config leaves to be derived: the SVID TTLs
// from ca_ttl, the JWT issuer from http_address, the clock and the logger.
func (c Config) withDefaults() Config {
	if c.X509SVIDTTL == 0 {
		c.X509SVIDTTL = ca.DefaultSVIDTTL(ca.KindX509, c.CATTL)
	}
	if c.JWTSVIDTTL == 0 {
		c.JWTSVIDTTL = ca.DefaultSVIDTTL(ca.KindJWT, c.CATTL)
	}
	if c.AgentSVIDTTL == 0 {
		c.AgentSVIDTTL = c.X509SVIDTTL
	}
	if c.JWTIssuer == "" {
		c.JWTIssuer = "https://" + c.HTTPAddress
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		DataDir:            "./tally-data",
		BindAddress:        "127.0.0.1:8081",
		HTTPAddress:        "127.0.0.1:8443",
		HealthAddress:      "127.0.0.1:8080",
		WebAddress:         "127.0.0.1:8444",
		WebDNSNames:        []string{"localhost"},
		AdminSocket:        tallyv1.DefaultAdminSocket,
		CATTL:              ca.DefaultCATTL,
		PSATAudience:       k8spsat.DefaultAudience,
		PSATKubeQPS:        k8spsat.DefaultQPS,
		PSATKubeBurst:      k8spsat.DefaultBurst,
		RegistrarLeaseName: "tally-registrar",
		LogLevel:           "info",
		LogFormat:          "json",
	}
}

// BindFlags registers one flag per option, writing into c.
func BindFlags(fs *pflag.FlagSet, c *Config) {
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "trust domain name (required)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the store and key files")
	fs.StringVar(&c.BindAddress, "bind-address", c.BindAddress, "Node API (gRPC over TLS) address")
	fs.StringVar(&c.HTTPAddress, "http-address", c.HTTPAddress, "HTTPS address: bundle endpoint and OIDC discovery")
	fs.StringVar(&c.HealthAddress, "health-address", c.HealthAddress, "HTTP address of /livez, /readyz, /metrics")
	fs.StringVar(&c.WebAddress, "web-address", c.WebAddress, "HTTPS address for browsers: the dashboard and OIDC discovery, with a web serving certificate")
	fs.StringVar(&c.WebCertFile, "web-cert-file", c.WebCertFile, "web serving certificate (PEM, chain), reloaded when it changes; default: one from a local serving CA")
	fs.StringVar(&c.WebKeyFile, "web-key-file", c.WebKeyFile, "web serving key (PEM)")
	fs.StringSliceVar(&c.WebDNSNames, "web-dns-name", c.WebDNSNames, "DNS name or IP of the local web serving certificate (repeatable)")
	fs.StringVar(&c.AdminSocket, "admin-socket", c.AdminSocket, "Admin API Unix socket")
	fs.DurationVar(&c.CATTL, "ca-ttl", c.CATTL, "lifetime of each CA signing key")
	fs.DurationVar(&c.X509SVIDTTL, "x509-svid-ttl", c.X509SVIDTTL, "default X509-SVID lifetime, at most ca-ttl/6 (default min(1h, ca-ttl/6))")
	fs.DurationVar(&c.JWTSVIDTTL, "jwt-svid-ttl", c.JWTSVIDTTL, "default JWT-SVID lifetime, at most ca-ttl/6 (default min(5m, ca-ttl/6))")
	fs.DurationVar(&c.AgentSVIDTTL, "agent-svid-ttl", c.AgentSVIDTTL, "agent SVID lifetime (default x509-svid-ttl)")
	fs.StringVar(&c.JWTIssuer, "jwt-issuer", c.JWTIssuer, "OIDC issuer URL of JWT-SVIDs (default https://<http-address>)")
	fs.StringVar(&c.UpstreamCertFile, "upstream-cert-file", c.UpstreamCertFile, "upstream CA certificate (PEM)")
	fs.StringVar(&c.UpstreamKeyFile, "upstream-key-file", c.UpstreamKeyFile, "upstream CA private key (PEM)")
	fs.StringVar(&c.UpstreamStepCAURL, "upstream-step-ca-url", c.UpstreamStepCAURL, "upstream step-ca (https://host:port) that signs the X.509 intermediates")
	fs.StringVar(&c.UpstreamStepCAFingerprint, "upstream-step-ca-fingerprint", c.UpstreamStepCAFingerprint, "hex SHA-256 of the upstream step-ca's root certificate")
	fs.StringVar(&c.UpstreamStepCAProvisioner, "upstream-step-ca-provisioner", c.UpstreamStepCAProvisioner, "the upstream step-ca's JWK provisioner")
	fs.StringVar(&c.UpstreamStepCAPasswordFile, "upstream-step-ca-password-file", c.UpstreamStepCAPasswordFile, "file with the password of the provisioner's key")
	fs.BoolVar(&c.Registrar, "registrar", c.Registrar, "keep the entries of psat-cluster's pods from its ClusterIdentity and ClusterStaticEntry resources")
	fs.StringVar(&c.RegistrarLeaseNamespace, "registrar-lease-namespace", c.RegistrarLeaseNamespace, "elect one registrar among replicas through a Lease in this namespace")
	fs.StringVar(&c.RegistrarLeaseName, "registrar-lease-name", c.RegistrarLeaseName, "name of the registrar's Lease")
	fs.StringVar(&c.BundleConfigMap, "bundle-configmap", c.BundleConfigMap, "namespace/name of a ConfigMap to keep the trust bundle in (PEM) for agents yet to start")
	fs.StringSliceVar(&c.AdminIDs, "admin-id", c.AdminIDs, "SPIFFE ID allowed to call the Admin API over mTLS (repeatable)")
	fs.StringVar(&c.PSATIssuer, "psat-issuer", c.PSATIssuer, "iss of psat-cluster's service-account tokens (required with more clusters)")
	fs.StringVar(&c.PSATCluster, "psat-cluster", c.PSATCluster, "enable k8s_psat agent attestation for this cluster name")
	fs.StringVar(&c.PSATKubeconfig, "psat-kubeconfig", c.PSATKubeconfig, "kubeconfig for TokenReview (default: in-cluster)")
	fs.StringVar(&c.PSATAudience, "psat-audience", c.PSATAudience, "audience of agents' projected service-account tokens")
	fs.StringSliceVar(&c.PSATServiceAccounts, "psat-service-account", c.PSATServiceAccounts, "agent service account allowed to attest, namespace:name (repeatable)")
	fs.StringSliceVar(&c.PSATNodeLabelKeys, "psat-node-label-key", c.PSATNodeLabelKeys, "node label key that becomes an agent_node_label selector (repeatable)")
	fs.Float32Var(&c.PSATKubeQPS, "psat-kube-qps", c.PSATKubeQPS, "requests per second the k8s_psat Kubernetes client may make (TokenReview, pod and node reads)")
	fs.IntVar(&c.PSATKubeBurst, "psat-kube-burst", c.PSATKubeBurst, "requests the k8s_psat Kubernetes client may make at once before psat-kube-qps applies")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "json or text")
}

// Validate checks the configuration as a whole.
func (c Config) Validate() error {
	if err := config.CheckTrustDomain(c.TrustDomain); err != nil {
		return err
	}
	for key, addr := range map[string]string{"bind_address": c.BindAddress, "http_address": c.HTTPAddress, "health_address": c.HealthAddress, "web_address": c.WebAddress} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("config: %s %q: %w", key, addr, err)
		}
	}
	if c.DataDir == "" || c.AdminSocket == "" {
		return errors.New("config: data_dir and admin_socket are required")
	}
	if c.CATTL <= 0 {
		return fmt.Errorf("config: ca_ttl must be positive, got %s", c.CATTL)
	}
	for _, k := range []struct {
		key string
		ttl time.Duration
	}{{"x509_svid_ttl", c.X509SVIDTTL}, {"jwt_svid_ttl", c.JWTSVIDTTL}, {"agent_svid_ttl", c.AgentSVIDTTL}} {
		switch {
		case k.ttl < 0:
			return fmt.Errorf("config: %s must not be negative, got %s", k.key, k.ttl)
		case k.ttl > c.CATTL/6:
			return fmt.Errorf("config: %s %s exceeds ca_ttl / 6 (%s): a CA key must outlive every SVID it signs, "+
				"and rotation activates the next key at 5/6 of ca_ttl", k.key, k.ttl, c.CATTL/6)
		}
	}
	if (c.WebCertFile == "") != (c.WebKeyFile == "") {
		return errors.New("config: web_cert_file and web_key_file go together")
	}
	if c.WebCertFile == "" && len(c.WebDNSNames) == 0 {
		return errors.New("config: web_dns_names is required without web_cert_file")
	}
	for _, n := range c.WebDNSNames {
		if net.ParseIP(n) == nil {
			if err := dnsname.Check(n); err != nil {
				return fmt.Errorf("config: web_dns_names: %q: %w", n, err)
			}
		}
	}
	if (c.UpstreamCertFile == "") != (c.UpstreamKeyFile == "") {
		return errors.New("config: upstream_cert_file and upstream_key_file go together")
	}
	if sc := c.stepCA(); sc != nil {
		if c.UpstreamCertFile != "" {
			return errors.New("config: an upstream step-ca (upstream_step_ca_*) or upstream files, not both")
		}
		if sc.URL == "" || sc.Fingerprint == "" || sc.Provisioner == "" || sc.PasswordFile == "" {
			return errors.New("config: upstream_step_ca_url, _fingerprint, _provisioner and _password_file go together")
		}
		if err := sc.Validate(); err != nil {
			return fmt.Errorf("config: upstream_step_ca: %w", err)
		}
	}
	for _, id := range c.AdminIDs {
		if _, err := spiffeid.FromString(id); err != nil {
			return fmt.Errorf("config: admin_ids: %q: %w", id, err)
		}
	}
	if c.PSATKubeQPS <= 0 {
		return fmt.Errorf("config: psat_kube_qps must be positive, got %v", c.PSATKubeQPS)
	}
	if c.PSATKubeBurst < 1 {
		return fmt.Errorf("config: psat_kube_burst must be at least 1, got %d", c.PSATKubeBurst)
	}
	if c.Registrar && c.PSATCluster == "" {
		return errors.New("config: registrar needs psat_cluster: its entries' parents are the k8s_psat agents of that cluster's nodes")
	}
	if c.BundleConfigMap != "" && c.PSATCluster == "" {
		return errors.New("config: bundle_configmap needs psat_cluster (its Kubernetes client)")
	}
	if c.RegistrarLeaseNamespace != "" && c.PSATCluster == "" {
		return errors.New("config: registrar_lease_namespace needs psat_cluster (its Kubernetes client)")
	}
	if errs := validation.IsDNS1123Subdomain(c.RegistrarLeaseName); c.RegistrarLeaseNamespace != "" && len(errs) > 0 {
		return fmt.Errorf("config: registrar_lease_name %q: %s", c.RegistrarLeaseName, strings.Join(errs, "; "))
	}
	if err := c.validateClusters(); err != nil {
		return err
	}
	if err := c.Exchange.Validate(spiffeid.RequireTrustDomainFromString(c.TrustDomain)); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return logging.Check(c.LogLevel, c.LogFormat)
}

// stepCA is the upstream step-ca the config names, or nil.
func (c Config) stepCA() *ca.StepCA {
	if c.UpstreamStepCAURL == "" && c.UpstreamStepCAFingerprint == "" && c.UpstreamStepCAProvisioner == "" && c.UpstreamStepCAPasswordFile == "" {
		return nil
	}
	return &ca.StepCA{URL: c.UpstreamStepCAURL, Fingerprint: c.UpstreamStepCAFingerprint,
		Provisioner: c.UpstreamStepCAProvisioner, PasswordFile: c.UpstreamStepCAPasswordFile}
}
