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
	c.healthSrv = &http.Server{Handler: health.Handler(func() bool { return a.ready.Load() && c.cache.Synced() }, c.metrics),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, MaxHeaderBytes: 16 << 10}
	return c, nil
}

// serve runs every component until ctx is done or one fails.
func (a *Agent) serve(ctx context.Context, c *components) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.session.Run(ctx, c.cache) })
	g.Go(func() error { return c.cache.Run(ctx) })
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
