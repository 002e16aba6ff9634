package cli

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
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

// No client sets an owner through the Admin API: create and update with
// one are InvalidArgument and write nothing.
func TestAdminRefusesOwnerFromClients(t *testing.T) {
	srv, _ := startAdmin(t)
	e := &tallyv1.Entry{SpiffeId: "spiffe://example.org/x", ParentId: "spiffe://example.org/y",
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:1"}},
		Owner:     &tallyv1.EntryOwner{Cluster: "prod", Kind: "ClusterIdentity", Name: "web", Pod: "a/b", PodUid: "u"}}
	_, err := srv.admin.BatchCreateEntries(context.Background(), &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{e}})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	assert.Contains(t, status.Convert(err).Message(), "owner is output only")
	assert.Empty(t, srv.storedEntries(t))

	stored := srv.addEntry(t, &tallyv1.Entry{SpiffeId: "spiffe://example.org/x", ParentId: "spiffe://example.org/y",
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:1"}}})
	e.Id = stored.GetId()
	_, err = srv.admin.UpdateEntry(context.Background(), &tallyv1.UpdateEntryRequest{Entry: e, Force: true})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	assert.Nil(t, srv.storedEntries(t)[0].GetOwner())
}
