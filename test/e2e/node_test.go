package e2e

import (
	"context"
	"crypto/x509"
	"strconv"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

func TestJoinTokenAttestation(t *testing.T) {
	s := harness.StartServer(t)
	ctx := context.Background()

	t.Run("attest once, then the token is spent", func(t *testing.T) {
		token := s.NewToken(t, "")
		agent, err := s.AttestJoinToken(t, token)
		require.NoError(t, err)
		require.Regexp(t, `^spiffe://example.org/tally/agent/join_token/[0-9a-f]{32}$`, agent.ID.String())
		require.NotContains(t, agent.ID.String(), token, "the secret must not appear in the agent ID")
		_, _, err = x509svid.Verify(agent.SVID.Certificates, agent.Bundle)
		require.NoError(t, err)

		_, err = s.AttestJoinToken(t, token)
		require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	})

	t.Run("unknown and empty tokens", func(t *testing.T) {
		for _, tok := range []string{"0123456789abcdef0123456789abcdef", ""} {
			_, err := s.AttestJoinToken(t, tok)
			require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
		}
	})

	// An expired token: internal/app/server TestJoinTokenExpires, on a fake
	// clock, instead of waiting here for real time to pass.

	t.Run("racing agents: exactly one wins", func(t *testing.T) {
		token := s.NewToken(t, "")
		const n = 16
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = s.AttestJoinToken(t, token)
			}()
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			if err == nil {
				won++
			} else {
				require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
			}
		}
		require.Equal(t, 1, won)
	})

	t.Run("unknown attestation type and malformed CSR", func(t *testing.T) {
		node := tallyv1.NewNodeClient(s.Dial(t, s.Bundle(t), nil))
		_, err := node.AttestAgent(ctx, &tallyv1.AttestAgentRequest{AttestationType: "magic", Csr: harness.CSR(t, harness.NewKey(t), nil, nil)})
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		token := s.NewToken(t, "")
		_, err = node.AttestAgent(ctx, &tallyv1.AttestAgentRequest{AttestationType: "join_token", AttestationData: []byte(token), Csr: []byte("junk")})
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		_, err = s.AttestJoinToken(t, token)
		require.NoError(t, err, "a refused request must not spend the token")
	})

	require.NotContains(t, s.Log(), "0123456789abcdef0123456789abcdef", "tokens never reach the log")
}

func TestRenewEvictBan(t *testing.T) {
	s := harness.StartServer(t)
	ctx := context.Background()
	agent, err := s.AttestJoinToken(t, s.NewToken(t, ""))
	require.NoError(t, err)

	key := harness.NewKey(t)
	resp, err := agent.Node.RenewAgent(ctx, &tallyv1.RenewAgentRequest{Csr: harness.CSR(t, key, nil, nil)})
	require.NoError(t, err)
	renewed, err := x509.ParseCertificate(resp.GetSvidChain()[0])
	require.NoError(t, err)
	id, err := x509svid.IDFromCert(renewed)
	require.NoError(t, err)
	require.Equal(t, agent.ID, id)
	require.NotEqual(t, agent.SVID.Certificates[0].SerialNumber, renewed.SerialNumber)

	// A connection without a client certificate cannot renew.
	anon := tallyv1.NewNodeClient(s.Dial(t, agent.Bundle, nil))
	_, err = anon.RenewAgent(ctx, &tallyv1.RenewAgentRequest{Csr: harness.CSR(t, key, nil, nil)})
	require.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)

	_, err = s.Admin(t).BanAgent(ctx, &tallyv1.BanAgentRequest{SpiffeId: agent.ID.String()})
	require.NoError(t, err)
	_, err = agent.Node.RenewAgent(ctx, &tallyv1.RenewAgentRequest{Csr: harness.CSR(t, key, nil, nil)})
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)

	other, err := s.AttestJoinToken(t, s.NewToken(t, ""))
	require.NoError(t, err)
	_, err = s.Admin(t).EvictAgent(ctx, &tallyv1.EvictAgentRequest{SpiffeId: other.ID.String()})
	require.NoError(t, err)
	_, err = other.Node.RenewAgent(ctx, &tallyv1.RenewAgentRequest{Csr: harness.CSR(t, key, nil, nil)})
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
}

// syncState applies SyncEntries messages like an agent does.
type syncState struct {
	rev     uint64
	entries map[string]*tallyv1.Entry
	bundle  []byte
	pending map[string]*tallyv1.Entry // a snapshot being received
}

func (st *syncState) apply(m *tallyv1.SyncEntriesResponse) (complete bool) {
	if m.GetSnapshot() {
		st.pending = map[string]*tallyv1.Entry{}
	}
	target := st.entries
	if st.pending != nil {
		target = st.pending
	}
	for _, e := range m.GetUpserts() {
		target[e.GetId()] = e
	}
	for _, id := range m.GetDeletedIds() {
		delete(target, id)
	}
	if len(m.GetBundle()) > 0 {
		st.bundle = m.GetBundle()
	}
	if m.GetMore() {
		return false
	}
	if st.pending != nil {
		st.entries, st.pending = st.pending, nil
	}
	st.rev = m.GetRevision()
	return true
}

// recvComplete reads messages until the state is complete at a revision.
func (st *syncState) recvComplete(t *testing.T, stream tallyv1.Node_SyncEntriesClient) *tallyv1.SyncEntriesResponse {
	t.Helper()
	for {
		m, err := stream.Recv()
		require.NoError(t, err)
		if st.apply(m) {
			return m
		}
	}
}

func newEntry(spiffeID, parentID string, sel ...string) *tallyv1.Entry {
	e := &tallyv1.Entry{SpiffeId: spiffeID, ParentId: parentID}
	for _, s := range sel {
		e.Selectors = append(e.Selectors, &tallyv1.Selector{Type: "unix", Value: s})
	}
	return e
}

func TestSyncEntries(t *testing.T) {
	s := harness.StartServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := s.Admin(t)
	alias := "spiffe://example.org/nodes/a"
	agent, err := s.AttestJoinToken(t, s.NewToken(t, alias))
	require.NoError(t, err)
	other, err := s.AttestJoinToken(t, s.NewToken(t, ""))
	require.NoError(t, err)

	created, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{
		newEntry("spiffe://example.org/direct", agent.ID.String(), "uid:1"),
		newEntry("spiffe://example.org/via-alias", alias, "uid:2"),
		newEntry("spiffe://example.org/child", "spiffe://example.org/via-alias", "uid:3"),
		newEntry("spiffe://example.org/elsewhere", other.ID.String(), "uid:4"),
	}})
	require.NoError(t, err)
	ids := map[string]string{}
	for _, e := range created.GetEntries() {
		ids[e.GetSpiffeId()] = e.GetId()
	}

	st := &syncState{entries: map[string]*tallyv1.Entry{}}
	stream, err := agent.Node.SyncEntries(ctx, &tallyv1.SyncEntriesRequest{})
	require.NoError(t, err)
	first := st.recvComplete(t, stream)
	require.True(t, first.GetSnapshot())
	require.NotEmpty(t, st.bundle, "the first message carries the bundle")
	require.ElementsMatch(t, []string{ids["spiffe://example.org/direct"], ids["spiffe://example.org/via-alias"], ids["spiffe://example.org/child"]}, keys(st.entries),
		"own entries, alias entries and their descendants; not another agent's")

	// A change arrives as a delta on the open stream.
	more, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{newEntry("spiffe://example.org/new", agent.ID.String(), "uid:5")}})
	require.NoError(t, err)
	m := st.recvComplete(t, stream)
	require.False(t, m.GetSnapshot())
	require.Len(t, m.GetUpserts(), 1)
	require.Equal(t, more.GetEntries()[0].GetId(), m.GetUpserts()[0].GetId())
	_, err = admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{newEntry("spiffe://example.org/other2", other.ID.String(), "uid:6")}})
	require.NoError(t, err)

	upd := st.entries[ids["spiffe://example.org/direct"]]
	upd.DnsNames = []string{"direct.example.org"}
	_, err = admin.UpdateEntry(ctx, &tallyv1.UpdateEntryRequest{Entry: upd})
	require.NoError(t, err)
	m = st.recvComplete(t, stream)
	require.Len(t, m.GetUpserts(), 1, "another agent's entry is not sent")
	require.Equal(t, []string{"direct.example.org"}, m.GetUpserts()[0].GetDnsNames())

	_, err = admin.BatchDeleteEntries(ctx, &tallyv1.BatchDeleteEntriesRequest{Ids: []string{ids["spiffe://example.org/direct"]}})
	require.NoError(t, err)
	m = st.recvComplete(t, stream)
	require.Equal(t, []string{ids["spiffe://example.org/direct"]}, m.GetDeletedIds())
	require.Len(t, st.entries, 3)
	resumeAt := st.rev
	cancel()

	// Changes while disconnected, then resume from the last revision: only
	// the changes after it arrive, not a snapshot.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	late, err := admin.BatchCreateEntries(ctx2, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{newEntry("spiffe://example.org/late", alias, "uid:7")}})
	require.NoError(t, err)
	stream, err = agent.Node.SyncEntries(ctx2, &tallyv1.SyncEntriesRequest{SinceRevision: resumeAt, BundleSequence: bundleSeq(t, s, st.bundle)})
	require.NoError(t, err)
	m = st.recvComplete(t, stream)
	require.False(t, m.GetSnapshot())
	require.Len(t, m.GetUpserts(), 1)
	require.Equal(t, late.GetEntries()[0].GetId(), m.GetUpserts()[0].GetId())
	require.Empty(t, m.GetBundle(), "the bundle is not resent when unchanged")
	require.Len(t, st.entries, 4)

	// Moving a subtree away (the alias entry re-parented) yields a snapshot
	// without the entries under it.
	via := st.entries[ids["spiffe://example.org/via-alias"]]
	via.ParentId = other.ID.String()
	_, err = admin.UpdateEntry(ctx2, &tallyv1.UpdateEntryRequest{Entry: via})
	require.NoError(t, err)
	m = st.recvComplete(t, stream)
	require.True(t, m.GetSnapshot())
	require.ElementsMatch(t, []string{more.GetEntries()[0].GetId(), late.GetEntries()[0].GetId()}, keys(st.entries))
}

func bundleSeq(t *testing.T, s *harness.Server, raw []byte) uint64 {
	t.Helper()
	resp, err := s.Admin(t).GetBundle(context.Background(), &tallyv1.GetBundleRequest{})
	require.NoError(t, err)
	require.JSONEq(t, string(resp.GetSpiffeBundle()), string(raw))
	return resp.GetSequence()
}

func keys(m map[string]*tallyv1.Entry) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestSyncEntriesLargeSnapshot(t *testing.T) {
	s := harness.StartServer(t)
	ctx := context.Background()
	agent, err := s.AttestJoinToken(t, s.NewToken(t, ""))
	require.NoError(t, err)
	var batch []*tallyv1.Entry
	for i := range 2500 {
		batch = append(batch, newEntry("spiffe://example.org/w/"+strconv.Itoa(i), agent.ID.String(), "uid:1000"))
	}
	_, err = s.Admin(t).BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: batch})
	require.NoError(t, err)
	stream, err := agent.Node.SyncEntries(ctx, &tallyv1.SyncEntriesRequest{})
	require.NoError(t, err)
	st := &syncState{entries: map[string]*tallyv1.Entry{}}
	msgs := 0
	for {
		m, err := stream.Recv()
		require.NoError(t, err)
		msgs++
		if st.apply(m) {
			break
		}
	}
	require.Len(t, st.entries, 2500)
	require.Greater(t, msgs, 1, "a large snapshot is chunked")
}
