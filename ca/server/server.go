package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/attest/jointoken"
	"github.com/tallyid/tally/attest/k8spsat"
	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/api"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
	"github.com/tallyid/tally/internal/health"
	"github.com/tallyid/tally/internal/httpserve"
	"github.com/tallyid/tally/internal/peercred"
	"github.com/tallyid/tally/internal/reserved"
	"github.com/tallyid/tally/internal/unixsock"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Server is a running Tally server.
type Server struct {
	cfg   Config
	td    spiffeid.TrustDomain
	log   *slog.Logger
	clock clock.WithTicker
	ready atomic.Bool
	// Ready is closed once every listener serves. For tests and run scripts.
	readyCh chan struct{}
}

// New returns a server for a validated config.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.X509SVIDTTL == 0 {
		cfg.X509SVIDTTL = min(time.Hour, cfg.CATTL/6)
	}
	if cfg.JWTSVIDTTL == 0 {
		cfg.JWTSVIDTTL = min(5*time.Minute, cfg.CATTL/6)
	}
	if cfg.AgentSVIDTTL == 0 {
		cfg.AgentSVIDTTL = cfg.X509SVIDTTL
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	if cfg.JWTIssuer == "" {
		cfg.JWTIssuer = "https://" + cfg.HTTPAddress
	}
	return &Server{cfg: cfg, td: td, log: log, clock: clock.RealClock{}, readyCh: make(chan struct{})}, nil
}

// Ready is closed when the server serves on every address.
func (s *Server) Ready() <-chan struct{} { return s.readyCh }

// Run starts everything and serves until ctx is done or a component fails.
func (s *Server) Run(ctx context.Context) error {
	cfg := s.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("server: data dir: %w", err)
	}
	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(cfg.DataDir, "store"), Logger: s.log})
	if err != nil {
		return err
	}
	defer st.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	authority, err := ca.New(ctx, ca.Config{
		TrustDomain:      s.td,
		KeyDir:           filepath.Join(cfg.DataDir, "keys"),
		Journal:          st,
		CATTL:            cfg.CATTL,
		X509SVIDTTL:      cfg.X509SVIDTTL,
		JWTSVIDTTL:       cfg.JWTSVIDTTL,
		UpstreamCertFile: cfg.UpstreamCertFile,
		UpstreamKeyFile:  cfg.UpstreamKeyFile,
		Clock:            s.clock,
		Logger:           s.log.With("component", "ca"),
	})
	if err != nil {
		return err
	}
	entries := registry.New(registry.Config{
		TrustDomain: s.td,
		Store:       st,
		Limits:      registry.Limits{MaxTTL: cfg.CATTL / 6},
		Logger:      s.log.With("component", "registry"),
	})
	if err := entries.Load(ctx); err != nil {
		return err
	}
	registerGauges(reg, entries, st, authority, upstreamCollector{a: authority, clock: s.clock, slotTTL: cfg.CATTL})
	metrics := api.NewMetrics(reg)

	svid := newServerSVID(reserved.ServerID(s.td), authority, s.clock, s.log.With("component", "server-svid"))
	if err := svid.renew(ctx); err != nil {
		return err
	}
	tokens := joinTokens{st: st, clock: s.clock}
	attestors := map[string]attest.NodeAttestor{jointoken.Type: jointoken.New(s.td, tokens)}
	if cfg.PSATCluster != "" {
		psat, err := psatAttestor(cfg, s.td, s.log.With("component", "k8spsat"))
		if err != nil {
			return err
		}
		attestors[k8spsat.Type] = psat
	}
	node := api.NewNode(api.NodeConfig{
		TrustDomain:  s.td,
		Authority:    authority,
		Entries:      entries,
		Agents:       st,
		Attestors:    attestors,
		AgentSVIDTTL: cfg.AgentSVIDTTL,
		JWTIssuer:    cfg.JWTIssuer,
		Metrics:      metrics,
		Logger:       s.log.With("component", "node-api"),
	})
	admin := api.NewAdmin(api.AdminConfig{
		TrustDomain: s.td,
		Authority:   authority,
		Registry:    entries,
		Store:       st,
		TokenKey:    jointoken.TokenID,
		AdminIDs:    cfg.AdminIDs,
		JWTIssuer:   cfg.JWTIssuer,
		Metrics:     metrics,
		Logger:      s.log.With("component", "admin-api"),
	})

	// Node API (and Admin API for admin SVIDs) over TLS: connections with a
	// verified client SVID and connections without one (attestation) are
	// served by two gRPC servers with their own limits (nodelisten.go).
	keepaliveOK := grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true})
	tlsGRPC := grpc.NewServer(
		grpc.Creds(handshakenTLS{}),
		grpc.UnaryInterceptor(admin.AdminTLSInterceptor),
		grpc.MaxRecvMsgSize(agentMaxMsg),
		keepaliveOK,
	)
	bootGRPC := grpc.NewServer(
		grpc.Creds(handshakenTLS{}),
		grpc.UnaryInterceptor(admin.AdminTLSInterceptor),
		grpc.MaxRecvMsgSize(bootstrapMaxMsg),
		grpc.MaxConcurrentStreams(bootstrapStreams),
		grpc.InitialWindowSize(bootstrapMaxMsg),
		grpc.InitialConnWindowSize(bootstrapMaxMsg),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: bootstrapIdle, MaxConnectionAge: bootstrapAge, MaxConnectionAgeGrace: 10 * time.Second}),
		keepaliveOK,
	)
	for _, gs := range []*grpc.Server{tlsGRPC, bootGRPC} {
		tallyv1.RegisterNodeServer(gs, node)
		tallyv1.RegisterAdminServer(gs, admin)
	}
	nodeTCP, err := net.Listen("tcp", cfg.BindAddress)
	if err != nil {
		return fmt.Errorf("server: bind_address: %w", err)
	}
	nodeLis := newNodeListener(nodeTCP, &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: svid.GetCertificate,
		// Client SVIDs are verified per call against the current bundle;
		// AttestAgent is called without one.
		ClientAuth: tls.RequestClientCert,
	}, authority.Bundle, s.log.With("component", "node-api"))

	// Admin API on the Unix socket: the file mode is the authorisation.
	unixGRPC := grpc.NewServer(grpc.Creds(peercred.Credentials()), grpc.MaxRecvMsgSize(64<<20))
	tallyv1.RegisterAdminServer(unixGRPC, admin)
	adminLis, err := unixsock.Listen(cfg.AdminSocket, 0o600)
	if err != nil {
		nodeTCP.Close()
		return fmt.Errorf("server: admin_socket: %w", err)
	}

	httpsLis, err := net.Listen("tcp", cfg.HTTPAddress)
	if err != nil {
		nodeTCP.Close()
		adminLis.Close()
		return fmt.Errorf("server: http_address: %w", err)
	}
	https := &http.Server{
		Handler:           publicHandler(authority, cfg.JWTIssuer, s.log),
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: svid.GetCertificate},
		ReadHeaderTimeout: 10 * time.Second,
		// Only GETs of a bundle or discovery document: no request needs
		// more than a few KiB of headers or a long connection.
		ReadTimeout:    30 * time.Second,
		WriteTimeout:   30 * time.Second,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	healthLis, err := net.Listen("tcp", cfg.HealthAddress)
	if err != nil {
		nodeTCP.Close()
		adminLis.Close()
		httpsLis.Close()
		return fmt.Errorf("server: health_address: %w", err)
	}
	healthSrv := &http.Server{Handler: health.Handler(s.ready.Load, reg), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return authority.Run(ctx) })
	g.Go(func() error { return entries.Run(ctx) })
	g.Go(func() error { return st.Run(ctx) })
	g.Go(func() error { return svid.Run(ctx) })
	g.Go(func() error { return housekeeping(ctx, st, s.clock, s.log) })
	g.Go(func() error { return nodeLis.Run(ctx) })
	g.Go(func() error { return serveGRPC(ctx, tlsGRPC, nodeLis.authed, node.EndStreams, s.log) })
	g.Go(func() error { return serveGRPC(ctx, bootGRPC, nodeLis.bootstrap, nil, s.log) })
	g.Go(func() error { return serveGRPC(ctx, unixGRPC, adminLis, nil, s.log) })
	g.Go(func() error { return httpserve.Serve(ctx, https, httpsLis, true) })
	g.Go(func() error { return httpserve.Serve(ctx, healthSrv, healthLis, false) })
	s.ready.Store(true)
	close(s.readyCh)
	s.log.Info("tally server ready", "trust_domain", s.td.Name(), "bind_address", nodeTCP.Addr().String(),
		"http_address", httpsLis.Addr().String(), "health_address", healthLis.Addr().String(), "admin_socket", cfg.AdminSocket,
		"entries", entries.Count())
	err = g.Wait()
	s.ready.Store(false)
	return err
}

// serveGRPC serves srv on lis until ctx is done, then stops it gracefully:
// endStreams (if not nil) first ends the streams that would never end by
// themselves, then calls in flight get stopGrace to finish before their
// connections are closed. It returns once srv has stopped.
func serveGRPC(ctx context.Context, srv *grpc.Server, lis net.Listener, endStreams func(), log *slog.Logger) error {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		if ctx.Err() == nil {
			srv.Stop()
			return fmt.Errorf("server: serve %s: %w", lis.Addr(), err)
		}
		served <- err // the listener's owner closed it for the same shutdown
	case <-ctx.Done():
	}
	if endStreams != nil {
		endStreams()
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		log.Warn("graceful stop timed out; closing connections", "grace", stopGrace)
		srv.Stop()
		<-stopped
	}
	<-served // ends with ErrServerStopped, or with the listener its owner closed
	return nil
}

// stopGrace is how long calls in flight may take to finish at shutdown.
const stopGrace = 5 * time.Second

// housekeeping prunes expired join tokens and old events every minute.
func housekeeping(ctx context.Context, st store.Store, clk clock.WithTicker, log *slog.Logger) error {
	const keepEvents = 1_000_000
	t := clk.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
		if n, err := st.PruneJoinTokens(ctx, clk.Now()); err != nil {
			log.Warn("pruning join tokens", "error", err)
		} else if n > 0 {
			log.Info("pruned expired join tokens", "count", n)
		}
		if rev, err := st.Revision(ctx); err == nil && rev > keepEvents {
			if err := st.PruneEvents(ctx, rev-keepEvents); err != nil {
				log.Warn("pruning events", "error", err)
			}
		}
	}
}

// joinTokens adapts the store to the join-token attestor. Tokens are
// stored under their public ID, never as the secret.
type joinTokens struct {
	st    store.Store
	clock clock.PassiveClock
}

func (j joinTokens) ConsumeJoinToken(ctx context.Context, token string) (string, error) {
	t, err := j.st.ConsumeJoinToken(ctx, jointoken.TokenID(token), j.clock.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return "", jointoken.ErrUnknown
	case errors.Is(err, store.ErrExpired):
		return "", jointoken.ErrExpired
	case err != nil:
		return "", err
	}
	return t.Alias, nil
}

func registerGauges(reg *prometheus.Registry, entries *registry.Registry, st store.Store, a *ca.Authority, upstream upstreamCollector) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tally_server_entries", Help: "Registration entries.",
	}, func() float64 { return float64(entries.Count()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tally_server_agents", Help: "Attested agents.",
	}, func() float64 {
		agents, err := st.ListAgents(context.Background())
		if err != nil {
			return -1
		}
		return float64(len(agents))
	}))
	reg.MustRegister(slotCollector{a: a, desc: prometheus.NewDesc("tally_server_ca_slot_expiry_timestamp_seconds",
		"Expiry of each CA key slot, by kind (x509, jwt) and status (prepared, active, old).", []string{"kind", "status", "id"}, nil)})
	reg.MustRegister(upstream)
}

var (
	upstreamExpiryDesc = prometheus.NewDesc("tally_server_ca_upstream_expiry_timestamp_seconds",
		"Expiry of the first certificate of the upstream CA chain to expire (the upstream root, usually), as last read; absent without an upstream CA.", nil, nil)
	upstreamExpiringDesc = prometheus.NewDesc("tally_server_ca_upstream_expiring",
		"1 if the upstream CA chain expires within one CA slot lifetime (ca_ttl), so that X.509 slots are cut short to end with it; 0 otherwise; absent without an upstream CA.", nil, nil)
)

// upstreamCollector reports when the upstream chain ends: every X.509 slot,
// and so every SVID, ends with it at the latest.
type upstreamCollector struct {
	a       *ca.Authority
	clock   clock.PassiveClock
	slotTTL time.Duration
}

func (upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- upstreamExpiryDesc
	ch <- upstreamExpiringDesc
}

func (c upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	end := c.a.UpstreamNotAfter()
	if end.IsZero() {
		return
	}
	expiring := 0.0
	if end.Sub(c.clock.Now()) < c.slotTTL {
		expiring = 1
	}
	ch <- prometheus.MustNewConstMetric(upstreamExpiryDesc, prometheus.GaugeValue, float64(end.Unix()))
	ch <- prometheus.MustNewConstMetric(upstreamExpiringDesc, prometheus.GaugeValue, expiring)
}

type slotCollector struct {
	a    *ca.Authority
	desc *prometheus.Desc
}

func (c slotCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c slotCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.a.Slots() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(s.NotAfter.Unix()), string(s.Kind), string(s.Status), s.ID)
	}
}
