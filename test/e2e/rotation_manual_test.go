package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// TestManualRotation forces an X.509 and a JWT rotation by hand — prepare,
// activate once the new key has been in the bundle for two refresh hints,
// taint the old key, revoke it with --force — while two workloads, each
// behind its own agent, talk mTLS every 50 ms and fetch and validate each
// other's JWT-SVIDs every 50 ms. At no step does a handshake fail or a valid
// JWT-SVID get rejected. After the X.509 taint every SVID in use (both
// workloads', both agents', the server's) is re-signed by the new key
// within an SVID lifetime, which is what makes the forced revoke safe; after
// it the agents still renew. JWT-SVIDs minted after activation carry the
// new kid. What each revoked key signed no longer verifies.
//
// With ca_ttl 1m the refresh hint is 6 s, so a prepared key may be
// activated 12 s after it was published; SVIDs live 10 s (ca_ttl/6). A
// 10 s X509-SVID renews at half its life anyway, so the deadline for the
// re-signing cannot tell the taint's early renewal from the ordinary one:
// that the agents act on the taint is checked by what they log.
func TestManualRotation(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t, "--ca-ttl", "1m", "--x509-svid-ttl", "10s", "--jwt-svid-ttl", "10s")
	agents := [2]*harness.AgentProc{
		harness.StartAgent(t, s, "", "--taint-jitter", "2s"),
		harness.StartAgent(t, s, "", "--taint-jitter", "2s"),
	}
	ids := [2]spiffeid.ID{
		spiffeid.RequireFromPath(s.TrustDomain, "/rotation/a"),
		spiffeid.RequireFromPath(s.TrustDomain, "/rotation/b"),
	}
	for i, a := range agents {
		createEntries(t, s, &tallyv1.Entry{SpiffeId: ids[i].String(), ParentId: a.ID(t).String(),
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var w [2]rotationWorkload
	for i, a := range agents {
		w[i] = newRotationWorkload(ctx, t, ids[i], a)
	}
	loop := startRotationLoop(ctx, t, w)
	defer loop.stop()
	require.Eventually(t, func() bool { return loop.handshakes.Load() >= 5 && loop.jwts.Load() >= 5 },
		30*time.Second, 50*time.Millisecond, "the loops run: %s", loop)

	oldX, oldJ := activeSlot(t, s, "x509"), activeSlot(t, s, "jwt")
	for i := range w {
		require.Equal(t, oldX, signerOf(w[i].svid()), "before the rotation %s is signed by the active key", ids[i])
	}
	oldSVID := w[0].svid()
	oldToken, err := w[0].jwt.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "before-rotation"})
	require.NoError(t, err)
	// What the old key signed verifies at a time it is valid, until the
	// key is revoked.
	verifyOld := func(i int) error {
		leaf := oldSVID.Certificates[0]
		_, _, err := x509svid.Verify(oldSVID.Certificates, w[i].x509, x509svid.WithTime(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore)/2)))
		return err
	}
	require.NoError(t, verifyOld(1))

	// Prepare: published at once, activated only after two refresh hints,
	// by when every workload holds it.
	newX := authority(t, s, "x509", "prepare")
	newJ := authority(t, s, "jwt", "prepare")
	require.Equal(t, "prepared", newX.Status)
	require.Equal(t, "prepared", newJ.Status)
	_, stderr, err := s.Ctl("authority", "x509", "activate")
	require.Error(t, err, "a key published just now is not activated")
	require.Contains(t, stderr, "can be activated from")
	for i := range w {
		require.Eventually(t, func() bool { return w[i].holds(newX.ID, newJ.ID) }, 30*time.Second, 100*time.Millisecond,
			"%s receives the prepared keys in its bundles", ids[i])
	}
	require.Eventually(t, func() bool {
		_, _, err = s.Ctl("authority", "x509", "activate", newX.ID)
		return err == nil
	}, 60*time.Second, 500*time.Millisecond, "activate x509: %v", err)
	require.Eventually(t, func() bool {
		_, _, err = s.Ctl("authority", "jwt", "activate", newJ.ID)
		return err == nil
	}, 60*time.Second, 500*time.Millisecond, "activate jwt: %v", err)
	require.Equal(t, newX.ID, activeSlot(t, s, "x509"))
	require.Equal(t, newJ.ID, activeSlot(t, s, "jwt"))
	fresh, err := w[0].jwt.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "after-activation"})
	require.NoError(t, err)
	require.Equal(t, newJ.ID, kidOf(fresh.Marshal()), "a JWT-SVID minted after activation carries the new kid")

	// X.509: taint the old key; every SVID in use is re-signed by the new
	// one, then the old key can be revoked without breaking anything.
	require.True(t, authority(t, s, "x509", "taint", oldX).Tainted)
	for i, a := range agents {
		require.Eventually(t, func() bool { return tainted(a.Log(), oldX) }, 30*time.Second, 100*time.Millisecond,
			"agent %d hears of the taint and renews what the key signed", i)
	}
	bundle := s.Bundle(t)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, newX.ID, signerOf(w[0].svid()), "workload %s", ids[0])
		assert.Equal(c, newX.ID, signerOf(w[1].svid()), "workload %s", ids[1])
		assert.Equal(c, newX.ID, agentSigner(agents[0]), "agent 0")
		assert.Equal(c, newX.ID, agentSigner(agents[1]), "agent 1")
		assert.Equal(c, newX.ID, serverSigner(s, bundle), "server")
	}, 10*time.Second, 100*time.Millisecond, "every SVID in use is re-signed by %s within an SVID lifetime", newX.ID)
	require.Equal(t, "revoked", authority(t, s, "x509", "revoke", oldX, "--force").Status)
	var atRevoke [2]string
	for i := range w {
		atRevoke[i] = w[i].svid().Certificates[0].SerialNumber.String()
		require.Eventually(t, func() bool { return verifyOld(i) != nil }, 30*time.Second, 100*time.Millisecond,
			"%s no longer trusts what the revoked key signed", ids[i])
	}

	// JWT: once the agents' cached JWT-SVIDs (kept until half their life)
	// carry the new kid, the old key can be marked and revoked.
	require.Eventually(t, func() bool { k := loop.kids(); return k[0] == newJ.ID && k[1] == newJ.ID },
		30*time.Second, 100*time.Millisecond, "the workloads get JWT-SVIDs of the new key")
	require.True(t, authority(t, s, "jwt", "taint", oldJ).Tainted)
	validateOld := func() error {
		_, err := jwtsvid.ParseAndValidate(oldToken.Marshal(), w[1].jwt, []string{"before-rotation"})
		return err
	}
	if err := validateOld(); err != nil {
		require.NotContains(t, err.Error(), "no JWT authority", "before the revoke the old kid is in the bundle")
	}
	require.Equal(t, "revoked", authority(t, s, "jwt", "revoke", oldJ, "--force").Status)
	require.Eventually(t, func() bool {
		err := validateOld()
		return err != nil && strings.Contains(err.Error(), "no JWT authority")
	}, 30*time.Second, 100*time.Millisecond, "a JWT-SVID of the revoked key is rejected: its kid left the bundle")

	// After the revokes the agents still renew (their own SVIDs are of the
	// new key), and the loops go on.
	for i := range w {
		require.Eventually(t, func() bool {
			svid := w[i].svid()
			_, _, err := x509svid.Verify(svid.Certificates, w[i].x509)
			return svid.Certificates[0].SerialNumber.String() != atRevoke[i] && err == nil
		}, 30*time.Second, 100*time.Millisecond, "%s is renewed after the revoke", ids[i])
	}
	calls := loop.handshakes.Load()
	require.Eventually(t, func() bool { return loop.handshakes.Load() >= calls+20 }, 30*time.Second, 50*time.Millisecond)
	loop.stop()
	t.Logf("%s", loop)
	assert.Zero(t, loop.handshakeFailures.Load(), "failed handshakes: %v", loop.errors())
	assert.Zero(t, loop.jwtFailures.Load(), "JWT-SVIDs not fetched or rejected: %v", loop.errors())
	assert.GreaterOrEqual(t, loop.handshakes.Load(), int64(100), "the mTLS loop ran throughout")
	assert.GreaterOrEqual(t, loop.jwts.Load(), int64(100), "the JWT loop ran throughout")
}

// rotationWorkload is one workload of TestManualRotation: its sources on
// its agent's Workload API.
type rotationWorkload struct {
	id   spiffeid.ID
	x509 *workloadapi.X509Source
	jwt  *workloadapi.JWTSource
}

func newRotationWorkload(ctx context.Context, t *testing.T, id spiffeid.ID, a *harness.AgentProc) rotationWorkload {
	t.Helper()
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr(a.Addr()))
	x, err := workloadapi.NewX509Source(ctx, addr)
	require.NoError(t, err)
	t.Cleanup(func() { x.Close() })
	j, err := workloadapi.NewJWTSource(ctx, addr)
	require.NoError(t, err)
	t.Cleanup(func() { j.Close() })
	w := rotationWorkload{id: id, x509: x, jwt: j}
	require.Equal(t, id, w.svid().ID)
	return w
}

// svid is the workload's current X509-SVID: an X509Source holds one from
// its first update on.
func (w rotationWorkload) svid() *x509svid.SVID {
	svid, err := w.x509.GetX509SVID()
	if err != nil {
		panic(err) // only once closed
	}
	return svid
}

// holds reports whether the workload's bundles have X.509 key x and JWT
// key j.
func (w rotationWorkload) holds(x, j string) bool {
	xb, err := w.x509.GetX509BundleForTrustDomain(w.id.TrustDomain())
	if err != nil {
		return false
	}
	jb, err := w.jwt.GetJWTBundleForTrustDomain(w.id.TrustDomain())
	if err != nil {
		return false
	}
	return slices.ContainsFunc(xb.X509Authorities(), func(c *x509.Certificate) bool { return hex.EncodeToString(c.SubjectKeyId) == x }) &&
		jb.HasJWTAuthority(j)
}

// rotationLoop runs the workloads' traffic: w[0] serves mTLS to w[1], which
// calls it every 50 ms; each fetches a JWT-SVID for the other every 50 ms
// and the other validates it against its own JWT bundle. Calls cut short
// by stop are not failures.
type rotationLoop struct {
	handshakes, handshakeFailures atomic.Int64
	jwts, jwtFailures             atomic.Int64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	mu   sync.Mutex
	errs []string  // the first failures
	kid  [2]string // of the last JWT-SVID each workload had validated
}

func startRotationLoop(ctx context.Context, t *testing.T, w [2]rotationWorkload) *rotationLoop {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	l := &rotationLoop{ctx: ctx, cancel: cancel}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(w[0].x509, w[0].x509, tlsconfig.AuthorizeID(w[1].id)))
	require.NoError(t, err)
	l.wg.Add(4)
	go func() {
		defer l.wg.Done()
		<-ctx.Done()
		ln.Close()
	}()
	go func() { defer l.wg.Done(); l.serve(ln, w[1].id) }()
	go func() { defer l.wg.Done(); l.call(ln.Addr().String(), w[1], w[0].id) }()
	go func() { defer l.wg.Done(); l.validate(w) }()
	return l
}

// serve greets each caller that completes the handshake.
func (l *rotationLoop) serve(ln net.Listener, peer spiffeid.ID) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return // closed
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			if err := conn.(*tls.Conn).HandshakeContext(l.ctx); err != nil {
				l.fail(&l.handshakeFailures, "server handshake: %v", err)
				return
			}
			fmt.Fprintf(conn, "hello %s\n", peer)
		}()
	}
}

// call connects to the server every 50 ms as w and reads its greeting.
func (l *rotationLoop) call(addr string, w rotationWorkload, server spiffeid.ID) {
	d := &tls.Dialer{Config: tlsconfig.MTLSClientConfig(w.x509, w.x509, tlsconfig.AuthorizeID(server))}
	want := fmt.Sprintf("hello %s\n", w.id)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-tick.C:
		}
		l.handshakes.Add(1)
		conn, err := d.DialContext(l.ctx, "tcp", addr)
		if err != nil {
			l.fail(&l.handshakeFailures, "client handshake: %v", err)
			continue
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		got, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil || got != want {
			l.fail(&l.handshakeFailures, "client read: %q, %v", got, err)
		}
	}
}

// validate has each workload fetch a JWT-SVID for the other every 50 ms,
// which the other validates.
func (l *rotationLoop) validate(w [2]rotationWorkload) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-tick.C:
		}
		for i := range w {
			peer := w[1-i]
			l.jwts.Add(1)
			token, err := w[i].jwt.FetchJWTSVID(l.ctx, jwtsvid.Params{Audience: peer.id.String()})
			if err != nil {
				l.fail(&l.jwtFailures, "%s: fetch JWT-SVID: %v", w[i].id, err)
				continue
			}
			got, err := jwtsvid.ParseAndValidate(token.Marshal(), peer.jwt, []string{peer.id.String()})
			if err == nil && got.ID != w[i].id {
				err = fmt.Errorf("subject %s", got.ID)
			}
			if err != nil {
				l.fail(&l.jwtFailures, "%s rejects a JWT-SVID of %s (kid %s): %v", peer.id, w[i].id, kidOf(token.Marshal()), err)
				continue
			}
			l.mu.Lock()
			l.kid[i] = kidOf(token.Marshal())
			l.mu.Unlock()
		}
	}
}

// fail counts a failure in n, unless the loop is being stopped.
func (l *rotationLoop) fail(n *atomic.Int64, format string, args ...any) {
	if l.ctx.Err() != nil {
		return
	}
	n.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 10 {
		l.errs = append(l.errs, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
	}
}

// stop ends the loops and waits for them. Safe to call more than once.
func (l *rotationLoop) stop() {
	l.once.Do(func() {
		l.cancel()
		l.wg.Wait()
	})
}

func (l *rotationLoop) kids() [2]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.kid
}

func (l *rotationLoop) errors() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

func (l *rotationLoop) String() string {
	return fmt.Sprintf("%d mTLS calls (%d failed), %d JWT-SVIDs fetched and validated (%d failed)",
		l.handshakes.Load(), l.handshakeFailures.Load(), l.jwts.Load(), l.jwtFailures.Load())
}

// slotOut is a CA key slot as tallyctl -o json prints it.
type slotOut struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	Tainted bool   `json:"tainted"`
}

// authority runs `tallyctl -o json authority kind args...` and returns the
// slot it reports.
func authority(t *testing.T, s *harness.Server, kind string, args ...string) slotOut {
	t.Helper()
	out, stderr, err := s.Ctl(append([]string{"-o", "json", "authority", kind}, args...)...)
	require.NoError(t, err, "authority %s %v: %s", kind, args, stderr)
	var slot slotOut
	require.NoError(t, json.Unmarshal([]byte(out), &slot), out)
	return slot
}

// activeSlot is the ID of the active key of kind.
func activeSlot(t *testing.T, s *harness.Server, kind string) string {
	t.Helper()
	out, stderr, err := s.Ctl("-o", "json", "authority", kind, "show")
	require.NoError(t, err, stderr)
	var slots struct {
		Slots []slotOut `json:"slots"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &slots), out)
	for _, sl := range slots.Slots {
		if sl.Status == "active" {
			return sl.ID
		}
	}
	t.Fatalf("no active %s key: %s", kind, out)
	return ""
}

// signerOf is the slot ID of the key that signed svid.
func signerOf(svid *x509svid.SVID) string { return issuerOf(svid.Certificates[0]) }

// issuerOf is the slot ID of the key that signed leaf: its authority key
// ID, which is the CA certificate's subject key ID.
func issuerOf(leaf *x509.Certificate) string { return hex.EncodeToString(leaf.AuthorityKeyId) }

// agentSigner is the slot ID of the key that signed the SVID agent a keeps
// in its data dir, or why it is not known.
func agentSigner(a *harness.AgentProc) string {
	raw, err := os.ReadFile(filepath.Join(a.Dir, "data", "agent-svid.pem"))
	if err != nil {
		return err.Error()
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return "agent-svid.pem: not PEM"
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return err.Error()
	}
	return issuerOf(cert)
}

// serverSigner is the slot ID of the key that signed the SVID the server
// presents on its Node API, or why it is not known.
func serverSigner(s *harness.Server, bundle x509bundle.Source) string {
	d := &tls.Dialer{Config: tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(s.ServerID()))}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", s.BindAddr)
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	return issuerOf(conn.(*tls.Conn).ConnectionState().PeerCertificates[0])
}

// tainted reports whether an agent's log says it renews what key signed.
func tainted(log, key string) bool {
	for line := range strings.Lines(log) {
		var l struct {
			Msg    string   `json:"msg"`
			KeyIDs []string `json:"key_ids"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "X.509 CA keys tainted: renewing the SVIDs they signed" &&
			slices.Contains(l.KeyIDs, key) {
			return true
		}
	}
	return false
}

// kidOf is the kid in a JWT's header, or why there is none.
func kidOf(token string) string {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return err.Error()
	}
	return tok.Headers[0].KeyID
}
