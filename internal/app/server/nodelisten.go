package serverapp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"

	"github.com/tallyid/tally/internal/logkey"
)

// Limits on what a Node API caller may send before it has proved who it is.
// AttestAgent needs no client certificate, so anyone who can reach
// bind_address can call it: its messages (a token or join token and a CSR)
// are a few KiB, and nothing else an unauthenticated caller sends can succeed.
const (
	// bootstrapMaxMsg bounds one message on a connection without a verified
	// client SVID. A projected service-account token is 1–2 KiB, a CSR
	// about 0.5 KiB.
	bootstrapMaxMsg = 64 << 10
	// bootstrapMaxConns bounds the open connections without a verified
	// client SVID; the next is closed at once. Each holds at most a window
	// of bootstrapMaxMsg plus gRPC's buffers.
	bootstrapMaxConns = 512
	// bootstrapStreams bounds the concurrent calls on one such connection.
	bootstrapStreams = 4
	// bootstrapIdle and bootstrapAge close such connections: an agent
	// reconnects with its SVID right after attesting.
	bootstrapIdle = 30 * time.Second
	bootstrapAge  = 2 * time.Minute
	// agentMaxMsg bounds one message from an authenticated caller: the
	// largest an agent sends is a batch of 1,000 CSRs (about 0.5 MiB without
	// DNS names). Larger admin batches go through the admin socket.
	agentMaxMsg = 16 << 20
	// maxHandshakes bounds the TLS handshakes in progress, and
	// handshakeTimeout each of them.
	maxHandshakes    = 256
	handshakeTimeout = 10 * time.Second
)

// nodeListener accepts the Node API's TCP connections, runs their TLS
// handshake and hands each to one of two listeners by what the client
// proved: a client certificate that verifies as an X509-SVID of the trust
// domain goes to the authenticated listener; anything else (no certificate,
// a self-signed one, an expired or foreign SVID) to the bootstrap listener,
// whose gRPC server accepts only small messages. The call itself still
// authenticates the caller: the split only decides how much an unknown
// caller may make the server hold.
type nodeListener struct {
	lis       net.Listener
	tls       *tls.Config
	bundle    func() *spiffebundle.Bundle // the current trust bundle
	log       *slog.Logger
	authed    *chanListener
	bootstrap *chanListener

	handshakes chan struct{} // semaphore: handshakes in progress
	open       chan struct{} // semaphore: open bootstrap connections
	wg         sync.WaitGroup
}

func newNodeListener(lis net.Listener, cfg *tls.Config, bundle func() *spiffebundle.Bundle, log *slog.Logger) *nodeListener {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"} // gRPC clients require ALPN h2
	return &nodeListener{
		lis: lis, tls: cfg, bundle: bundle, log: log,
		authed:     newChanListener(lis.Addr()),
		bootstrap:  newChanListener(lis.Addr()),
		handshakes: make(chan struct{}, maxHandshakes),
		open:       make(chan struct{}, bootstrapMaxConns),
	}
}

// Run accepts until ctx is done or accepting fails, then closes the
// listeners and returns once every handshake it started has ended.
func (n *nodeListener) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { n.lis.Close() })
	defer stop()
	defer n.wg.Wait()
	defer n.authed.Close()
	defer n.bootstrap.Close()
	for {
		conn, err := n.lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("server: bind_address: accept: %w", err)
		}
		select {
		case n.handshakes <- struct{}{}:
		case <-ctx.Done():
			conn.Close()
			return nil
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			defer func() { <-n.handshakes }()
			n.handshake(ctx, conn)
		}()
	}
}

func (n *nodeListener) handshake(ctx context.Context, raw net.Conn) {
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	conn := tls.Server(raw, n.tls)
	if err := conn.HandshakeContext(hctx); err != nil {
		n.log.Debug("node api tls handshake failed", logkey.Peer, raw.RemoteAddr().String(), logkey.Error, err)
		raw.Close()
		return
	}
	if n.verified(conn.ConnectionState()) {
		n.authed.push(conn)
		return
	}
	select {
	case n.open <- struct{}{}:
	default:
		n.log.Warn("node api: too many connections without a client SVID; closing one", logkey.Peer, raw.RemoteAddr().String(), "limit", bootstrapMaxConns)
		conn.Close()
		return
	}
	n.bootstrap.push(&releaseConn{Conn: conn, release: func() { <-n.open }})
}

// verified: the client presented a certificate chain that verifies as an
// X509-SVID of the current bundle.
func (n *nodeListener) verified(st tls.ConnectionState) bool {
	if len(st.PeerCertificates) == 0 {
		return false
	}
	_, _, err := x509svid.Verify(st.PeerCertificates, n.bundle())
	return err == nil
}

// releaseConn is a bootstrap connection: closing it frees its place.
type releaseConn struct {
	*tls.Conn
	once    sync.Once
	release func()
}

func (c *releaseConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// chanListener is a net.Listener fed by nodeListener.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// push hands conn to Accept, or closes it if the listener is closed.
func (l *chanListener) push(conn net.Conn) {
	select {
	case l.conns <- conn:
	case <-l.done:
		conn.Close()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// handshakenTLS is gRPC transport credentials for connections whose TLS
// handshake nodeListener already ran: it reports their TLS state as
// credentials.NewTLS would.
type handshakenTLS struct{}

func (handshakenTLS) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := conn.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return nil, nil, fmt.Errorf("server: %T is not a TLS connection", conn)
	}
	return conn, credentials.TLSInfo{
		State:          tc.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}, nil
}

func (handshakenTLS) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("server: handshakenTLS is server-side only")
}

func (handshakenTLS) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2"}
}

func (c handshakenTLS) Clone() credentials.TransportCredentials { return c }

func (handshakenTLS) OverrideServerName(string) error { return nil }
