package serverapp

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
	"github.com/tallyid/tally/ca/dashboard"
	"github.com/tallyid/tally/ca/exchange"
	"github.com/tallyid/tally/ca/fleet"
	"github.com/tallyid/tally/ca/records"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
	"github.com/tallyid/tally/internal/closer"
	"github.com/tallyid/tally/internal/health"
	"github.com/tallyid/tally/internal/httpserve"
	"github.com/tallyid/tally/internal/logkey"
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
}

// New returns a server for a validated config.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Server{cfg: cfg, td: spiffeid.RequireTrustDomainFromString(cfg.TrustDomain), log: cfg.Logger, clock: cfg.Clock}, nil
}

// components is everything Run serves, built by build.
type components struct {
	store     *badgerstore.Store
	authority *ca.Authority
	registry  *registry.Registry
	svid      *serverSVID
	node      *api.Node
	admin     *api.Admin
	exchange  *exchange.Service
	kube      *kubeSide // the clusters' attestor, registrars and bundle publishers
	metrics   *prometheus.Registry
	records   *records.Recorder
	fleet     *fleet.Fleet
	rotations *records.Rotations
	dashboard *dashboard.Handler
	webCA     string // the local serving CA's certificate file; empty with web_cert_file

	nodeLis            *nodeListener
	tlsGRPC, bootGRPC  *grpc.Server
	unixGRPC           *grpc.Server
	adminLis           net.Listener
	https, healthSrv   *http.Server
	httpsLis, healthLn net.Listener
	web                *http.Server
	webLis             net.Listener

	closer.Stack // what build opened; Close releases it
}

// Run builds the server's components, serves until ctx is done or one of
// them fails, and closes everything it opened.
func (s *Server) Run(ctx context.Context) error {
	c, err := s.build(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return s.serve(ctx, c)
}

// build opens the store, the authority, the registry and the APIs, and
// listens on every address; on any failure it closes what it opened.
func (s *Server) build(ctx context.Context) (_ *components, err error) {
	c := &components{}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := s.buildCore(ctx, c); err != nil {
		return nil, err
	}
	if err := s.buildAPIs(c); err != nil {
		return nil, err
	}
	if err := s.listen(c); err != nil {
		return nil, err
	}
	return c, nil
}

// buildCore opens the store and builds the authority, the registry, the
// server's own SVID and the metrics.
func (s *Server) buildCore(ctx context.Context, c *components) error {
	cfg := s.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("server: data dir: %w", err)
	}
	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(cfg.DataDir, "store"), Logger: s.log})
	if err != nil {
		return err
	}
	c.store = st
	c.Add(st.Close)
	c.metrics = prometheus.NewRegistry()
	c.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c.authority, err = ca.New(ctx, ca.Config{
		TrustDomain:      s.td,
		KeyDir:           filepath.Join(cfg.DataDir, "keys"),
		Journal:          st,
		CATTL:            cfg.CATTL,
		X509SVIDTTL:      cfg.X509SVIDTTL,
		JWTSVIDTTL:       cfg.JWTSVIDTTL,
		UpstreamCertFile: cfg.UpstreamCertFile,
		UpstreamKeyFile:  cfg.UpstreamKeyFile,
		StepCA:           cfg.stepCA(),
		Clock:            s.clock,
		Logger:           s.log.With(logkey.Component, "ca"),
	})
	if err != nil {
		return err
	}
	c.registry = registry.New(registry.Config{
		TrustDomain: s.td,
		Store:       st,
		Limits:      registry.Limits{MaxTTL: cfg.CATTL / 6},
		Logger:      s.log.With(logkey.Component, "registry"),
	})
	if err := c.registry.Load(ctx); err != nil {
		return err
	}
	registerGauges(c.metrics, c.registry, st, c.authority, upstreamCollector{a: c.authority, clock: s.clock, slotTTL: cfg.CATTL})
	c.records = records.New(records.Config{Clock: s.clock})
	c.rotations = records.NewRotations(records.RotationsConfig{Authority: c.authority, Recorder: c.records, Clock: s.clock})
	c.fleet = fleet.New(fleet.Config{TrustDomain: s.td, Slots: c.authority, Agents: st, Entries: c.registry,
		IssuanceFailures: c.records.IssuanceFailures, Clock: s.clock, Logger: s.log.With(logkey.Component, "fleet")})
	c.metrics.MustRegister(c.fleet.Collector())
	c.svid = newServerSVID(reserved.ServerID(s.td), c.authority, s.clock, s.log.With(logkey.Component, "server-svid"))
	return c.svid.renew(ctx)
}

// buildAPIs builds the node attestors and the Node and Admin services.
func (s *Server) buildAPIs(c *components) error {
	cfg := s.cfg
	attestors := map[string]attest.NodeAttestor{jointoken.Type: jointoken.New(s.td, joinTokens{st: c.store, clock: s.clock})}
	var err error
	c.exchange, err = exchange.New(exchange.Config{
		TrustDomain: s.td,
		Issuer:      cfg.JWTIssuer,
		Signer:      c.authority,
		Policy:      cfg.Exchange,
		MaxTTL:      cfg.JWTSVIDTTL,
		Metrics:     c.metrics,
		Clock:       s.clock,
		Logger:      s.log.With(logkey.Component, "exchange"),
	})
	if err != nil {
		return err
	}
	c.kube, err = buildKube(cfg, s.td, kubeDeps{entries: c.registry, policies: c.exchange, bundle: c.authority, metrics: c.metrics}, s.log)
	if err != nil {
		return err
	}
	if c.kube.attestor != nil {
		attestors[k8spsat.Type] = c.kube.attestor
	}
	metrics := api.NewMetrics(c.metrics)
	c.node = api.NewNode(api.NodeConfig{
		TrustDomain:  s.td,
		Authority:    c.authority,
		Entries:      c.registry,
		Agents:       c.store,
		Attestors:    attestors,
		AgentSVIDTTL: cfg.AgentSVIDTTL,
		JWTIssuer:    cfg.JWTIssuer,
		Exchanger:    c.exchange,
		Tainted:      c.authority.TaintedX509IDs,
		Records:      c.records,
		Fleet:        c.fleet,
		Metrics:      metrics,
		Clock:        s.clock,
		Logger:       s.log.With(logkey.Component, "node-api"),
	})
	c.admin = api.NewAdmin(api.AdminConfig{
		TrustDomain:     s.td,
		Authority:       c.authority,
		Registry:        c.registry,
		Store:           c.store,
		TokenKey:        jointoken.TokenID,
		AdminIDs:        cfg.AdminIDs,
		JWTIssuer:       cfg.JWTIssuer,
		Rotation:        c.authority,
		Records:         c.records,
		DashboardTokens: s.dashboardTokens(c),
		Metrics:         metrics,
		Clock:           s.clock,
		Logger:          s.log.With(logkey.Component, "admin-api"),
	})
	return nil
}

// listen opens every address and builds the servers on them. The Node API
// (and the Admin API for admin SVIDs) on bind_address is served by two gRPC
// servers: connections with a verified client SVID, and connections without
// one (attestation), each with its own limits (nodelisten.go).
func (s *Server) listen(c *components) error {
	cfg := s.cfg
	keepaliveOK := grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true})
	c.tlsGRPC = grpc.NewServer(grpc.Creds(handshakenTLS{}), grpc.UnaryInterceptor(c.admin.AdminTLSInterceptor),
		grpc.MaxRecvMsgSize(agentMaxMsg), keepaliveOK)
	c.bootGRPC = grpc.NewServer(grpc.Creds(handshakenTLS{}), grpc.UnaryInterceptor(c.admin.AdminTLSInterceptor),
		grpc.MaxRecvMsgSize(bootstrapMaxMsg), grpc.MaxConcurrentStreams(bootstrapStreams),
		grpc.InitialWindowSize(bootstrapMaxMsg), grpc.InitialConnWindowSize(bootstrapMaxMsg),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: bootstrapIdle, MaxConnectionAge: bootstrapAge, MaxConnectionAgeGrace: 10 * time.Second}),
		keepaliveOK)
	for _, gs := range []*grpc.Server{c.tlsGRPC, c.bootGRPC} {
		tallyv1.RegisterNodeServer(gs, c.node)
		tallyv1.RegisterAdminServer(gs, c.admin)
	}
	nodeTCP, err := net.Listen("tcp", cfg.BindAddress)
	if err != nil {
		return fmt.Errorf("server: bind_address: %w", err)
	}
	c.Add(nodeTCP.Close)
	c.nodeLis = newNodeListener(nodeTCP, &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.svid.GetCertificate,
		// Client SVIDs are verified per call against the current bundle;
		// AttestAgent is called without one.
		ClientAuth: tls.RequestClientCert,
	}, c.authority.Bundle, s.log.With(logkey.Component, "node-api"))

	// Admin API on the Unix socket: the file mode is the authorisation.
	c.unixGRPC = grpc.NewServer(grpc.Creds(peercred.Credentials()), grpc.MaxRecvMsgSize(64<<20))
	tallyv1.RegisterAdminServer(c.unixGRPC, c.admin)
	if c.adminLis, err = unixsock.Listen(cfg.AdminSocket, 0o600); err != nil {
		return fmt.Errorf("server: admin_socket: %w", err)
	}
	c.Add(c.adminLis.Close)
	if c.httpsLis, err = net.Listen("tcp", cfg.HTTPAddress); err != nil {
		return fmt.Errorf("server: http_address: %w", err)
	}
	c.Add(c.httpsLis.Close)
	mux := http.NewServeMux()
	mux.Handle("/oauth2/", c.exchange.Handler())
	mux.Handle("/", publicHandler(c.authority, cfg.JWTIssuer, s.log))
	c.https = &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.svid.GetCertificate,
			// The token endpoint authenticates callers by their X509-SVID,
			// verified there against the current bundle; the bundle and
			// discovery documents need no client certificate.
			ClientAuth: tls.RequestClientCert},
		ConnContext:       exchange.ConnContext,
		ReadHeaderTimeout: 10 * time.Second,
		// GETs of a bundle or discovery document and token requests of at
		// most 64 KiB: no request needs more than a few KiB of headers or
		// a long read.
		ReadTimeout:    30 * time.Second,
		WriteTimeout:   30 * time.Second,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if err := s.listenWeb(c); err != nil {
		return err
	}
	if c.healthLn, err = net.Listen("tcp", cfg.HealthAddress); err != nil {
		return fmt.Errorf("server: health_address: %w", err)
	}
	c.Add(c.healthLn.Close)
	c.healthSrv = &http.Server{Handler: health.Handler(s.ready.Load, c.metrics), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10}
	return nil
}

// serve runs every component until ctx is done or one fails; it returns
// once all have stopped.
func (s *Server) serve(ctx context.Context, c *components) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.authority.Run(ctx) })
	g.Go(func() error { return c.store.Run(ctx) })
	g.Go(func() error { return c.svid.Run(ctx) })
	g.Go(func() error { return housekeeping(ctx, c.store, s.clock, s.log) })
	g.Go(func() error { return c.nodeLis.Run(ctx) })
	g.Go(func() error { return serveGRPC(ctx, c.tlsGRPC, c.nodeLis.authed, c.node.EndStreams, s.log) })
	g.Go(func() error { return serveGRPC(ctx, c.bootGRPC, c.nodeLis.bootstrap, nil, s.log) })
	g.Go(func() error { return serveGRPC(ctx, c.unixGRPC, c.adminLis, nil, s.log) })
	g.Go(func() error { return httpserve.Serve(ctx, c.https, c.httpsLis, true) })
	g.Go(func() error { return httpserve.Serve(ctx, c.healthSrv, c.healthLn, false) })
	g.Go(func() error { return httpserve.Serve(ctx, c.web, c.webLis, true) })
	g.Go(func() error { return c.dashboard.Run(ctx) })
	g.Go(func() error { return c.fleet.Run(ctx) })
	g.Go(func() error { return c.rotations.Run(ctx) })
	for _, r := range c.kube.registrars {
		g.Go(func() error { return r.Run(ctx) })
	}
	if c.kube.policies != nil {
		g.Go(func() error { return c.kube.policies.Run(ctx) })
	}
	for _, p := range c.kube.bundles {
		g.Go(func() error { return p.Run(ctx) })
	}
	s.ready.Store(true)
	s.log.Info("tally server ready", logkey.TrustDomain, s.td.Name(), "bind_address", c.nodeLis.lis.Addr().String(),
		"http_address", c.httpsLis.Addr().String(), "health_address", c.healthLn.Addr().String(), "admin_socket", s.cfg.AdminSocket,
		"dashboard", "https://"+c.webLis.Addr().String()+dashboard.Prefix, "web_ca", c.webCA,
		"entries", c.registry.Count())
	err := g.Wait()
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
			log.Warn("pruning join tokens", logkey.Error, err)
		} else if n > 0 {
			log.Info("pruned expired join tokens", "count", n)
		}
		if rev, err := st.Revision(ctx); err == nil && rev > keepEvents {
			if err := st.PruneEvents(ctx, rev-keepEvents); err != nil {
				log.Warn("pruning events", logkey.Error, err)
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
