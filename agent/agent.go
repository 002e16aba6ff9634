package agent

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
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/attest/jointoken"
	"github.com/tallyid/tally/attest/k8spsat"
	"github.com/tallyid/tally/internal/backoff"
	"github.com/tallyid/tally/internal/health"
	"github.com/tallyid/tally/internal/httpserve"
	"github.com/tallyid/tally/internal/reserved"
	"github.com/tallyid/tally/workloadapi"
)

// Agent is a running tally-agent.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	clock    clock.WithTicker
	td       spiffeid.TrustDomain
	serverID spiffeid.ID
	attestor NodeAttestor
	id       *identity
	conn     *serverConn
	cache    *Cache
	metrics  *Metrics
	reg      *prometheus.Registry
	ready    atomic.Bool
}

// New returns an agent for a validated config.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a := &Agent{
		cfg:      cfg,
		log:      log,
		clock:    clock.RealClock{},
		td:       td,
		serverID: reserved.ServerID(td),
		attestor: nodeAttestor(cfg),
		metrics:  NewMetrics(reg),
		reg:      reg,
	}
	return a, nil
}

func nodeAttestor(cfg Config) NodeAttestor {
	if cfg.NodeAttestor == k8spsat.Type {
		return k8spsat.Client{TokenPath: cfg.PSATTokenPath}
	}
	return jointoken.Client{Token: cfg.JoinToken, TokenFile: cfg.JoinTokenFile}
}

// Run attests (unless a stored SVID is still valid), then follows entries,
// keeps the agent SVID, mints workload SVIDs and serves the Workload API
// until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	id, err := loadIdentity(a.cfg.DataDir, a.td)
	if err != nil {
		return err
	}
	a.id = id
	if _, b := id.current(); b == nil && a.cfg.TrustBundle != "" {
		b, err := readBundlePEM(a.td, a.cfg.TrustBundle)
		if err != nil {
			return err
		}
		a.id.mu.Lock()
		a.id.bundle = b
		a.id.mu.Unlock()
	}
	a.conn = newServerConn(a.cfg.ServerAddress, a.serverID, a.id)
	defer a.conn.Close()
	a.cache = NewCache(CacheConfig{
		Minter:       a.conn,
		Clock:        a.clock,
		Logger:       a.log.With("component", "cache"),
		Metrics:      a.metrics,
		MaxUnused:    a.cfg.SVIDCacheSize,
		JWTCacheSize: a.cfg.JWTCacheSize,
		JWTMintRate:  a.cfg.JWTMintRate,
		JWTMintBurst: a.cfg.JWTMintBurst,
	})

	if err := a.startIdentity(ctx); err != nil {
		return err
	}

	attestors, runAttestors, err := a.newWorkloadAttestors()
	if err != nil {
		return err
	}
	ws, err := workloadapi.New(workloadapi.Config{
		Source:   a.cache,
		Attestor: attestors,
		Logger:   a.log.With("component", "workload-api"),
		Metrics:  workloadapi.NewMetrics(a.reg),
	})
	if err != nil {
		return err
	}
	healthLis, err := net.Listen("tcp", a.cfg.HealthAddress)
	if err != nil {
		return fmt.Errorf("agent: health_address: %w", err)
	}
	healthSrv := &http.Server{Handler: health.Handler(a.isReady, a.reg), ReadHeaderTimeout: 10 * time.Second}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.keepIdentity(ctx) })
	g.Go(func() error { return a.followEntries(ctx) })
	g.Go(func() error { return a.cache.Run(ctx) })
	if runAttestors != nil {
		g.Go(func() error { return runAttestors(ctx) })
	}
	g.Go(func() error { return ws.Serve(ctx, a.cfg.SocketPath) })
	g.Go(func() error { return httpserve.Serve(ctx, healthSrv, healthLis, false) })
	a.ready.Store(true)
	a.log.Info("tally agent running", "spiffe_id", a.agentID(), "socket_path", a.cfg.SocketPath, "server_address", a.cfg.ServerAddress)
	return g.Wait()
}

// startIdentity reuses a stored, unexpired agent SVID, or attests until it
// succeeds or ctx ends.
func (a *Agent) startIdentity(ctx context.Context) error {
	if svid, _ := a.id.current(); svid != nil && a.clock.Now().Before(svid.Certificates[0].NotAfter) {
		a.log.Info("reusing the stored agent SVID; not attesting", "spiffe_id", svid.ID.String(), "expires_at", svid.Certificates[0].NotAfter)
		return a.conn.reconnect()
	}
	bo := backoff.New(time.Second, 30*time.Second)
	for {
		err := a.attest(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := bo.Next()
		a.log.Error("attestation failed", "error", err, "retry_in", d)
		if a.sleep(ctx, d) != nil {
			return ctx.Err()
		}
	}
}

func (a *Agent) agentID() string {
	if svid, _ := a.id.current(); svid != nil {
		return svid.ID.String()
	}
	return ""
}

// isReady: running, and the entries are in sync with the server.
func (a *Agent) isReady() bool { return a.ready.Load() && a.cache.Synced() }
