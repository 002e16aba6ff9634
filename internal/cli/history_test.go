package cli

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/tallyid/tally/attest/jointoken"
	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/api"
	"github.com/tallyid/tally/ca/records"
	"github.com/tallyid/tally/internal/peercred"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// startHistoryAdmin is startAdmin with the issuance history recorded, as
// tally-server configures it: an Admin API on the same authority, store
// and clock with a records.Recorder, served on a socket of its own.
// Requests are recorded on the returned adminServer.
func startHistoryAdmin(t *testing.T) (*adminServer, *api.Admin, *records.Recorder, string) {
	t.Helper()
	srv, _ := startAdmin(t)
	rec := records.New(records.Config{Clock: srv.clock})
	admin := api.NewAdmin(api.AdminConfig{
		TrustDomain: testTD,
		Authority:   srv.authority,
		Registry:    srv.registry,
		Store:       srv.store,
		TokenKey:    jointoken.TokenID,
		Records:     rec,
		Clock:       srv.clock,
		Logger:      slog.New(slog.DiscardHandler),
	})
	sockDir, err := os.MkdirTemp("", "tallyctl")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	socket := filepath.Join(sockDir, "admin.sock")
	lis, err := net.Listen("unix", socket)
	require.NoError(t, err)
	require.NoError(t, os.Chmod(socket, 0o600))
	gs := grpc.NewServer(grpc.Creds(peercred.Credentials()), grpc.UnaryInterceptor(srv.record))
	tallyv1.RegisterAdminServer(gs, admin)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return srv, admin, rec, socket
}

func TestSVIDHistory(t *testing.T) {
	srv, admin, rec, socket := startHistoryAdmin(t)
	web, agent := "spiffe://example.org/web", "spiffe://example.org/tally/agent/join_token/abc"
	nb := testNow.Add(-10 * time.Second)
	rec.Record(records.Event{Kind: records.KindX509, SPIFFEID: web, Serial: "3e8", AgentID: agent, EntryID: "e1",
		NotBefore: nb, NotAfter: nb.Add(time.Hour), KeyID: "ab12"})
	srv.clock.Step(30 * time.Minute)
	rec.Record(records.Event{Kind: records.KindX509, SPIFFEID: web, Serial: "3e9", AgentID: agent, EntryID: "e1",
		NotBefore: nb.Add(30 * time.Minute), NotAfter: nb.Add(90 * time.Minute), KeyID: "ab12", Renewal: true})
	rec.Record(records.Event{Kind: records.KindJWT, SPIFFEID: web, AgentID: agent, EntryID: "e1", Failed: true, Detail: "entry\x1b[31m gone"})
	// A real mint, recorded by the Admin API itself.
	_, err := admin.MintJWTSVID(context.Background(), &tallyv1.MintJWTSVIDRequest{SpiffeId: "spiffe://example.org/minted", Audience: []string{"a"}})
	require.NoError(t, err)

	t.Run("one SPIFFE ID, as a table", func(t *testing.T) {
		res := runCLI(t, socket, "", "svid", "history", "--spiffe-id", web)
		require.Equal(t, 0, res.code, res.stderr)
		requireProto(t, &tallyv1.ListIssuancesRequest{SpiffeId: web, Limit: 100}, srv.requests("ListIssuances")[0])
		at := testNow.Add(30 * time.Minute).UTC().Format(time.RFC3339)
		require.Equal(t, ""+
			"TIME                  KIND  EVENT    SERIAL  EXPIRES               KEY   AGENT                                            DETAIL\n"+
			at+"  jwt   failed   -       -                     -     "+agent+"  \"entry\\x1b[31m gone\"\n"+
			at+"  x509  renewal  3e9     "+nb.Add(90*time.Minute).UTC().Format(time.RFC3339)+"  ab12  "+agent+"  -\n"+
			testNow.UTC().Format(time.RFC3339)+"  x509  first    3e8     "+nb.Add(time.Hour).UTC().Format(time.RFC3339)+"  ab12  "+agent+"  -\n",
			res.stdout)
	})
	t.Run("everything, as JSON", func(t *testing.T) {
		res := runCLI(t, socket, "", "-o", "json", "svid", "history", "--limit", "2")
		require.Equal(t, 0, res.code, res.stderr)
		var out issuancesJSON
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
		require.Len(t, out.Issuances, 2)
		minted := out.Issuances[0]
		require.Equal(t, "jwt", minted.Kind)
		require.Equal(t, "spiffe://example.org/minted", minted.SPIFFEID)
		require.Equal(t, activeSlotID(t, srv.authority, ca.KindJWT), minted.KeyID)
		require.Empty(t, minted.AgentID)
		require.False(t, minted.Failed)
		failed := out.Issuances[1]
		require.True(t, failed.Failed)
		require.Equal(t, "entry\x1b[31m gone", failed.Detail, "JSON keeps the text; its escaping is writeJSON's")
		require.Equal(t, testNow.Add(30*time.Minute).UTC().Format(time.RFC3339Nano), failed.IssuedAt)
	})
	t.Run("nothing recorded", func(t *testing.T) {
		res := runCLI(t, socket, "", "svid", "history", "--spiffe-id", "spiffe://example.org/nobody")
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, "No recorded issuances.\n", res.stdout)
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a bad SPIFFE ID", []string{"--spiffe-id", "web"}, "--spiffe-id"},
		{"a zero limit", []string{"--limit", "0"}, "--limit 0"},
		{"too large a limit", []string{"--limit", "10001"}, "--limit 10001"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := srv.callCount()
			res := runCLI(t, socket, "", append([]string{"svid", "history"}, tc.args...)...)
			require.Equal(t, 1, res.code)
			require.Contains(t, res.stderr, tc.want)
			require.Contains(t, res.stderr, "--help")
			require.Equal(t, before, srv.callCount(), "refused before calling the server")
		})
	}
	t.Run("a server that records nothing", func(t *testing.T) {
		_, plain := startAdmin(t)
		res := runCLI(t, plain, "", "svid", "history")
		require.Equal(t, 1, res.code)
		require.Contains(t, res.stderr, "Unimplemented")
	})
}
