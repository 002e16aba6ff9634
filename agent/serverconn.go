package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/utils/clock"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// serverConn is the agent's mTLS connection to the server's Node API. It
// is replaced after every attestation or renewal, so that the server always
// sees the current agent SVID; Changed tells stream users to reconnect.
type serverConn struct {
	addr     string
	serverID spiffeid.ID
	id       *identity
	clock    Clock

	mu      sync.Mutex
	cc      *grpc.ClientConn
	node    tallyv1.NodeClient
	changed chan struct{} // closed when cc is replaced
	retired []retired     // replaced connections, closed after closeGrace
}

// retired is a replaced connection and the timer that closes it.
type retired struct {
	cc    *grpc.ClientConn
	timer clock.Timer
}

// closeGrace is how long a replaced connection stays open for the calls in
// flight on it; streams move to the new one at once (Changed).
const closeGrace = 5 * time.Second

func newServerConn(addr string, serverID spiffeid.ID, id *identity, clk Clock) *serverConn {
	return &serverConn{addr: addr, serverID: serverID, id: id, clock: clk, changed: make(chan struct{})}
}

// reconnect opens a new connection with the current SVID and closes the
// previous one.
func (s *serverConn) reconnect() error {
	cfg := tlsconfig.MTLSClientConfig(s.id, s.id, tlsconfig.AuthorizeID(s.serverID))
	cc, err := grpc.NewClient(s.addr,
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
	)
	if err != nil {
		return fmt.Errorf("agent: dial server: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.cc; old != nil {
		s.retired = append(s.retired, retired{cc: old, timer: s.clock.AfterFunc(closeGrace, func() { s.closeRetired(old) })})
	}
	s.cc, s.node = cc, tallyv1.NewNodeClient(cc)
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

// closeRetired closes a replaced connection once its grace is over.
func (s *serverConn) closeRetired(cc *grpc.ClientConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.retired {
		if r.cc == cc {
			s.retired = append(s.retired[:i], s.retired[i+1:]...)
			cc.Close()
			return
		}
	}
}

// Node returns the current client and a channel closed when it is replaced.
func (s *serverConn) Node() (tallyv1.NodeClient, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.node, s.changed
}

// Close closes the connection and every replaced one still in its grace.
func (s *serverConn) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.retired {
		r.timer.Stop()
		r.cc.Close()
	}
	s.retired = nil
	if s.cc != nil {
		s.cc.Close()
	}
}

// NewX509SVIDs implements Minter.
func (s *serverConn) NewX509SVIDs(ctx context.Context, reqs []*tallyv1.X509SVIDRequest) ([]*tallyv1.X509SVIDResult, error) {
	node, _ := s.Node()
	if node == nil {
		return nil, errors.New("agent: not connected")
	}
	resp, err := node.BatchNewX509SVID(ctx, &tallyv1.BatchNewX509SVIDRequest{Requests: reqs})
	if err != nil {
		return nil, err
	}
	return resp.GetResults(), nil
}

// NewJWTSVIDs implements Minter.
func (s *serverConn) NewJWTSVIDs(ctx context.Context, reqs []*tallyv1.NewJWTSVIDRequest) ([]*tallyv1.JWTSVIDResult, error) {
	node, _ := s.Node()
	if node == nil {
		return nil, errors.New("agent: not connected")
	}
	resp, err := node.BatchNewJWTSVID(ctx, &tallyv1.BatchNewJWTSVIDRequest{Requests: reqs})
	if err != nil {
		return nil, err
	}
	return resp.GetResults(), nil
}

// bootstrapTLS is the TLS config for attestation: the server is
// authenticated by its SVID against the bootstrap bundle, or not at all
// with insecure bootstrap.
func bootstrapTLS(id *identity, serverID spiffeid.ID, insecure bool) *tls.Config {
	if insecure {
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // explicit, logged opt-in
	}
	return tlsconfig.TLSClientConfig(id, tlsconfig.AuthorizeID(serverID))
}
