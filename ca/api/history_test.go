package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/attest/jointoken"
	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/fleet"
	"github.com/tallyid/tally/ca/records"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// historyEnv is the Node and Admin services on a real authority, store and
// registry, on a fake clock, recording into a records.Recorder and
// reporting into a fleet.Fleet, as the server wires them.
type historyEnv struct {
	td    spiffeid.TrustDomain
	clock *testingclock.FakeClock
	st    *badgerstore.Store
	auth  *ca.Authority
	reg   *registry.Registry
	rec   *records.Recorder
	fleet *fleet.Fleet
	node  *Node
	admin *Admin
}

// storeTokens is the join-token store of the server (internal/app/server).
type storeTokens struct {
	st    store.Store
	clock *testingclock.FakeClock
}

func (s storeTokens) ConsumeJoinToken(ctx context.Context, token string) (string, error) {
	t, err := s.st.ConsumeJoinToken(ctx, jointoken.TokenID(token), s.clock.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return "", jointoken.ErrUnknown
	case errors.Is(err, store.ErrExpired):
		return "", jointoken.ErrExpired
	}
	return t.Alias, err
}

func newHistoryEnv(t *testing.T) *historyEnv {
	t.Helper()
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	clk := testingclock.NewFakeClock(time.Now().Truncate(time.Second))
	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(t.TempDir(), "store"), MemTableSize: 1 << 20, Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	auth, err := ca.New(ctx, ca.Config{TrustDomain: td, KeyDir: filepath.Join(t.TempDir(), "keys"), Journal: st, Clock: clk})
	require.NoError(t, err)
	reg := registry.New(registry.Config{TrustDomain: td, Store: st, Limits: registry.Limits{MaxTTL: time.Hour}, Clock: clk})
	require.NoError(t, reg.Load(ctx))
	e := &historyEnv{td: td, clock: clk, st: st, auth: auth, reg: reg, rec: records.New(records.Config{Clock: clk})}
	e.fleet = fleet.New(fleet.Config{TrustDomain: td, Slots: auth, Agents: st, Entries: reg, Clock: clk})
	e.node = NewNode(NodeConfig{TrustDomain: td, Authority: auth, Entries: reg, Agents: st, Records: e.rec, Fleet: e.fleet,
		Attestors: map[string]attest.NodeAttestor{jointoken.Type: jointoken.New(td, storeTokens{st: st, clock: clk})}, Clock: clk})
	e.admin = NewAdmin(AdminConfig{TrustDomain: td, Authority: auth, Registry: reg, Store: st, Records: e.rec, Clock: clk})
	return e
}

func (e *historyEnv) slotID(t *testing.T, k ca.Kind) string {
	t.Helper()
	for _, s := range e.auth.Slots() {
		if s.Kind == k && s.Status == ca.StatusActive {
			return s.ID
		}
	}
	t.Fatalf("no active %s slot", k)
	return ""
}

func newCSR(t *testing.T, id string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.CertificateRequest{}
	if id != "" {
		u, err := url.Parse(id)
		require.NoError(t, err)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	require.NoError(t, err)
	return der
}

// attestAgent attests with a fresh join token and returns the agent's ID and
// the context of its calls (its SVID as the TLS client certificate).
func (e *historyEnv) attestAgent(t *testing.T, token string) (string, context.Context) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, e.st.CreateJoinToken(ctx, store.JoinToken{Token: jointoken.TokenID(token), ExpiresAt: e.clock.Now().Add(time.Hour)}))
	resp, err := e.node.AttestAgent(fromPeer("10.0.0.1"), &tallyv1.AttestAgentRequest{AttestationType: jointoken.Type,
		AttestationData: []byte(token), Csr: newCSR(t, "")})
	require.NoError(t, err)
	var chain []*x509.Certificate
	for _, der := range resp.GetSvidChain() {
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		chain = append(chain, c)
	}
	return resp.GetSpiffeId(), peer.NewContext(ctx, &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 40000},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: chain}},
	})
}

func (e *historyEnv) addEntry(t *testing.T, parent, id string) string {
	t.Helper()
	out, err := e.reg.CreateEntries(context.Background(), []store.Entry{{SPIFFEID: id, ParentID: parent,
		Selectors: []store.Selector{{Type: "unix", Value: "uid:1000"}}}})
	require.NoError(t, err)
	return out[0].ID
}

// last returns the newest recorded event.
func (e *historyEnv) last(t *testing.T) records.Event {
	t.Helper()
	evs := e.rec.List("", 1)
	require.Len(t, evs, 1)
	return evs[0]
}

func TestRecordsIssuance(t *testing.T) {
	e := newHistoryEnv(t)
	x509Slot, jwtSlot := e.slotID(t, ca.KindX509), e.slotID(t, ca.KindJWT)
	const token = "0123456789abcdef-secret"
	agentID, agent := e.attestAgent(t, token)

	t.Run("an attestation and the agent's first SVID", func(t *testing.T) {
		evs := e.rec.List(agentID, 0)
		require.Len(t, evs, 2)
		svid, att := evs[0], evs[1]
		require.Equal(t, records.KindAttestation, att.Kind)
		require.Equal(t, "join_token", att.Detail)
		require.Equal(t, agentID, att.AgentID)
		require.False(t, att.Failed)
		require.Equal(t, records.KindX509, svid.Kind)
		require.Equal(t, x509Slot, svid.KeyID)
		require.False(t, svid.Renewal)
		stored, err := e.st.GetAgent(context.Background(), agentID)
		require.NoError(t, err)
		require.Equal(t, stored.SerialNumber, svid.Serial)
		require.True(t, svid.NotAfter.Equal(stored.ExpiresAt))
	})
	t.Run("a refused attestation, without the token", func(t *testing.T) {
		_, err := e.node.AttestAgent(fromPeer("10.0.0.1"), &tallyv1.AttestAgentRequest{AttestationType: jointoken.Type,
			AttestationData: []byte(token), Csr: newCSR(t, "")})
		require.Equal(t, codes.PermissionDenied, status.Code(err))
		ev := e.last(t)
		require.Equal(t, records.KindAttestation, ev.Kind)
		require.True(t, ev.Failed)
		require.True(t, strings.HasPrefix(ev.Detail, "join_token: "), ev.Detail)
		require.Contains(t, ev.Detail, jointoken.TokenID(token))
		require.NotContains(t, ev.Detail, "secret")
	})

	web := "spiffe://example.org/web"
	entryID := e.addEntry(t, agentID, web)
	x509Req := func() *tallyv1.BatchNewX509SVIDRequest {
		return &tallyv1.BatchNewX509SVIDRequest{Requests: []*tallyv1.X509SVIDRequest{{EntryId: entryID, Csr: newCSR(t, web)}}}
	}
	t.Run("an X509-SVID, then its renewal", func(t *testing.T) {
		resp, err := e.node.BatchNewX509SVID(agent, x509Req())
		require.NoError(t, err)
		require.Empty(t, resp.GetResults()[0].GetError())
		leaf, err := x509.ParseCertificate(resp.GetResults()[0].GetCertChain()[0])
		require.NoError(t, err)
		ev := e.last(t)
		require.Equal(t, records.Event{Kind: records.KindX509, SPIFFEID: web, Serial: serialString(leaf), AgentID: agentID, EntryID: entryID,
			At: e.clock.Now().UTC(), NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), KeyID: x509Slot}, ev)

		e.clock.Step(time.Minute)
		_, err = e.node.BatchNewX509SVID(agent, x509Req())
		require.NoError(t, err)
		require.True(t, e.last(t).Renewal)
	})
	t.Run("a first issuance again after the agent attests again", func(t *testing.T) {
		e.clock.Step(time.Minute)
		a, err := e.st.GetAgent(context.Background(), agentID)
		require.NoError(t, err)
		a.AttestedAt = e.clock.Now()
		require.NoError(t, e.st.PutAgent(context.Background(), a))
		_, err = e.node.BatchNewX509SVID(agent, x509Req())
		require.NoError(t, err)
		require.False(t, e.last(t).Renewal)
	})
	t.Run("a refused X509-SVID", func(t *testing.T) {
		resp, err := e.node.BatchNewX509SVID(agent, &tallyv1.BatchNewX509SVIDRequest{Requests: []*tallyv1.X509SVIDRequest{{EntryId: "nope", Csr: newCSR(t, web)}}})
		require.NoError(t, err)
		require.NotEmpty(t, resp.GetResults()[0].GetError())
		ev := e.last(t)
		require.True(t, ev.Failed)
		require.Equal(t, "nope", ev.EntryID)
		require.Empty(t, ev.SPIFFEID, "an entry ID is not taken for a SPIFFE ID")
		require.Equal(t, agentID, ev.AgentID)
		require.NotEmpty(t, ev.Detail)
	})
	t.Run("JWT-SVIDs, with the kid", func(t *testing.T) {
		resp, err := e.node.NewJWTSVID(agent, &tallyv1.NewJWTSVIDRequest{EntryId: entryID, Audience: []string{"db"}})
		require.NoError(t, err)
		ev := e.last(t)
		require.Equal(t, records.KindJWT, ev.Kind)
		require.Equal(t, jwtSlot, ev.KeyID)
		require.Equal(t, resp.GetExpiresAt(), ev.NotAfter.Unix())
		require.False(t, ev.Renewal)
		require.Empty(t, ev.Serial)
		require.NotContains(t, ev.Detail, resp.GetToken())

		_, err = e.node.BatchNewJWTSVID(agent, &tallyv1.BatchNewJWTSVIDRequest{Requests: []*tallyv1.NewJWTSVIDRequest{{EntryId: entryID, Audience: []string{"db"}}}})
		require.NoError(t, err)
		ev = e.last(t)
		require.Equal(t, records.KindJWT, ev.Kind)
		require.True(t, ev.Renewal)
	})
	t.Run("the agent's renewal", func(t *testing.T) {
		resp, err := e.node.RenewAgent(agent, &tallyv1.RenewAgentRequest{Csr: newCSR(t, "")})
		require.NoError(t, err)
		leaf, err := x509.ParseCertificate(resp.GetSvidChain()[0])
		require.NoError(t, err)
		ev := e.last(t)
		require.Equal(t, agentID, ev.SPIFFEID)
		require.Equal(t, serialString(leaf), ev.Serial)
		require.True(t, ev.Renewal)
	})
	t.Run("Admin API mints", func(t *testing.T) {
		_, err := e.admin.MintX509SVID(context.Background(), &tallyv1.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/minted", Csr: newCSR(t, "spiffe://example.org/minted")})
		require.NoError(t, err)
		ev := e.last(t)
		require.Equal(t, records.KindX509, ev.Kind)
		require.Empty(t, ev.AgentID)
		require.Equal(t, x509Slot, ev.KeyID)
		require.Equal(t, "minted by unknown", ev.Detail)
		_, err = e.admin.MintJWTSVID(context.Background(), &tallyv1.MintJWTSVIDRequest{SpiffeId: "spiffe://example.org/minted", Audience: []string{"x"}})
		require.NoError(t, err)
		ev = e.last(t)
		require.Equal(t, records.KindJWT, ev.Kind)
		require.Equal(t, jwtSlot, ev.KeyID)
	})
	t.Run("counted by minute", func(t *testing.T) {
		var sum records.Bucket
		for _, b := range e.rec.Buckets(time.Time{}) {
			sum.X509.First += b.X509.First
			sum.X509.Renewals += b.X509.Renewals
			sum.X509.Failures += b.X509.Failures
			sum.JWT.First += b.JWT.First
			sum.JWT.Renewals += b.JWT.Renewals
			sum.Attestation.First += b.Attestation.First
			sum.Attestation.Failures += b.Attestation.Failures
		}
		// X.509: the agent's, web, web again after re-attesting, minted;
		// renewals: web, the agent's; the refused one.
		require.Equal(t, records.Counts{First: 4, Renewals: 2, Failures: 1}, sum.X509)
		require.Equal(t, records.Counts{First: 2, Renewals: 1}, sum.JWT)
		require.Equal(t, records.Counts{First: 1, Failures: 1}, sum.Attestation)
		require.Equal(t, uint64(1), e.rec.IssuanceFailures())
	})
}

func TestListIssuances(t *testing.T) {
	e := newHistoryEnv(t)
	for i, id := range []string{"a", "b", "a", "a"} {
		e.rec.Record(records.Event{Kind: records.KindX509, SPIFFEID: "spiffe://example.org/" + id, Serial: string(rune('1' + i)),
			AgentID: "spiffe://example.org/tally/agent/x", NotBefore: e.clock.Now(), NotAfter: e.clock.Now().Add(time.Hour), KeyID: "k1", Renewal: i > 1})
		e.clock.Step(time.Second)
	}
	e.rec.Record(records.Event{Kind: records.KindJWT, SPIFFEID: "spiffe://example.org/a", Failed: true, Detail: "no entry"})
	ctx := context.Background()

	resp, err := e.admin.ListIssuances(ctx, &tallyv1.ListIssuancesRequest{SpiffeId: "spiffe://example.org/a"})
	require.NoError(t, err)
	got := resp.GetIssuances()
	require.Len(t, got, 4)
	require.Equal(t, "jwt", got[0].GetKind())
	require.Equal(t, "failed: no entry", got[0].GetDetail())
	require.Equal(t, "4", got[1].GetSerial())
	require.True(t, got[1].GetRenewal())
	require.Equal(t, "1", got[3].GetSerial())
	require.False(t, got[3].GetRenewal())
	require.Equal(t, "k1", got[3].GetKeyId())
	require.Equal(t, "spiffe://example.org/tally/agent/x", got[3].GetAgentId())
	require.Equal(t, got[3].GetNotBefore()+3600, got[3].GetNotAfter())
	require.Greater(t, got[1].GetIssuedAtUnixNano(), got[3].GetIssuedAtUnixNano())
	require.Zero(t, got[0].GetNotBefore(), "zero times are 0")

	resp, err = e.admin.ListIssuances(ctx, &tallyv1.ListIssuancesRequest{Limit: 2})
	require.NoError(t, err)
	require.Len(t, resp.GetIssuances(), 2)
	resp, err = e.admin.ListIssuances(ctx, &tallyv1.ListIssuancesRequest{})
	require.NoError(t, err)
	require.Len(t, resp.GetIssuances(), 5)

	_, err = e.admin.ListIssuances(ctx, &tallyv1.ListIssuancesRequest{Limit: -1})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	_, err = NewAdmin(AdminConfig{TrustDomain: e.td}).ListIssuances(ctx, &tallyv1.ListIssuancesRequest{})
	require.Equal(t, codes.Unimplemented, status.Code(err))
}

func TestReportSVIDs(t *testing.T) {
	e := newHistoryEnv(t)
	agentID, agent := e.attestAgent(t, "report-token")
	require.NoError(t, e.fleet.Refresh(context.Background()))
	web := "spiffe://example.org/web"
	entryID := e.addEntry(t, agentID, web)
	now := e.clock.Now()

	resp, err := e.node.ReportSVIDs(agent, &tallyv1.ReportSVIDsRequest{Full: true, AgentSvidNotAfter: now.Add(time.Hour).Unix(), Svids: []*tallyv1.ServedSVID{
		{EntryId: entryID, SpiffeId: web, Serial: "ab", NotBefore: now.Unix(), NotAfter: now.Add(time.Hour).Unix(), Subscribers: 2, SignerId: e.slotID(t, ca.KindX509)},
	}})
	require.NoError(t, err)
	require.NotNil(t, resp)
	ov := e.fleet.Snapshot(now)
	require.Len(t, ov.Workloads, 1)
	require.Equal(t, agentID, ov.Workloads[0].AgentID)
	require.Equal(t, 2, ov.Workloads[0].Subscribers)
	require.Len(t, ov.Agents, 1)
	require.True(t, ov.Agents[0].LastReport.Equal(now))
	require.Empty(t, ov.AtRisk)

	for _, tc := range []struct {
		name string
		ctx  context.Context
		node *Node
		req  *tallyv1.ReportSVIDsRequest
		code codes.Code
	}{
		{"no agent SVID", fromPeer("10.0.0.1"), e.node, &tallyv1.ReportSVIDsRequest{}, codes.Unauthenticated},
		{"too many SVIDs", agent, e.node, &tallyv1.ReportSVIDsRequest{Svids: make([]*tallyv1.ServedSVID, maxReportSVIDs+1)}, codes.InvalidArgument},
		{"too many removals", agent, e.node, &tallyv1.ReportSVIDsRequest{RemovedEntryIds: make([]string, maxReportSVIDs+1)}, codes.InvalidArgument},
		{"refused by the fleet", agent, e.node, &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{{SpiffeId: web}}}, codes.InvalidArgument},
		{"no fleet", agent, NewNode(NodeConfig{TrustDomain: e.td, Authority: e.auth, Entries: e.reg, Agents: e.st, Clock: e.clock}),
			&tallyv1.ReportSVIDsRequest{}, codes.Unimplemented},
		{"no fleet, not authenticated", fromPeer("10.0.0.1"), NewNode(NodeConfig{TrustDomain: e.td, Authority: e.auth, Entries: e.reg, Agents: e.st, Clock: e.clock}),
			&tallyv1.ReportSVIDsRequest{}, codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.node.ReportSVIDs(tc.ctx, tc.req)
			require.Equal(t, tc.code, status.Code(err), "%v", err)
		})
	}
	require.Len(t, e.fleet.Snapshot(now).Workloads, 1, "the refused reports changed nothing")
}

// TestNoRecorder: without Records, issuance works and records nothing.
func TestNoRecorder(t *testing.T) {
	e := newHistoryEnv(t)
	e.node.cfg.Records, e.admin.cfg.Records = nil, nil
	agentID, agent := e.attestAgent(t, "t")
	entryID := e.addEntry(t, agentID, "spiffe://example.org/web")
	resp, err := e.node.BatchNewX509SVID(agent, &tallyv1.BatchNewX509SVIDRequest{Requests: []*tallyv1.X509SVIDRequest{{EntryId: entryID, Csr: newCSR(t, "spiffe://example.org/web")}}})
	require.NoError(t, err)
	require.Empty(t, resp.GetResults()[0].GetError())
	_, err = e.node.NewJWTSVID(agent, &tallyv1.NewJWTSVIDRequest{EntryId: entryID, Audience: []string{"x"}})
	require.NoError(t, err)
	require.Zero(t, e.rec.Stats().Events)
}
