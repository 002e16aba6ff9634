package reserved

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
)

func TestLayout(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	require.Equal(t, "spiffe://example.org/tally/server", ServerID(td).String())
	agent, err := AgentID(td, "k8s_psat", "c1", "0d7f-uid")
	require.NoError(t, err)
	require.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/c1/0d7f-uid", agent.String())
	_, err = AgentID(td, "join_token", "a/b")
	require.Error(t, err, "a segment is one segment")

	for id, want := range map[string][2]bool{ // reserved, agent
		"spiffe://example.org/tally/server":             {true, false},
		"spiffe://example.org/tally/agent/join_token/x": {true, true},
		"spiffe://example.org/tally":                    {false, false},
		"spiffe://example.org/tallyho/agent":            {false, false},
		"spiffe://example.org/web":                      {false, false},
	} {
		parsed := spiffeid.RequireFromString(id)
		require.Equal(t, want[0], IsReserved(parsed), id)
		require.Equal(t, want[1], IsAgent(parsed), id)
	}
}
