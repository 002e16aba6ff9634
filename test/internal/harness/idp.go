package harness

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/examples/todos/idp"
)

// IDP is the todos demo's OIDC provider (zitadel/oidc's op), serving on
// loopback for the test, with Alice and Bob.
type IDP struct {
	Issuer   string
	ClientID string
}

// StartIDP serves an OIDC provider until the test ends.
func StartIDP(t testing.TB) *IDP {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	issuer := "http://" + srv.Listener.Addr().String()
	p, err := idp.New(idp.Config{Issuer: issuer, ClientID: "todos-app"})
	require.NoError(t, err)
	srv.Config.Handler = p.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	return &IDP{Issuer: issuer, ClientID: "todos-app"}
}

// Login signs user in (password user + "-password") through the code flow
// and returns the user's tokens.
func (p *IDP) Login(t testing.TB, user string) idp.Tokens {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := idp.Login(ctx, nil, p.Issuer, p.ClientID, idp.DefaultRedirectURIs[0], user, user+"-password")
	require.NoError(t, err)
	return tok
}

// ConfigFile writes a tally-server config file and returns its path.
func ConfigFile(t testing.TB, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "server.yaml")
	require.NoError(t, os.WriteFile(path, []byte(yaml), 0o600))
	return path
}
