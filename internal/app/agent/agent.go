// Package agentapp is the tally-agent binary: its config, and the wiring
// that builds the agent's components (agent.Session, agent.Cache, the
// workload attestors, the Workload API and health servers) and serves them.
package agentapp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/tallyid/tally/agent"
	"github.com/tallyid/tally/attest/jointoken"
	"github.com/tallyid/tally/attest/k8spsat"
	"github.com/tallyid/tally/internal/closer"
	"github.com/tallyid/tally/internal/health"
	"github.com/tallyid/tally/internal/httpserve"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/workloadapi"
)

// Agent is a tally-agent built from a Config.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	ready atomic.Bool
}

// New returns an agent for cfg, which it validates.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Agent{cfg: cfg, log: cfg.Logger}, nil
}

// components is everything Run serves, built by build.
type components struct {
	metrics      *prometheus.Registry
	session      *agent.Session
	cache        *agent.Cache
	reporter     *agent.Reporter
	token        *agent.TokenExpiry          // nil unless node_attestor is k8s_psat
	runAttestors func(context.Context) error // nil without a pod watch
	workload     *workloadapi.Server
	healthSrv    *http.Server
	healthLis    net.Listener
	closer.Stack // what build opened; Close releases it
}

// Run attests (unless a stored SVID is still valid), then follows entries,
// keeps the agent SVID, mints workload SVIDs and serves the Workload API
// until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	c, err := a.build(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return a.serve(ctx, c)
}

// build opens the session (attesting if needed) and builds the cache, the
// workload attestors and the servers; on failure it closes what it opened.
func (a *Agent) build(ctx context.Context) (_ *components, err error) {
	cfg := a.cfg
	c := &components{metrics: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	c.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := agent.NewMetrics(c.metrics)
	if c.session, err = agent.OpenSession(agent.SessionConfig{
		TrustDomain:       spiffeid.RequireTrustDomainFromString(cfg.TrustDomain),
		ServerAddress:     cfg.ServerAddress,
		DataDir:           cfg.DataDir,
		TrustBundle:       cfg.TrustBundle,
		InsecureBootstrap: cfg.InsecureBootstrap,
		Credential:        credential(cfg),
		Metrics:           metrics,
		TaintJitter:       cfg.TaintJitter,
		Clock:             cfg.Clock,
		Logger:            a.log,
	}); err != nil {
		return nil, err
	}
	c.Add(func() error { c.session.Close(); return nil })
	c.cache = agent.NewCache(agent.CacheConfig{
		Minter:       c.session.Minter(),
		Clock:        cfg.Clock,
		Logger:       a.log.With(logkey.Component, "cache"),
		Metrics:      metrics,
		MaxUnused:    cfg.SVIDCacheSize,
		JWTCacheSize: cfg.JWTCacheSize,
		JWTMintRate:  cfg.JWTMintRate,
		JWTMintBurst: cfg.JWTMintBurst,
		TaintJitter:  cfg.TaintJitter,
	})
	tokenNotAfter := func() time.Time { return time.Time{} }
	if cfg.NodeAttestor == k8spsat.Type {
		c.token = agent.NewTokenExpiry(agent.TokenExpiryConfig{
			Path: cfg.PSATTokenPath, Metrics: metrics, Clock: cfg.Clock, Logger: a.log.With(logkey.Component, "token"),
		})
		tokenNotAfter = c.token.NotAfter
	}
	c.reporter = agent.NewReporter(agent.ReporterConfig{
		Session:       c.session,
		Cache:         c.cache,
		TokenNotAfter: tokenNotAfter,
		Interval:      cfg.ReportInterval,
		Heartbeat:     cfg.ReportHeartbeat,
		Metrics:       metrics,
		Clock:         cfg.Clock,
		Logger:        a.log.With(logkey.Component, "report"),
	})
	if err := c.session.Start(ctx); err != nil {
		return nil, err
	}
	attestors, runAttestors, err := newWorkloadAttestors(cfg, a.log)
	if err != nil {
		return nil, err
	}
	c.runAttestors = runAttestors
	if c.workload, err = workloadapi.New(workloadapi.Config{
		Source:    c.cache,
		Attestor:  attestors,
		Logger:    a.log.With(logkey.Component, "workload-api"),
		Metrics:   workloadapi.NewMetrics(c.metrics),
		Exchanger: agent.NewExchanger(c.cache, c.session), // tallyv1.TokenExchange on the same socket
	}); err != nil {
		return nil, err
	}
	if c.healthLis, err = net.Listen("tcp", cfg.HealthAddress); err != nil {
		return nil, fmt.Errorf("agent: health_address: %w", err)
	}
	c.Add(c.healthLis.Close)
	c.healthSrv = &http.Server{
		Handler: health.NewHandler(health.Config{
			Ready:    func() bool { return a.ready.Load() && c.cache.Synced() },
			Degraded: func() []string { return a.degraded(c) },
			Metrics:  c.metrics,
		}),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, MaxHeaderBytes: 16 << 10}
	return c, nil
}

// degraded is /healthz's detail. The agent is degraded when its SVID has
// expired (it could not renew it: a node suspended for longer than its
// life, a server away) and it cannot attest again either: its projected
// service-account token expired too, or cannot be read (k8s_psat; the
// kubelet rewrites it, after a resume, soon or not at all), or it attests
// with a join token, which works once. It still serves the workload SVIDs
// it has, so /readyz does not change; the gauges
// tally_agent_svid_expiry_timestamp_seconds and
// tally_agent_token_expiry_timestamp_seconds show the deadline coming
// before it is reached.
func (a *Agent) degraded(c *components) []string {
	now := a.cfg.Clock.Now()
	svid := c.session.SVIDNotAfter()
	if svid.IsZero() || now.Before(svid) {
		return nil
	}
	expired := "agent SVID expired at " + svid.UTC().Format(time.RFC3339)
	if c.token == nil {
		return []string{expired + "; a join token attests only once: the agent needs a new one"}
	}
	switch token := c.token.NotAfter(); {
	case token.IsZero():
		return []string{expired + " and the projected service-account token's expiry is unknown (unreadable?): the agent may not be able to attest again"}
	case !now.Before(token):
		return []string{expired + " and the projected service-account token expired at " + token.UTC().Format(time.RFC3339) + ": the agent cannot attest again until the kubelet refreshes it"}
	}
	return nil
}

// serve runs every component until ctx is done or one fails.
func (a *Agent) serve(ctx context.Context, c *components) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.session.Run(ctx, c.cache) })
	g.Go(func() error { return c.cache.Run(ctx) })
	g.Go(func() error { return c.reporter.Run(ctx) })
	if c.token != nil {
		g.Go(func() error { return c.token.Run(ctx) })
	}
	if c.runAttestors != nil {
		g.Go(func() error { return c.runAttestors(ctx) })
	}
	g.Go(func() error { return c.workload.Serve(ctx, a.cfg.SocketPath) })
	g.Go(func() error { return httpserve.Serve(ctx, c.healthSrv, c.healthLis, false) })
	a.ready.Store(true)
	a.log.Info("tally agent running", logkey.SPIFFEID, c.session.AgentID(), logkey.Socket, a.cfg.SocketPath, "server_address", a.cfg.ServerAddress)
	err := g.Wait()
	a.ready.Store(false)
	return err
}

// credential is how the agent attests, by node_attestor.
func credential(cfg Config) agent.Credential {
	if cfg.NodeAttestor == k8spsat.Type {
		return k8spsat.Client{TokenPath: cfg.PSATTokenPath}
	}
	return jointoken.Client{Token: cfg.JoinToken, TokenFile: cfg.JoinTokenFile}
}
