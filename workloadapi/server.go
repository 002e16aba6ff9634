// Package workloadapi serves the SPIFFE Workload API on a Unix socket.
//
// Every call must carry the metadata "workload.spiffe.io: true". The caller
// is identified by its socket's peer credentials: its process is pinned when
// the connection is accepted (peercred), attested (Attestor) on every call,
// and the pin is checked again after attestation, so that selectors read for
// a PID that meanwhile names another process are never used. The identities
// come from a Source, the agent's caches.
//
// With an Exchanger, the same socket also serves tallyv1.TokenExchange
// (RFC 8693 token exchange), with the same header check and attestation; the
// agent forwards each exchange to the server for the caller's identity.
package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/peercred"
	"github.com/tallyid/tally/internal/unixsock"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Log keys.

const (
	// maxSendMsgSize bounds one response: a workload with 1,000+ identities
	// gets them all in one X509SVIDResponse.
	maxSendMsgSize = 64 << 20
	// maxRecvMsgSize bounds one request: the largest a workload sends is a
	// JWT-SVID to validate (a few KiB) or a list of audiences.
	maxRecvMsgSize = 64 << 10
	// shutdownGrace is how long Serve waits for calls to end after its
	// context is done before closing the remaining connections.
	shutdownGrace = 5 * time.Second
)

// Config configures a Server.
type Config struct {
	// Source provides identities and bundles. Required.
	Source Source
	// Attestor turns a caller's PID into selectors. Required.
	Attestor Attestor
	// Logger. Default: discard.
	Logger *slog.Logger
	// Metrics. Default: nil, nothing counted.
	Metrics *Metrics
	// Clock times the shutdown grace period. Default: the real clock.
	Clock clock.Clock
	// Exchanger, if set, is served as the tallyv1.TokenExchange service on
	// the same socket (exchange.go). Nil: that service is not served
	// (Unimplemented).
	Exchanger Exchanger
}

// Server implements the SPIFFE Workload API (go-spiffe's
// workload.SpiffeWorkloadAPIServer). Its handlers are safe for concurrent
// use; it serves once (Run or Serve).
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	cfg      Config
	log      *slog.Logger
	stopping chan struct{} // closed when Serve's ctx is done: streams end
	started  atomic.Bool
}

// New returns a Server, or an error if cfg lacks a Source or Attestor.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("workloadapi: config: source is required")
	}
	if cfg.Attestor == nil {
		return nil, errors.New("workloadapi: config: attestor is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Server{cfg: cfg, log: cfg.Logger, stopping: make(chan struct{})}, nil
}

// Serve listens on a Unix socket at socketPath and serves the Workload API
// until ctx is done, then stops gracefully: open streams end with
// Unavailable, calls in flight get shutdownGrace to finish, and the socket
// file is removed. It returns nil after a stop for ctx, or the error that
// made listening or serving fail. A Server serves once.
//
// Serve creates the socket's directory (mode 0755) if missing, replaces a
// stale socket (one no server accepts on) but refuses to replace a live
// socket or any other file, and makes the socket 0777: every user may
// connect, and attestation, not file permissions, decides what a caller gets.
func (s *Server) Serve(ctx context.Context, socketPath string) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("workloadapi: server already started")
	}
	lis, err := unixsock.Listen(socketPath, 0o777)
	if err != nil {
		return fmt.Errorf("workloadapi: socket: %w", err)
	}
	gs := grpc.NewServer(
		grpc.Creds(peercred.Credentials()),
		grpc.MaxSendMsgSize(maxSendMsgSize),
		grpc.MaxRecvMsgSize(maxRecvMsgSize),
	)
	workload.RegisterSpiffeWorkloadAPIServer(gs, s)
	if s.cfg.Exchanger != nil {
		tallyv1.RegisterTokenExchangeServer(gs, exchangeServer{s: s})
	}

	s.log.Info("workload api serving", logkey.Socket, socketPath)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	select {
	case err := <-served:
		close(s.stopping)
		gs.Stop()
		return fmt.Errorf("workloadapi: serve: %w", err)
	case <-ctx.Done():
	}

	close(s.stopping)
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	t := s.cfg.Clock.NewTimer(shutdownGrace)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C():
		s.log.Warn("workload api calls still open after the grace period; closing them")
		gs.Stop()
		<-stopped
	}
	<-served
	s.log.Info("workload api stopped")
	return nil
}

// FetchWITSVID is not served: Tally issues no WIT-SVIDs.
func (s *Server) FetchWITSVID(_ *workload.WITSVIDRequest, stream grpc.ServerStreamingServer[workload.WITSVIDResponse]) error {
	return s.unimplemented(stream.Context(), "FetchWITSVID")
}

// FetchWITBundles is not served: Tally issues no WIT-SVIDs.
func (s *Server) FetchWITBundles(_ *workload.WITBundlesRequest, stream grpc.ServerStreamingServer[workload.WITBundlesResponse]) error {
	return s.unimplemented(stream.Context(), "FetchWITBundles")
}

func (s *Server) unimplemented(ctx context.Context, method string) error {
	log := s.log.With(logkey.Method, method)
	if err := checkHeader(ctx); err != nil {
		return toStatus(log, err)
	}
	return toStatus(log, fmt.Errorf("%w: %s", errUnimplemented, method))
}
