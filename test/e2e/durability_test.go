package e2e

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

func TestRestartKeepsState(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	ctx := context.Background()
	agent, err := s.AttestJoinToken(t, s.NewToken(t, "spiffe://example.org/nodes/a"))
	require.NoError(t, err)
	_, err = s.Admin(t).BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{
		newEntry("spiffe://example.org/a", agent.ID.String(), "uid:1"),
		newEntry("spiffe://example.org/b", "spiffe://example.org/nodes/a", "uid:2"),
	}})
	require.NoError(t, err)
	token := s.NewToken(t, "")
	before := s.Bundle(t)
	entriesBefore := listAll(t, s)
	agentsBefore, err := s.Admin(t).ListAgents(ctx, &tallyv1.ListAgentsRequest{})
	require.NoError(t, err)

	s.Stop(t)
	s.Start(t)

	after := s.Bundle(t)
	require.True(t, before.Equal(after), "same keys and sequence after a restart")
	require.Equal(t, entriesBefore, listAll(t, s))
	agentsAfter, err := s.Admin(t).ListAgents(ctx, &tallyv1.ListAgentsRequest{})
	require.NoError(t, err)
	require.Len(t, agentsAfter.GetAgents(), len(agentsBefore.GetAgents()))

	// The agent's SVID from before the restart is still accepted, and its
	// entries (own and via alias) sync.
	stream, err := agent.Node.SyncEntries(ctx, &tallyv1.SyncEntriesRequest{})
	require.NoError(t, err)
	st := &syncState{entries: map[string]*tallyv1.Entry{}}
	st.recvComplete(t, stream)
	require.Len(t, st.entries, 2)
	// A token made before the restart still works once.
	_, err = s.AttestJoinToken(t, token)
	require.NoError(t, err)
}

func TestKill9LosesNoAcknowledgedWrite(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	ctx := context.Background()
	admin := s.Admin(t)
	var acked []string
	for i := range 200 {
		resp, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{
			newEntry(fmt.Sprintf("spiffe://example.org/k9/%d", i), "spiffe://example.org/node", "uid:1"),
		}})
		require.NoError(t, err)
		acked = append(acked, resp.GetEntries()[0].GetId())
	}
	token := s.NewToken(t, "")
	agent, err := s.AttestJoinToken(t, s.NewToken(t, ""))
	require.NoError(t, err)
	s.Kill(t) // kill -9 right after the last acknowledgement

	s.Start(t)
	got := map[string]bool{}
	for _, e := range listAll(t, s) {
		got[e.GetId()] = true
	}
	for _, id := range acked {
		require.True(t, got[id], "acknowledged entry %s lost", id)
	}
	_, err = s.Admin(t).GetAgent(ctx, &tallyv1.GetAgentRequest{SpiffeId: agent.ID.String()})
	require.NoError(t, err, "acknowledged agent lost")
	_, err = s.AttestJoinToken(t, token)
	require.NoError(t, err, "acknowledged join token lost")
}

func listAll(t *testing.T, s *harness.Server) []*tallyv1.Entry {
	t.Helper()
	var out []*tallyv1.Entry
	page := ""
	for {
		resp, err := s.Admin(t).ListEntries(context.Background(), &tallyv1.ListEntriesRequest{PageToken: page, PageSize: 1000})
		require.NoError(t, err)
		out = append(out, resp.GetEntries()...)
		if resp.GetNextPageToken() == "" {
			return out
		}
		page = resp.GetNextPageToken()
	}
}
