package agent

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/workloadapi"
)

// agentRig is an agent against a testNode: a Session, a Cache minting
// through it and a Reporter, all on one fake clock. The agent SVID and
// workload SVIDs live an hour; the first sync carries the bundle of the
// node's CA.
type agentRig struct {
	n     *testNode
	clk   *clocktesting.FakeClock
	s     *Session
	c     *Cache
	token time.Time // the reporter's TokenNotAfter
}

func startRig(t *testing.T, before func(*testNode)) *agentRig {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Now())
	n := startTestNode(t, clk)
	n.svidTTL = time.Hour
	n.syncExtra.Store(&tallyv1.SyncEntriesResponse{Bundle: n.bundleJSON(t, n.ca)})
	if before != nil {
		before(n)
	}
	s := openTestSession(t, n, "")
	s.rand = fixedRand(0.5)
	require.NoError(t, s.Start(context.Background()))
	require.Equal(t, "attest", n.next(t))
	c := NewCache(CacheConfig{Minter: s.Minter(), Clock: clk, TaintJitter: 30 * time.Second, rand: fixedRand(0.5)})
	token := clk.Now().Add(time.Hour)
	r := NewReporter(ReporterConfig{Session: s, Cache: c, Clock: clk, Interval: 5 * time.Second, Heartbeat: time.Minute,
		TokenNotAfter: func() time.Time { return token }})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{func(ctx context.Context) error { return s.Run(ctx, c) }, c.Run, r.Run} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	require.Equal(t, "sync:0", n.next(t))
	return &agentRig{n: n, clk: clk, s: s, c: c, token: token}
}

func (r *agentRig) subscribe(t *testing.T, uid string) workloadapi.Subscription {
	t.Helper()
	sub, err := r.c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: uid}})
	require.NoError(t, err)
	t.Cleanup(sub.Close)
	return sub
}

// stepUntilReport steps the clock a second at a time until a report comes.
func (r *agentRig) stepUntilReport(t *testing.T) reported {
	t.Helper()
	for range 200 {
		select {
		case got := <-r.n.reports:
			return got
		case <-time.After(20 * time.Millisecond):
		}
		r.clk.Step(time.Second)
	}
	t.Fatal("no report")
	return reported{}
}

// requireNoReport steps the clock by d, a second at a time, and fails on a
// report.
func (r *agentRig) requireNoReport(t *testing.T, d time.Duration, why string) {
	t.Helper()
	for range int(d / time.Second) {
		select {
		case got := <-r.n.reports:
			t.Fatalf("%s: got %v", why, got.req)
		case <-time.After(10 * time.Millisecond):
		}
		r.clk.Step(time.Second)
	}
}

func leafOf(t *testing.T, svid workloadapi.X509SVID) *x509.Certificate {
	t.Helper()
	certs, err := x509.ParseCertificates(svid.CertChain)
	require.NoError(t, err)
	return certs[0]
}

// TestReporterFullThenChangesOnly: a full report once the first sync is
// applied, then coalesced changes at most every Interval, a heartbeat
// after a minute of silence, a full report again on a new stream, and
// entries no longer served as removed.
func TestReporterFullThenChangesOnly(t *testing.T) {
	r := startRig(t, nil)
	first := r.stepUntilReport(t)
	require.True(t, first.req.GetFull())
	require.Empty(t, first.req.GetSvids(), "e1 has neither an SVID nor a subscriber yet")
	require.Equal(t, r.s.SVIDNotAfter().Unix(), first.req.GetAgentSvidNotAfter())
	require.Equal(t, r.token.Unix(), first.req.GetAgentTokenNotAfter())

	// Two workloads subscribe to e1, which is minted: one report of it all.
	sub1 := r.subscribe(t, "uid:1")
	svid := next(t, sub1).SVIDs[0]
	sub2 := r.subscribe(t, "uid:1")
	next(t, sub2)
	delta := r.stepUntilReport(t)
	require.GreaterOrEqual(t, delta.at.Sub(first.at), 5*time.Second, "at most one report per Interval")
	require.False(t, delta.req.GetFull())
	leaf := leafOf(t, svid)
	want := &tallyv1.ServedSVID{EntryId: "e1", SpiffeId: "spiffe://example.org/w", Serial: leaf.SerialNumber.Text(16),
		NotBefore: leaf.NotBefore.Unix(), NotAfter: leaf.NotAfter.Unix(), Subscribers: 2,
		SignerId: hex.EncodeToString(r.n.ca.SubjectKeyId)}
	require.Len(t, delta.req.GetSvids(), 1)
	require.Equal(t, want.String(), delta.req.GetSvids()[0].String())
	r.requireNoReport(t, 20*time.Second, "nothing changed")

	sub2.Close()
	delta = r.stepUntilReport(t)
	require.Len(t, delta.req.GetSvids(), 1)
	require.EqualValues(t, 1, delta.req.GetSvids()[0].GetSubscribers(), "one stream left")

	heartbeat := r.stepUntilReport(t)
	require.GreaterOrEqual(t, heartbeat.at.Sub(delta.at), time.Minute)
	require.False(t, heartbeat.req.GetFull())
	require.Empty(t, heartbeat.req.GetSvids())
	require.Empty(t, heartbeat.req.GetRemovedEntryIds())
	require.NotZero(t, heartbeat.req.GetAgentSvidNotAfter())

	// A new stream (a server restart) gets everything again.
	require.Eventually(t, func() bool { return r.n.openStreams() == 1 }, 10*time.Second, time.Millisecond)
	r.n.endStreams(errUnavailable())
	full := r.stepUntilReport(t)
	require.Equal(t, "sync:1", r.n.next(t))
	require.True(t, full.req.GetFull())
	require.Len(t, full.req.GetSvids(), 1)
	require.EqualValues(t, 1, full.req.GetSvids()[0].GetSubscribers())

	// e1 is deleted: its SVID goes, and the report says so.
	require.Eventually(t, func() bool { return r.n.openStreams() == 1 }, 10*time.Second, time.Millisecond)
	r.n.push(&tallyv1.SyncEntriesResponse{Revision: 2, DeletedIds: []string{"e1"}})
	for len(next(t, sub1).SVIDs) > 0 { // the new stream's bundle first, perhaps
	}
	removed := r.stepUntilReport(t)
	require.False(t, removed.req.GetFull())
	require.Empty(t, removed.req.GetSvids())
	require.Equal(t, []string{"e1"}, removed.req.GetRemovedEntryIds())
}

// TestReporterReportsWhatFails: a workload subscribed to an entry the
// server refuses is reported with the error and no SVID.
func TestReporterReportsWhatFails(t *testing.T) {
	r := startRig(t, func(n *testNode) {
		refused := "entry not authorized"
		n.mintErr.Store(&refused)
	})
	r.stepUntilReport(t)
	sub := r.subscribe(t, "uid:1")
	require.Empty(t, next(t, sub).SVIDs, "refused")
	got := r.stepUntilReport(t)
	require.Len(t, got.req.GetSvids(), 1)
	s := got.req.GetSvids()[0]
	require.Equal(t, "e1", s.GetEntryId())
	require.Equal(t, "spiffe://example.org/w", s.GetSpiffeId())
	require.Empty(t, s.GetSerial())
	require.EqualValues(t, 1, s.GetSubscribers())
	require.Contains(t, s.GetLastError(), "entry not authorized")
	require.GreaterOrEqual(t, value(t, r.c.cfg.Metrics.rotationFailures.WithLabelValues(svidWorkload)), 1.0, "retries fail too")
}

// TestReporterWithAServerWithoutReports: Unimplemented is asked once per
// stream; the agent serves on.
func TestReporterWithAServerWithoutReports(t *testing.T) {
	r := startRig(t, func(n *testNode) { n.reportErr.Store(failWith(codes.Unimplemented, "unknown method")) })
	require.True(t, r.stepUntilReport(t).req.GetFull())
	sub := r.subscribe(t, "uid:1")
	require.Len(t, next(t, sub).SVIDs, 1, "the agent serves on")
	r.requireNoReport(t, 90*time.Second, "the server does not take reports")

	require.Eventually(t, func() bool { return r.n.openStreams() == 1 }, 10*time.Second, time.Millisecond)
	r.n.endStreams(errUnavailable())
	got := r.stepUntilReport(t)
	require.True(t, got.req.GetFull(), "a new stream may be to an upgraded server")
	require.Len(t, got.req.GetSvids(), 1)
}

// TestReporterRetriesInFull: after a failed report the next one, after a
// backoff, is full.
func TestReporterRetriesInFull(t *testing.T) {
	r := startRig(t, func(n *testNode) { n.reportErr.Store(failWith(codes.Unavailable, "overloaded")) })
	failed := r.stepUntilReport(t)
	retry := r.stepUntilReport(t)
	require.GreaterOrEqual(t, retry.at.Sub(failed.at), 4*time.Second, "Interval, less at most a fifth")
	require.True(t, retry.req.GetFull())
	r.n.reportErr.Store(nil)
	ok := r.stepUntilReport(t)
	require.GreaterOrEqual(t, ok.at.Sub(retry.at), 8*time.Second, "the backoff doubles")
	require.True(t, ok.req.GetFull())

	sub := r.subscribe(t, "uid:1")
	next(t, sub)
	require.False(t, r.stepUntilReport(t).req.GetFull(), "changes only, once the server has the rest")
}

// TestSessionRenewsWhatATaintedKeySigned: over the Node API, a taint
// arriving with the bundle makes the agent renew its own SVID and the
// workload SVIDs the key signed within the taint window; workloads get the
// new SVIDs, served the old ones until then, and the report shows the new
// signer.
func TestSessionRenewsWhatATaintedKeySigned(t *testing.T) {
	r := startRig(t, nil)
	sub := r.subscribe(t, "uid:1")
	old := next(t, sub).SVIDs[0]
	oldAgent, _ := r.s.id.current()

	ca2 := r.n.newCA(t)
	r.n.signer.Store(ca2)
	tainted := hex.EncodeToString(r.n.ca.SubjectKeyId)
	taint := &tallyv1.SyncEntriesResponse{Revision: 1, Bundle: r.n.bundleJSON(t, r.n.ca, ca2.cert), TaintedX509Ids: []string{tainted}}
	r.n.syncExtra.Store(taint) // for the streams to come
	require.Eventually(t, func() bool { return r.n.openStreams() == 1 }, 10*time.Second, time.Millisecond)
	taintAt := r.clk.Now()
	r.n.push(taint)
	require.Equal(t, old.CertChain, next(t, sub).SVIDs[0].CertChain, "the bundle's update: the old SVID until the new one")
	require.Eventually(t, func() bool { return r.s.taints().has(tainted) }, 10*time.Second, time.Millisecond)

	// Both renew 15 s after the taint (the jitter is fixed at half the window).
	var renewed workloadapi.X509SVID
	for i := 0; i < 100 && renewed.CertChain == nil; i++ {
		select {
		case u := <-sub.Updates():
			if got := u.SVIDs[0]; string(got.CertChain) != string(old.CertChain) {
				renewed = got
			}
		case <-time.After(20 * time.Millisecond):
			r.clk.Step(time.Second)
		}
	}
	require.NotNil(t, renewed.CertChain, "the workload got its new SVID")
	require.Equal(t, hex.EncodeToString(ca2.cert.SubjectKeyId), hex.EncodeToString(leafOf(t, renewed).AuthorityKeyId))
	require.Equal(t, "renew", r.n.next(t), "the agent SVID too")
	require.Eventually(t, func() bool {
		now, _ := r.s.id.current()
		return now.Certificates[0].SerialNumber.Cmp(oldAgent.Certificates[0].SerialNumber) != 0
	}, 10*time.Second, time.Millisecond)
	newAgent, _ := r.s.id.current()
	require.Equal(t, hex.EncodeToString(ca2.cert.SubjectKeyId), signerID(newAgent.Certificates))
	require.Less(t, newAgent.Certificates[0].NotBefore.Sub(taintAt), 30*time.Second, "within the window, not at half life")
	require.Eventually(t, func() bool {
		return value(t, r.s.cfg.Metrics.agentSVIDExpiry) == float64(newAgent.Certificates[0].NotAfter.Unix())
	}, 10*time.Second, time.Millisecond)
	require.NotZero(t, value(t, r.s.cfg.Metrics.lastRotation))

	signedByNew := func(rep reported) bool {
		svids := rep.req.GetSvids()
		return len(svids) == 1 && svids[0].GetSignerId() == hex.EncodeToString(ca2.cert.SubjectKeyId)
	}
	for i := 0; !signedByNew(r.stepUntilReport(t)); i++ {
		require.Less(t, i, 5, "no report of the new SVID")
	}
	require.Equal(t, 1.0, value(t, r.c.cfg.Metrics.rotations), "the renewal replaced the old SVID")
}

func errUnavailable() error { return status.Error(codes.Unavailable, "server restarting") }
