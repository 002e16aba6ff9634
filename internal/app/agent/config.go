package agentapp

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/agent"
	"github.com/tallyid/tally/attest/jointoken"
	k8sattest "github.com/tallyid/tally/attest/k8s"
	"github.com/tallyid/tally/attest/k8spsat"
	"github.com/tallyid/tally/internal/config"
	"github.com/tallyid/tally/internal/logging"
)

// Config is the agent configuration: a YAML file (unknown keys refused),
// every key also a flag of the same name with dashes.
type Config struct {
	// TrustDomain the agent belongs to. Required.
	TrustDomain string `yaml:"trust_domain"`
	// ServerAddress is the server's Node API, host:port. Required.
	ServerAddress string `yaml:"server_address"`
	// TrustBundle is a PEM file with the server's X.509 authorities, used to
	// authenticate the server before the agent has attested.
	TrustBundle string `yaml:"trust_bundle"`
	// InsecureBootstrap skips authenticating the server for the first
	// attestation only (logged loudly). Use TrustBundle instead.
	InsecureBootstrap bool `yaml:"insecure_bootstrap"`
	// NodeAttestor is how the agent proves who it is: join_token or
	// k8s_psat.
	NodeAttestor string `yaml:"node_attestor"`
	// JoinToken is the single-use token for the join_token attestor.
	// Prefer JoinTokenFile or $TALLY_JOIN_TOKEN: a command-line argument is
	// readable by every local user (ps) until the agent has used it.
	JoinToken string `yaml:"join_token"`
	// JoinTokenFile holds the join token (surrounding whitespace ignored),
	// read when the agent attests.
	JoinTokenFile string `yaml:"join_token_file"`
	// PSATTokenPath is the projected service-account token (audience
	// tally-server) for the k8s_psat attestor; re-read at every attestation.
	PSATTokenPath string `yaml:"psat_token_path"`
	// PodSource enables Kubernetes workload attestation and says where pods
	// come from: kubelet (its /pods over verified TLS) or apiserver (a watch
	// of this node's pods). Empty: unix attestation only.
	PodSource string `yaml:"pod_source"`
	// NodeName is this node's Kubernetes name (apiserver pod source).
	NodeName string `yaml:"node_name"`
	// KubeletURL, KubeletCAFile and KubeletTokenPath reach the kubelet.
	KubeletURL       string `yaml:"kubelet_url"`
	KubeletCAFile    string `yaml:"kubelet_ca_file"`
	KubeletTokenPath string `yaml:"kubelet_token_path"`
	// Kubeconfig for the apiserver pod source; empty: in-cluster.
	Kubeconfig string `yaml:"kubeconfig"`
	// SocketPath is the Workload API's Unix socket.
	SocketPath string `yaml:"socket_path"`
	// DataDir keeps the agent SVID, its key (0600) and the last bundle, so a
	// restart does not re-attest.
	DataDir string `yaml:"data_dir"`
	// HealthAddress serves /livez, /readyz and /metrics.
	HealthAddress string `yaml:"health_address"`
	// SVIDCacheSize bounds the SVIDs kept for entries no connected workload
	// uses (LRU). SVIDs of connected workloads are always kept.
	SVIDCacheSize int `yaml:"svid_cache_size"`
	// JWTCacheSize bounds the JWT-SVIDs kept, each until half its
	// lifetime (LRU); > 0.
	JWTCacheSize int `yaml:"jwt_cache_size"`
	// JWTMintRate (per second, > 0) and JWTMintBurst (> 0) bound, per
	// SPIFFE ID, how fast workloads can have the agent mint JWT-SVIDs it
	// does not have cached (fresh audiences); beyond it FetchJWTSVID is
	// ResourceExhausted. Cached JWT-SVIDs are always served.
	JWTMintRate  float64 `yaml:"jwt_mint_rate"`
	JWTMintBurst int     `yaml:"jwt_mint_burst"`
	// TaintJitter (> 0) bounds how soon an SVID (a workload's or the
	// agent's own) signed by a key the server reports tainted is renewed:
	// at a random time within it, or within a tenth of the SVID's
	// remaining life if that is shorter, so that a taint spreads the
	// node's renewals. The old SVID is served until the new one arrives.
	TaintJitter time.Duration `yaml:"taint_jitter"`
	// ReportInterval (> 0) is the least time between two reports to the
	// server of the SVIDs the agent serves (changes within it go in one);
	// ReportHeartbeat (>= ReportInterval) the longest silence, after which
	// a report with no change is sent.
	ReportInterval  time.Duration `yaml:"report_interval"`
	ReportHeartbeat time.Duration `yaml:"report_heartbeat"`
	// LogLevel is debug, info, warn or error; LogFormat is json or text.
	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`

	// Clock is the agent's time (renewals, expiry, retries). Default: the
	// real clock. Not a key: tests set it.
	Clock agent.Clock
	// Logger receives everything the agent logs. Default: discard.
	// tally-agent sets one from log_level and log_format.
	Logger *slog.Logger
}

// withDefaults fills the clock and the logger.
func (c Config) withDefaults() Config {
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
		NodeAttestor:     jointoken.Type,
		PSATTokenPath:    "/var/run/secrets/tokens/tally-agent",
		KubeletURL:       k8sattest.DefaultKubeletURL,
		KubeletCAFile:    k8sattest.DefaultCAFile,
		KubeletTokenPath: k8sattest.DefaultTokenPath,
		NodeName:         os.Getenv("NODE_NAME"),
		SocketPath:       "/run/tally/agent.sock",
		DataDir:          "./tally-agent-data",
		HealthAddress:    "127.0.0.1:8082",
		SVIDCacheSize:    1000,
		JWTCacheSize:     agent.DefaultJWTCacheSize,
		JWTMintRate:      agent.DefaultJWTMintRate,
		JWTMintBurst:     agent.DefaultJWTMintBurst,
		TaintJitter:      agent.DefaultTaintJitter,
		ReportInterval:   agent.DefaultReportInterval,
		ReportHeartbeat:  agent.DefaultReportHeartbeat,
		LogLevel:         "info",
		LogFormat:        "json",
	}
}

// BindFlags registers one flag per option, writing into c.
func BindFlags(fs *pflag.FlagSet, c *Config) {
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "trust domain name (required)")
	fs.StringVar(&c.ServerAddress, "server-address", c.ServerAddress, "server Node API address, host:port (required)")
	fs.StringVar(&c.TrustBundle, "trust-bundle", c.TrustBundle, "PEM file of the server's X.509 authorities")
	fs.BoolVar(&c.InsecureBootstrap, "insecure-bootstrap", c.InsecureBootstrap, "do not authenticate the server at first attestation (INSECURE)")
	fs.StringVar(&c.NodeAttestor, "node-attestor", c.NodeAttestor, "node attestor: join_token or k8s_psat")
	fs.StringVar(&c.JoinToken, "join-token", c.JoinToken, "join token for the join_token attestor (visible to local users in ps: prefer --join-token-file or $TALLY_JOIN_TOKEN)")
	fs.StringVar(&c.JoinTokenFile, "join-token-file", c.JoinTokenFile, "file holding the join token for the join_token attestor")
	fs.StringVar(&c.PSATTokenPath, "psat-token-path", c.PSATTokenPath, "projected service-account token for k8s_psat")
	fs.StringVar(&c.PodSource, "pod-source", c.PodSource, "Kubernetes workload attestation: kubelet or apiserver (empty: off)")
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "this node's Kubernetes name (default $NODE_NAME)")
	fs.StringVar(&c.KubeletURL, "kubelet-url", c.KubeletURL, "kubelet URL for the kubelet pod source")
	fs.StringVar(&c.KubeletCAFile, "kubelet-ca-file", c.KubeletCAFile, "CA that signs the kubelet's serving certificate")
	fs.StringVar(&c.KubeletTokenPath, "kubelet-token-path", c.KubeletTokenPath, "bearer token for the kubelet")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig for the apiserver pod source (default: in-cluster)")
	fs.StringVar(&c.SocketPath, "socket-path", c.SocketPath, "Workload API Unix socket")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the agent SVID, key and bundle")
	fs.StringVar(&c.HealthAddress, "health-address", c.HealthAddress, "HTTP address of /livez, /readyz, /metrics")
	fs.IntVar(&c.SVIDCacheSize, "svid-cache-size", c.SVIDCacheSize, "SVIDs kept for entries no connected workload uses (LRU)")
	fs.IntVar(&c.JWTCacheSize, "jwt-cache-size", c.JWTCacheSize, "JWT-SVIDs kept, each until half its lifetime (LRU)")
	fs.Float64Var(&c.JWTMintRate, "jwt-mint-rate", c.JWTMintRate, "fresh JWT-SVIDs (not cached) per second per SPIFFE ID; beyond it ResourceExhausted")
	fs.IntVar(&c.JWTMintBurst, "jwt-mint-burst", c.JWTMintBurst, "fresh JWT-SVIDs a SPIFFE ID may have minted at once, before jwt-mint-rate applies")
	fs.DurationVar(&c.TaintJitter, "taint-jitter", c.TaintJitter, "SVIDs signed by a tainted key are renewed at random within this (or a tenth of their remaining life, if shorter)")
	fs.DurationVar(&c.ReportInterval, "report-interval", c.ReportInterval, "least time between two reports of the served SVIDs to the server")
	fs.DurationVar(&c.ReportHeartbeat, "report-heartbeat", c.ReportHeartbeat, "longest time without a report to the server (one with no change is sent)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "json or text")
}

// Validate checks the configuration as a whole.
func (c Config) Validate() error {
	if err := config.CheckTrustDomain(c.TrustDomain); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.ServerAddress); err != nil {
		return fmt.Errorf("config: server_address %q: %w", c.ServerAddress, err)
	}
	if _, _, err := net.SplitHostPort(c.HealthAddress); err != nil {
		return fmt.Errorf("config: health_address %q: %w", c.HealthAddress, err)
	}
	if c.TrustBundle == "" && !c.InsecureBootstrap {
		return errors.New("config: trust_bundle is required (or insecure_bootstrap, which does not authenticate the server)")
	}
	if c.TrustBundle != "" && c.InsecureBootstrap {
		return errors.New("config: trust_bundle and insecure_bootstrap exclude each other")
	}
	if c.JoinToken != "" && c.JoinTokenFile != "" {
		return errors.New("config: join_token and join_token_file exclude each other")
	}
	switch c.NodeAttestor {
	case jointoken.Type:
	case k8spsat.Type:
		if c.PSATTokenPath == "" {
			return errors.New("config: psat_token_path is required with node_attestor k8s_psat")
		}
	default:
		return fmt.Errorf("config: node_attestor %q: want join_token or k8s_psat", c.NodeAttestor)
	}
	switch c.PodSource {
	case "":
	case k8sattest.SourceKubelet, k8sattest.SourceAPIServer:
		if c.NodeName == "" && c.PodSource == k8sattest.SourceAPIServer {
			return errors.New("config: node_name (or $NODE_NAME) is required with pod_source apiserver")
		}
	default:
		return fmt.Errorf("config: pod_source %q: want kubelet or apiserver", c.PodSource)
	}
	if c.SocketPath == "" || c.DataDir == "" {
		return errors.New("config: socket_path and data_dir are required")
	}
	if c.SVIDCacheSize < 0 {
		return fmt.Errorf("config: svid_cache_size must not be negative, got %d", c.SVIDCacheSize)
	}
	if c.JWTCacheSize <= 0 {
		return fmt.Errorf("config: jwt_cache_size must be positive, got %d", c.JWTCacheSize)
	}
	// !(x > 0) also refuses NaN.
	if !(c.JWTMintRate > 0) || math.IsInf(c.JWTMintRate, 0) {
		return fmt.Errorf("config: jwt_mint_rate must be a positive number of JWT-SVIDs per second, got %g", c.JWTMintRate)
	}
	if c.JWTMintBurst <= 0 {
		return fmt.Errorf("config: jwt_mint_burst must be positive, got %d", c.JWTMintBurst)
	}
	if c.TaintJitter <= 0 {
		return fmt.Errorf("config: taint_jitter must be positive, got %s", c.TaintJitter)
	}
	if c.ReportInterval <= 0 {
		return fmt.Errorf("config: report_interval must be positive, got %s", c.ReportInterval)
	}
	if c.ReportHeartbeat < c.ReportInterval {
		return fmt.Errorf("config: report_heartbeat (%s) must be at least report_interval (%s)", c.ReportHeartbeat, c.ReportInterval)
	}
	return logging.Check(c.LogLevel, c.LogFormat)
}
