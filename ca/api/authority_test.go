package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// rotationEnv is a real authority on a real store and fake clock, with the
// Admin and Node services on it, wired as the server wires them.
type rotationEnv struct {
	td    spiffeid.TrustDomain
	clock *testingclock.FakeClock
	st    *badgerstore.Store
	auth  *ca.Authority
	admin *Admin
	node  *Node
	logs  *syncBuffer
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newRotationEnv(t *testing.T) *rotationEnv {
	t.Helper()
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	clk := testingclock.NewFakeClock(time.Now().Truncate(time.Second))
	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(t.TempDir(), "store"), MemTableSize: 1 << 20, Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	auth, err := ca.New(ctx, ca.Config{TrustDomain: td, KeyDir: filepath.Join(t.TempDir(), "keys"), Journal: st, Clock: clk})
	require.NoError(t, err)
	reg := registry.New(registry.Config{TrustDomain: td, Store: st, Limits: registry.Limits{MaxTTL: time.Hour}, Clock: clk})
	require.NoError(t, reg.Load(ctx))
	// An entry, so that the sync's revision is not 0.
	_, err = reg.CreateEntries(ctx, []store.Entry{{SPIFFEID: "spiffe://example.org/web", ParentID: "spiffe://example.org/tally/agent/join_token/a",
		Selectors: []store.Selector{{Type: "unix", Value: "uid:1000"}}}})
	require.NoError(t, err)
	return &rotationEnv{
		td: td, clock: clk, st: st, auth: auth, logs: logs,
		admin: NewAdmin(AdminConfig{TrustDomain: td, Authority: auth, Rotation: auth, Registry: reg, Store: st, Clock: clk, Logger: log}),
		node:  NewNode(NodeConfig{TrustDomain: td, Authority: auth, Entries: reg, Agents: st, Tainted: auth.TaintedX509IDs, Clock: clk, Logger: log}),
	}
}

// agent attests an agent named name: its SVID is signed by the active X.509
// key and stored as its current one. It returns the context of its calls.
func (e *rotationEnv) agent(t *testing.T, name string) context.Context {
	t.Helper()
	ctx := context.Background()
	id := spiffeid.RequireFromPath(e.td, "/tally/agent/join_token/"+name)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	chain, err := e.auth.SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: key.Public(), ID: id})
	require.NoError(t, err)
	require.NoError(t, e.st.PutAgent(ctx, store.Agent{ID: id.String(), AttestationType: "join_token",
		SerialNumber: serialString(chain[0]), ExpiresAt: chain[0].NotAfter}))
	return peer.NewContext(ctx, &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 40000},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: chain}},
	})
}

// call makes an authenticated Node call as the agent of ctx.
func (e *rotationEnv) call(ctx context.Context) error {
	_, err := e.node.BatchNewX509SVID(ctx, &tallyv1.BatchNewX509SVIDRequest{})
	return err
}

func (e *rotationEnv) activeID(t *testing.T, k ca.Kind) string {
	t.Helper()
	for _, s := range e.auth.Slots() {
		if s.Kind == k && s.Status == ca.StatusActive {
			return s.ID
		}
	}
	t.Fatalf("no active %s slot", k)
	return ""
}

func requireCode(t *testing.T, want codes.Code, err error, msg ...string) {
	t.Helper()
	require.Equal(t, want, status.Code(err), "%v", err)
	for _, m := range msg {
		assert.Contains(t, status.Convert(err).Message(), m)
	}
}

func TestAuthorityRPCs(t *testing.T) {
	e := newRotationEnv(t)
	ctx := context.Background()
	x1 := e.activeID(t, ca.KindX509)

	got, err := e.admin.GetAuthority(ctx, &tallyv1.GetAuthorityRequest{})
	require.NoError(t, err)
	require.Len(t, got.GetSlots(), 2)
	assert.Equal(t, "x509", got.GetSlots()[0].GetKind())
	assert.Equal(t, x1, got.GetSlots()[0].GetId())
	assert.Equal(t, "active", got.GetSlots()[0].GetStatus())
	assert.Equal(t, e.clock.Now().Add(24*time.Hour).Unix(), got.GetSlots()[0].GetNotAfter())
	assert.Equal(t, e.clock.Now().Unix(), got.GetSlots()[0].GetActivatedAt())
	assert.Equal(t, "jwt", got.GetSlots()[1].GetKind())
	got, err = e.admin.GetAuthority(ctx, &tallyv1.GetAuthorityRequest{Kind: "jwt"})
	require.NoError(t, err)
	require.Len(t, got.GetSlots(), 1)
	_, err = e.admin.GetAuthority(ctx, &tallyv1.GetAuthorityRequest{Kind: "rsa"})
	requireCode(t, codes.InvalidArgument, err, `kind "rsa"`)

	for _, tc := range []struct {
		name string
		call func(context.Context, *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error)
		req  *tallyv1.AuthorityRequest
		want codes.Code
		msg  string
	}{
		{"prepare: no kind", e.admin.PrepareAuthority, &tallyv1.AuthorityRequest{}, codes.InvalidArgument, "kind"},
		{"prepare: an id", e.admin.PrepareAuthority, &tallyv1.AuthorityRequest{Kind: "x509", Id: "ab"}, codes.InvalidArgument, "no id"},
		{"activate: nothing prepared", e.admin.ActivateAuthority, &tallyv1.AuthorityRequest{Kind: "x509"}, codes.FailedPrecondition, "no x509 key is prepared"},
		{"activate: unknown", e.admin.ActivateAuthority, &tallyv1.AuthorityRequest{Kind: "x509", Id: "ab"}, codes.NotFound, `no x509 key "ab"`},
		{"activate: too long an id", e.admin.ActivateAuthority, &tallyv1.AuthorityRequest{Kind: "x509", Id: strings.Repeat("a", 200)}, codes.InvalidArgument, "id"},
		{"taint: the active key", e.admin.TaintAuthority, &tallyv1.AuthorityRequest{Kind: "x509", Id: x1}, codes.FailedPrecondition, "activate a new key first"},
		{"revoke: no id", e.admin.RevokeAuthority, &tallyv1.AuthorityRequest{Kind: "jwt"}, codes.InvalidArgument, "id"},
		{"revoke: the active key", e.admin.RevokeAuthority, &tallyv1.AuthorityRequest{Kind: "x509", Id: x1, Force: true}, codes.FailedPrecondition, "is active"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.call(ctx, tc.req)
			requireCode(t, tc.want, err, tc.msg)
		})
	}
	p, err := e.admin.PrepareAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509"})
	require.NoError(t, err)
	assert.Equal(t, "prepared", p.GetStatus())
	_, err = e.admin.PrepareAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509"})
	requireCode(t, codes.FailedPrecondition, err, "already prepared")
	_, err = e.admin.ActivateAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509"})
	requireCode(t, codes.FailedPrecondition, err, "can be activated from")

	e.clock.Step(10 * time.Minute)
	a, err := e.admin.ActivateAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509", Id: p.GetId()})
	require.NoError(t, err)
	assert.Equal(t, "active", a.GetStatus())
	assert.Equal(t, e.clock.Now().Unix(), a.GetActivatedAt())

	tn, err := e.admin.TaintAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509"})
	require.NoError(t, err)
	assert.Equal(t, x1, tn.GetId())
	assert.True(t, tn.GetTainted())
	assert.Equal(t, e.clock.Now().Unix(), tn.GetTaintedAt())
	assert.Equal(t, []string{x1}, e.auth.TaintedX509IDs())

	_, err = e.admin.RevokeAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509", Id: x1})
	requireCode(t, codes.FailedPrecondition, err, "may be valid until")
	r, err := e.admin.RevokeAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509", Id: x1, Force: true})
	require.NoError(t, err)
	assert.Equal(t, "revoked", r.GetStatus())
	got, err = e.admin.GetAuthority(ctx, &tallyv1.GetAuthorityRequest{Kind: "x509"})
	require.NoError(t, err)
	require.Len(t, got.GetSlots(), 1)
	assert.Equal(t, p.GetId(), got.GetSlots()[0].GetId())

	// Every step is audited, refusals included.
	logs := e.logs.String()
	for _, want := range []string{
		`"log":"audit","caller":"unknown","action":"authority_prepare","target":"x509 ` + p.GetId() + ` prepared","result":"ok"`,
		`"log":"audit","caller":"unknown","action":"authority_prepare","target":"x509 ","result":"error"`,
		`"log":"audit","caller":"unknown","action":"authority_activate","target":"x509 ` + p.GetId() + ` active","result":"ok"`,
		`"log":"audit","caller":"unknown","action":"authority_taint","target":"x509 ` + x1 + ` old","result":"ok"`,
		`"log":"audit","caller":"unknown","action":"authority_revoke","target":"x509 ` + x1 + `","result":"error"`,
		`"log":"audit","caller":"unknown","action":"authority_revoke","target":"x509 ` + x1 + ` revoked","result":"ok"`,
	} {
		assert.Contains(t, logs, want)
	}
}

func TestAuthorityRPCsNotConfigured(t *testing.T) {
	admin := NewAdmin(AdminConfig{})
	ctx := context.Background()
	_, err := admin.GetAuthority(ctx, &tallyv1.GetAuthorityRequest{})
	requireCode(t, codes.Unimplemented, err)
	for _, call := range []func(context.Context, *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error){
		admin.PrepareAuthority, admin.ActivateAuthority, admin.TaintAuthority, admin.RevokeAuthority,
	} {
		_, err := call(ctx, &tallyv1.AuthorityRequest{Kind: "x509", Id: "ab"})
		requireCode(t, codes.Unimplemented, err, "not configured")
	}
}

// syncStream is the server side of a SyncEntries stream: what is sent
// arrives on msgs.
type syncStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs chan *tallyv1.SyncEntriesResponse
}

func (s *syncStream) Context() context.Context { return s.ctx }

func (s *syncStream) Send(m *tallyv1.SyncEntriesResponse) error {
	select {
	case s.msgs <- m:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// openSync opens a SyncEntries stream as the agent of ctx; the stream's
// result arrives on the returned channel.
func (e *rotationEnv) openSync(t *testing.T, ctx context.Context) (*syncStream, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	s := &syncStream{ctx: ctx, msgs: make(chan *tallyv1.SyncEntriesResponse, 16)}
	done := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() { done <- e.node.SyncEntries(&tallyv1.SyncEntriesRequest{}, s) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return s, done
}

func (s *syncStream) next(t *testing.T) *tallyv1.SyncEntriesResponse {
	t.Helper()
	select {
	case m := <-s.msgs:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no SyncEntries message")
		return nil
	}
}

func bundleSeq(t *testing.T, td spiffeid.TrustDomain, m *tallyv1.SyncEntriesResponse) (*spiffebundle.Bundle, uint64) {
	t.Helper()
	require.NotEmpty(t, m.GetBundle(), "a bundle")
	b, err := spiffebundle.Parse(td, m.GetBundle())
	require.NoError(t, err)
	seq, _ := b.SequenceNumber()
	return b, seq
}

// TestRotationReachesAgents: a prepared key, a taint and a revocation reach
// every open SyncEntries stream at once, with the tainted keys; an agent
// whose SVID a revoked key signed is refused from then on, and its open
// stream ends.
func TestRotationReachesAgents(t *testing.T) {
	e := newRotationEnv(t)
	ctx := context.Background()
	x1 := e.activeID(t, ca.KindX509)
	agentA := e.agent(t, "a") // signed by x1
	require.NoError(t, e.call(agentA))
	streamA, doneA := e.openSync(t, agentA)
	m := streamA.next(t)
	assert.True(t, m.GetSnapshot())
	_, seq := bundleSeq(t, e.td, m)
	assert.Equal(t, uint64(1), seq)
	assert.Empty(t, m.GetTaintedX509Ids())

	// A prepared key reaches the stream before it can sign.
	p, err := e.admin.PrepareAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509"})
	require.NoError(t, err)
	b, seq := bundleSeq(t, e.td, streamA.next(t))
	assert.Equal(t, uint64(2), seq)
	assert.Len(t, b.X509Authorities(), 2)
	e.clock.Step(10 * time.Minute)
	_, err = e.admin.ActivateAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509", Id: p.GetId()})
	require.NoError(t, err)

	agentB := e.agent(t, "b") // signed by the new key
	streamB, _ := e.openSync(t, agentB)
	_, seq = bundleSeq(t, e.td, streamB.next(t))
	assert.Equal(t, uint64(2), seq)

	// A taint does not change the bundle; both streams get it again, with
	// the tainted key.
	_, err = e.admin.TaintAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509", Id: x1})
	require.NoError(t, err)
	for _, s := range []*syncStream{streamA, streamB} {
		m := s.next(t)
		_, seq := bundleSeq(t, e.td, m)
		assert.Equal(t, uint64(2), seq)
		assert.Equal(t, []string{x1}, m.GetTaintedX509Ids())
	}
	// A stream opened later, by an agent that holds the bundle, learns of it too.
	streamC, _ := e.openSync(t, agentB)
	assert.Equal(t, []string{x1}, streamC.next(t).GetTaintedX509Ids())

	// Revoked by force: gone from the bundle; agent A is refused at once,
	// on its open stream and on its next call; B carries on.
	_, err = e.admin.RevokeAuthority(ctx, &tallyv1.AuthorityRequest{Kind: "x509", Id: x1, Force: true})
	require.NoError(t, err)
	select {
	case err := <-doneA:
		requireCode(t, codes.Unauthenticated, err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent A's stream still open")
	}
	requireCode(t, codes.Unauthenticated, e.call(agentA))
	m = streamB.next(t)
	b, seq = bundleSeq(t, e.td, m)
	assert.Equal(t, uint64(3), seq)
	assert.Len(t, b.X509Authorities(), 1)
	assert.Empty(t, m.GetTaintedX509Ids())
	require.NoError(t, e.call(agentB))
}

// TestPeerCacheForgetsOlderBundles: a verification remembered for one bundle
// is not used with a later one, and is dropped.
func TestPeerCacheForgetsOlderBundles(t *testing.T) {
	e := newRotationEnv(t)
	agent := e.agent(t, "a")
	v := newPeerVerifier(e.td)
	b1 := e.auth.Bundle()
	_, _, err := v.verify(agent, b1, e.clock.Now())
	require.NoError(t, err)
	require.Len(t, v.seen, 1)

	// The same bundle content with a later sequence but without the key.
	b2 := spiffebundle.New(e.td)
	b2.SetSequenceNumber(2)
	_, _, err = v.verify(agent, b2, e.clock.Now())
	require.Error(t, err)
	assert.Empty(t, v.seen, "verifications against bundle 1 are forgotten")

	// A call that still holds bundle 1 verifies, but is not remembered.
	_, _, err = v.verify(agent, b1, e.clock.Now())
	require.NoError(t, err)
	assert.Empty(t, v.seen)
}
