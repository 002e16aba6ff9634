package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/store"
)

func newAgent(id, serial string) store.Agent {
	return store.Agent{
		ID:              id,
		AttestationType: "k8s_psat",
		SerialNumber:    serial,
		ExpiresAt:       created.Add(time.Hour),
		Selectors:       selectors("k8s_psat:cluster:c1", "k8s_psat:agent_ns:tally"),
		AttestedAt:      created,
		RenewedAt:       created,
	}
}

func normalizeAgents(agents ...store.Agent) []store.Agent {
	out := make([]store.Agent, len(agents))
	for i, a := range agents {
		a.ExpiresAt, a.AttestedAt, a.RenewedAt = a.ExpiresAt.UTC(), a.AttestedAt.UTC(), a.RenewedAt.UTC()
		out[i] = a
	}
	return out
}

func testAgents(t *testing.T, open Open) {
	n1, n2 := "spiffe://example.org/tally/agent/n1", "spiffe://example.org/tally/agent/n2"
	renewed := newAgent(n1, "2")
	renewed.PrevSerial, renewed.RenewedAt = "1", created.Add(time.Minute)
	renewed.Aliases, renewed.Banned = []string{"spiffe://example.org/alias"}, true

	tests := []struct {
		name    string
		put     []store.Agent
		delete  []string
		wantErr error // of the last delete
		want    []store.Agent
	}{
		{name: "none"},
		{name: "put", put: []store.Agent{newAgent(n2, "1"), newAgent(n1, "1")}, want: []store.Agent{newAgent(n1, "1"), newAgent(n2, "1")}},
		{name: "replace", put: []store.Agent{newAgent(n1, "1"), renewed}, want: []store.Agent{renewed}},
		{name: "delete", put: []store.Agent{newAgent(n1, "1"), newAgent(n2, "1")}, delete: []string{n1}, want: []store.Agent{newAgent(n2, "1")}},
		{name: "delete absent", put: []store.Agent{newAgent(n1, "1")}, delete: []string{n2}, wantErr: store.ErrNotFound, want: []store.Agent{newAgent(n1, "1")}},
		{name: "delete twice", put: []store.Agent{newAgent(n1, "1")}, delete: []string{n1, n1}, wantErr: store.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := open(t)
			for _, a := range tc.put {
				require.NoError(t, s.PutAgent(ctx, a))
			}
			var err error
			for _, id := range tc.delete {
				err = s.DeleteAgent(ctx, id)
			}
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
			} else {
				require.NoError(t, err)
			}

			list, err := s.ListAgents(ctx)
			require.NoError(t, err)
			require.Equal(t, normalizeAgents(tc.want...), normalizeAgents(list...))
			for _, want := range tc.want {
				got, err := s.GetAgent(ctx, want.ID)
				require.NoError(t, err)
				require.Equal(t, normalizeAgents(want), normalizeAgents(got))
			}
			for _, id := range tc.delete {
				_, err := s.GetAgent(ctx, id)
				require.ErrorIs(t, err, store.ErrNotFound)
			}
		})
	}
}
