package cli

import (
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/tallyid/tally/attest/jointoken"
	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/api"
	"github.com/tallyid/tally/internal/peercred"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// startRotationAdmin is startAdmin with rotation by hand configured, as
// tally-server configures it: the Admin API on the same authority, store and
// clock, served on a socket of its own. Requests are recorded on the
// returned adminServer.
func startRotationAdmin(t *testing.T) (*adminServer, string) {
	t.Helper()
	srv, _ := startAdmin(t)
	admin := api.NewAdmin(api.AdminConfig{
		TrustDomain: testTD,
		Authority:   srv.authority,
		Rotation:    srv.authority,
		Registry:    srv.registry,
		Store:       srv.store,
		TokenKey:    jointoken.TokenID,
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
	return srv, socket
}

func activeSlotID(t *testing.T, a *ca.Authority, k ca.Kind) string {
	t.Helper()
	for _, s := range a.Slots() {
		if s.Kind == k && s.Status == ca.StatusActive {
			return s.ID
		}
	}
	t.Fatalf("no active %s key", k)
	return ""
}

func TestAuthorityCommands(t *testing.T) {
	srv, socket := startRotationAdmin(t)
	x1 := activeSlotID(t, srv.authority, ca.KindX509)
	expires := testNow.Add(24 * time.Hour).UTC().Format(time.RFC3339)

	res := runCLI(t, socket, "", "authority", "x509", "show")
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.GetAuthorityRequest{Kind: "x509"}, srv.requests("GetAuthority")[0])
	require.Regexp(t, `^KIND +ID +STATUS +NOT AFTER +TAINTED\nx509 +`+x1+` +active +`+expires+` +false\n$`, res.stdout)

	res = runCLI(t, socket, "", "-o", "json", "authority", "jwt", "show")
	require.Equal(t, 0, res.code, res.stderr)
	var shown slotsJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &shown))
	require.Len(t, shown.Slots, 1)
	require.Equal(t, slotJSON{Kind: "jwt", ID: activeSlotID(t, srv.authority, ca.KindJWT), Status: "active",
		NotBefore: testNow.UTC().Format(time.RFC3339), NotAfter: expires, ActivatedAt: testNow.UTC().Format(time.RFC3339)}, shown.Slots[0])

	// Prepare: published, not signing.
	res = runCLI(t, socket, "", "authority", "x509", "prepare")
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.AuthorityRequest{Kind: "x509"}, srv.requests("PrepareAuthority")[0])
	m := regexp.MustCompile(`^KIND +ID +STATUS +NOT AFTER +TAINTED\nx509 +([0-9a-f]+) +prepared +` + expires + ` +false\n$`).FindStringSubmatch(res.stdout)
	require.NotNil(t, m, res.stdout)
	x2 := m[1]
	require.Len(t, srv.authority.Bundle().X509Authorities(), 2)

	// Activate: refused until the key has been in the bundle for 10 minutes.
	res = runCLI(t, socket, "", "authority", "x509", "activate")
	require.Equal(t, 1, res.code)
	require.Regexp(t, `^Error: activate x509 key: ca: refused in the key's current state: x509 key `+x2+
		` was published at .* and can be activated from .*\(FailedPrecondition\)\n$`, res.stderr)
	srv.clock.Step(10 * time.Minute)
	res = runCLI(t, socket, "", "-o", "json", "authority", "x509", "activate", x2)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.AuthorityRequest{Kind: "x509", Id: x2}, srv.requests("ActivateAuthority")[1])
	var slot slotJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &slot))
	require.Equal(t, "active", slot.Status)
	require.Equal(t, x2, activeSlotID(t, srv.authority, ca.KindX509))

	// Taint the old key.
	res = runCLI(t, socket, "", "authority", "x509", "taint")
	require.Equal(t, 0, res.code, res.stderr)
	require.Regexp(t, `\nx509 +`+x1+` +old +`+expires+` +true\n$`, res.stdout)
	require.Equal(t, []string{x1}, srv.authority.TaintedX509IDs())

	// Revoke: refused while what it signed may be valid, then forced.
	res = runCLI(t, socket, "", "authority", "x509", "revoke", x1)
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, "Error: revoke x509 key "+x1+": ")
	require.Contains(t, res.stderr, "may be valid until")
	require.Contains(t, res.stderr, "(FailedPrecondition)\n")
	res = runCLI(t, socket, "", "-o", "json", "authority", "x509", "revoke", x1, "--force")
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.AuthorityRequest{Kind: "x509", Id: x1, Force: true}, srv.requests("RevokeAuthority")[1])
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &slot))
	require.Equal(t, "revoked", slot.Status)
	require.Len(t, srv.authority.Bundle().X509Authorities(), 1)

	res = runCLI(t, socket, "", "authority", "x509", "revoke", x1)
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, "(NotFound)\n")

	// Usage errors reach no server.
	calls := srv.callCount()
	for _, args := range [][]string{
		{"authority", "x509", "revoke"},
		{"authority", "x509", "activate", "a", "b"},
		{"authority", "jwt", "taint", "a", "b"},
		{"authority", "jwt", "prepare", "a"},
		{"authority", "x509", "show", "a"},
		{"authority", "x509", "activate", "--force"},
	} {
		res := runCLI(t, socket, "", args...)
		require.Equal(t, 1, res.code, args)
		require.Contains(t, res.stderr, "--help' for usage.", args)
	}
	require.Equal(t, calls, srv.callCount())
}

func TestAuthorityNotConfigured(t *testing.T) {
	_, socket := startAdmin(t)
	res := runCLI(t, socket, "", "authority", "x509", "show")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: get x509 keys: rotation by hand is not configured on this server (Unimplemented)\n", res.stderr)
}
