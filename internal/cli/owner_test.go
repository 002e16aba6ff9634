package cli

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
)

// An entry the Kubernetes registrar keeps: tallyctl shows its owner, and
// refuses to change or delete it without --force, changing nothing.
func TestOwnedEntryNeedsForce(t *testing.T) {
	srv, socket := startAdmin(t)
	out, err := srv.registry.WriteEntries(context.Background(), store.EntryWrites{Create: []store.Entry{{
		SPIFFEID: "spiffe://example.org/ns/shop/sa/web", ParentID: "spiffe://example.org/tally/agent/k8s_psat/prod/n1",
		Selectors: []store.Selector{{Type: "k8s", Value: "pod-uid:u1"}},
		Owner:     &store.Owner{Cluster: "prod", Kind: registry.OwnerClusterIdentity, Name: "web", Pod: "shop/web-0", PodUID: "u1"},
	}}})
	require.NoError(t, err)
	id := out.Create[0].ID

	res := runCLI(t, socket, "", "entry", "show", id)
	require.Equal(t, 0, res.code, res.stderr)
	assert.Contains(t, res.stdout, "ClusterIdentity web, cluster prod, pod shop/web-0")
	res = runCLI(t, socket, "", "entry", "show", id, "-o", "json")
	require.Equal(t, 0, res.code, res.stderr)
	var shown struct {
		Owner map[string]string `json:"owner"`
	}
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &shown))
	assert.Equal(t, map[string]string{"cluster": "prod", "kind": "ClusterIdentity", "name": "web", "pod": "shop/web-0", "pod_uid": "u1"}, shown.Owner)

	before := srv.storedEntries(t)
	for _, args := range [][]string{{"entry", "update", id, "--hint", "x"}, {"entry", "delete", id}} {
		res = runCLI(t, socket, "", args...)
		assert.Equal(t, 1, res.code, args)
		assert.Contains(t, res.stderr, `is rendered from ClusterIdentity "web" of cluster "prod"`, args)
		assert.Contains(t, res.stderr, "FailedPrecondition", args)
		require.Equal(t, before, srv.storedEntries(t), "a refused edit changes nothing")
	}

	// An owned entry's JSON cannot be fed back to create a copy by hand.
	res = runCLI(t, socket, `{"entries":[{"spiffe_id":"spiffe://example.org/x","parent_id":"spiffe://example.org/y","selectors":[{"type":"unix","value":"uid:1"}],"owner":{"cluster":"prod"}}]}`,
		"entry", "create", "--data", "-")
	assert.NotEqual(t, 0, res.code)
	assert.Contains(t, res.stderr, "has an owner")

	res = runCLI(t, socket, "", "entry", "update", id, "--hint", "x", "--force")
	require.Equal(t, 0, res.code, res.stderr)
	assert.Contains(t, res.stdout, "Owner")
	res = runCLI(t, socket, "", "entry", "delete", id, "--force")
	require.Equal(t, 0, res.code, res.stderr)
	assert.Empty(t, srv.storedEntries(t))
}
