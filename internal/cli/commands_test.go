package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/attest/jointoken"
	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/store"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func TestTokenGenerate(t *testing.T) {
	srv, socket := startAdmin(t)
	ctx := context.Background()

	res := runCLI(t, socket, "", "token", "generate")
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.CreateJoinTokenRequest{TtlSeconds: 600}, srv.requests("CreateJoinToken")[0])
	m := regexp.MustCompile(`^Token: ([0-9a-f]{32})\nExpires: 2023-11-14T22:23:20Z\n$`).FindStringSubmatch(res.stdout)
	require.NotNil(t, m, res.stdout)
	first := m[1]

	res = runCLI(t, socket, "", "token", "generate", "-o", "json", "--ttl", "1h", "--spiffe-id", "spiffe://example.org/node1")
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.CreateJoinTokenRequest{TtlSeconds: 3600, SpiffeId: "spiffe://example.org/node1"},
		srv.requests("CreateJoinToken")[1])
	var out tokenJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.Regexp(t, `^[0-9a-f]{32}$`, out.Token)
	require.NotEqual(t, first, out.Token)
	require.JSONEq(t, `{"token": "`+out.Token+`", "expires_at": "2023-11-14T23:13:20Z", "spiffe_id": "spiffe://example.org/node1"}`, res.stdout)

	// The server stored both tokens, under their public IDs, for an agent
	// to use once.
	for _, want := range []store.JoinToken{
		{Token: jointoken.TokenID(first), ExpiresAt: testNow.Add(10 * time.Minute).UTC()},
		{Token: jointoken.TokenID(out.Token), ExpiresAt: testNow.Add(time.Hour).UTC(), Alias: "spiffe://example.org/node1"},
	} {
		got, err := srv.store.ConsumeJoinToken(ctx, want.Token, testNow)
		require.NoError(t, err)
		require.Equal(t, want.Alias, got.Alias)
		require.True(t, want.ExpiresAt.Equal(got.ExpiresAt), "expires %s, want %s", got.ExpiresAt, want.ExpiresAt)
	}

	// The server's limits are the server's.
	res = runCLI(t, socket, "", "token", "generate", "--ttl", "25h")
	require.Equal(t, 1, res.code)
	require.Empty(t, res.stdout)
	require.Equal(t, "Error: create join token: invalid request: ttl: 25h0m0s exceeds the maximum 24h0m0s (InvalidArgument)\n", res.stderr)
}

func TestAgentCommands(t *testing.T) {
	srv, socket := startAdmin(t)
	ctx := context.Background()
	agent := testAgent()
	srv.addAgent(t, agent)
	id := agent.SpiffeId

	res := runCLI(t, socket, "", "agent", "list")
	require.Equal(t, 0, res.code, res.stderr)
	require.Contains(t, res.stdout, "spiffe://example.org/agent/join_token/abc  join_token   2023-11-14T23:13:20Z  false\n")

	res = runCLI(t, socket, "", "agent", "show", id)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.GetAgentRequest{SpiffeId: id}, srv.requests("GetAgent")[0])
	require.Contains(t, res.stdout, "Serial number:     42\n")

	res = runCLI(t, socket, "", "-o", "json", "agent", "ban", id)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.BanAgentRequest{SpiffeId: id}, srv.requests("BanAgent")[0])
	var banned agentJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &banned))
	require.True(t, banned.Banned)
	require.Equal(t, id, banned.SPIFFEID)
	stored, err := srv.store.GetAgent(ctx, id)
	require.NoError(t, err)
	require.True(t, stored.Banned, "the ban is stored")
	require.Equal(t, "42", stored.SerialNumber)

	res = runCLI(t, socket, "", "agent", "list")
	require.Equal(t, 0, res.code, res.stderr)
	require.Contains(t, res.stdout, "spiffe://example.org/agent/join_token/abc  join_token   2023-11-14T23:13:20Z  true\n")

	res = runCLI(t, socket, "", "agent", "evict", id)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.EvictAgentRequest{SpiffeId: id}, srv.requests("EvictAgent")[0])
	require.Equal(t, "Agent "+id+" evicted.\n", res.stdout)
	_, err = srv.store.GetAgent(ctx, id)
	require.ErrorIs(t, err, store.ErrNotFound)

	res = runCLI(t, socket, "", "-o", "json", "agent", "list")
	require.Equal(t, 0, res.code, res.stderr)
	require.JSONEq(t, `{"agents": []}`, res.stdout)

	res = runCLI(t, socket, "", "agent", "evict", id)
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: evict agent "+id+": badgerstore: delete agent \""+id+"\": store: not found (NotFound)\n", res.stderr)

	res = runCLI(t, socket, "", "agent", "show", id)
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, "(NotFound)\n")

	calls := srv.callCount()
	res = runCLI(t, socket, "", "agent", "ban", "node1")
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, `Error: agent SPIFFE ID "node1": `)
	require.Equal(t, calls, srv.callCount())
}

func TestBundleShow(t *testing.T) {
	srv, socket := startAdmin(t)
	bundle := srv.authority.Bundle()
	authorities := bundle.X509Authorities()
	require.NotEmpty(t, authorities)
	var ders [][]byte
	for _, c := range authorities {
		ders = append(ders, c.Raw)
	}
	seq, ok := bundle.SequenceNumber()
	require.True(t, ok)

	t.Run("pem", func(t *testing.T) {
		res := runCLI(t, socket, "", "bundle", "show")
		require.Equal(t, 0, res.code, res.stderr)
		rest := []byte(res.stdout)
		for _, want := range authorities {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			require.NotNil(t, block)
			require.Equal(t, "CERTIFICATE", block.Type)
			cert, err := x509.ParseCertificate(block.Bytes)
			require.NoError(t, err)
			require.True(t, cert.Equal(want))
		}
		require.Empty(t, rest)
	})
	t.Run("spiffe", func(t *testing.T) {
		res := runCLI(t, socket, "", "bundle", "show", "--format", "spiffe")
		require.Equal(t, 0, res.code, res.stderr)
		b, err := spiffebundle.Parse(testTD, []byte(res.stdout))
		require.NoError(t, err)
		require.True(t, b.Equal(bundle), "the server's bundle, JWT authorities and all")
		require.NotEmpty(t, b.JWTAuthorities())
	})
	t.Run("pem json", func(t *testing.T) {
		res := runCLI(t, socket, "", "bundle", "show", "-o", "json")
		require.Equal(t, 0, res.code, res.stderr)
		var out pemBundleJSON
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
		require.Equal(t, seq, out.Sequence)
		require.Equal(t, certificatePEMs(ders), out.X509Authorities)
	})
	t.Run("spiffe json", func(t *testing.T) {
		res := runCLI(t, socket, "", "bundle", "show", "-o", "json", "--format", "spiffe")
		require.Equal(t, 0, res.code, res.stderr)
		var out spiffeBundleJSON
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
		require.Equal(t, seq, out.Sequence)
		want, err := bundle.Marshal()
		require.NoError(t, err)
		require.JSONEq(t, string(want), string(out.SPIFFEBundle))
	})
	t.Run("bad format", func(t *testing.T) {
		calls := srv.callCount()
		res := runCLI(t, socket, "", "bundle", "show", "--format", "jwks")
		require.Equal(t, 1, res.code)
		require.Contains(t, res.stderr, `Error: --format "jwks": want pem or spiffe`)
		require.Equal(t, calls, srv.callCount())
	})
}

// verifyJWT checks token's signature against the server's bundle and returns
// its claims. Times are not checked: the server's clock is stopped at testNow.
func verifyJWT(t *testing.T, srv *adminServer, token string) jwt.Claims {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	require.NoError(t, err)
	require.Len(t, tok.Headers, 1)
	key, ok := srv.authority.Bundle().FindJWTAuthority(tok.Headers[0].KeyID)
	require.True(t, ok, "signed by a JWT authority of the bundle")
	var claims jwt.Claims
	require.NoError(t, tok.Claims(key, &claims))
	return claims
}

func TestJWTMint(t *testing.T) {
	srv, socket := startAdmin(t)

	res := runCLI(t, socket, "", "jwt", "mint", "--spiffe-id", "spiffe://example.org/w", "--audience", "a", "--audience", "b", "--ttl", "5m")
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.MintJWTSVIDRequest{SpiffeId: "spiffe://example.org/w", Audience: []string{"a", "b"}, TtlSeconds: 300},
		srv.requests("MintJWTSVID")[0])
	token, ok := strings.CutSuffix(res.stdout, "\n")
	require.True(t, ok, res.stdout)
	require.NotContains(t, token, "\n")
	claims := verifyJWT(t, srv, token)
	require.Equal(t, "spiffe://example.org/w", claims.Subject)
	require.Equal(t, jwt.Audience{"a", "b"}, claims.Audience)
	require.Equal(t, testIssuer, claims.Issuer)
	require.Equal(t, testNow.Add(5*time.Minute).Unix(), claims.Expiry.Time().Unix())

	res = runCLI(t, socket, "", "jwt", "mint", "-o", "json", "--spiffe-id", "spiffe://example.org/w", "--audience", "a")
	require.Equal(t, 0, res.code, res.stderr)
	var out jwtJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.JSONEq(t, `{"token": "`+out.Token+`", "expires_at": "2023-11-14T22:18:20Z"}`, res.stdout)
	claims = verifyJWT(t, srv, out.Token)
	require.Equal(t, jwt.Audience{"a"}, claims.Audience)
	require.Equal(t, testNow.Add(ca.DefaultJWTSVIDTTL).Unix(), claims.Expiry.Time().Unix(), "the server's default TTL")

	res = runCLI(t, socket, "", "jwt", "mint", "--spiffe-id", "spiffe://example.org/w")
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, "Error: --audience is required")
	require.Len(t, srv.requests("MintJWTSVID"), 2)

	// An ID tallyctl accepts but the server does not mint for.
	res = runCLI(t, socket, "", "jwt", "mint", "--spiffe-id", "spiffe://other.org/w", "--audience", "a")
	require.Equal(t, 1, res.code)
	require.Empty(t, res.stdout)
	require.Equal(t, "Error: mint JWT-SVID: invalid request: spiffe_id: \"spiffe://other.org/w\" is not in trust domain \"example.org\" (InvalidArgument)\n", res.stderr)
	require.Len(t, srv.requests("MintJWTSVID"), 3)
}

func TestHealthcheck(t *testing.T) {
	srv, socket := startAdmin(t)

	res := runCLI(t, socket, "", "healthcheck")
	require.Equal(t, 0, res.code, res.stderr)
	require.Equal(t, "Server is healthy.\n", res.stdout)
	require.Len(t, srv.requests("GetBundle"), 1)
	// The server knew the caller by its peer credentials: this process.
	callers := srv.callers()
	require.Len(t, callers, 1)
	require.Equal(t, int32(os.Getpid()), callers[0].PID)
	require.Equal(t, uint32(os.Getuid()), callers[0].UID)
	require.Equal(t, uint32(os.Getgid()), callers[0].GID)

	res = runCLI(t, socket, "", "healthcheck", "-o", "json")
	require.Equal(t, 0, res.code, res.stderr)
	require.JSONEq(t, `{"healthy": true}`, res.stdout)

	res = runCLI(t, socket+".missing", "", "healthcheck")
	require.Equal(t, 1, res.code)
	require.Empty(t, res.stdout)
	require.Contains(t, res.stderr, "Error: server is unhealthy: get bundle: ")
	require.Contains(t, res.stderr, "(Unavailable)\n")
}

func TestSocketFromEnv(t *testing.T) {
	srv, socket := startAdmin(t)
	t.Setenv(socketEnv, socket)

	res := runCLI(t, "", "", "healthcheck")
	require.Equal(t, 0, res.code, res.stderr)
	require.Len(t, srv.requests("GetBundle"), 1)
}

// TestTimeout runs against a server that accepts connections and never
// answers.
func TestTimeout(t *testing.T) {
	socket := startSilentServer(t)

	res := runCLI(t, socket, "", "--timeout", "100ms", "bundle", "show")
	require.Equal(t, 1, res.code)
	require.Empty(t, res.stdout)
	require.Contains(t, res.stderr, "Error: get bundle: ")
	require.Contains(t, res.stderr, "(DeadlineExceeded)\n")
}

func TestGlobalFlagErrors(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{args: []string{"-o", "yaml", "healthcheck"}, wantErr: "Error: --output \"yaml\": want text or json\nRun 'tallyctl healthcheck --help' for usage.\n"},
		{args: []string{"--timeout", "0s", "healthcheck"}, wantErr: "Error: --timeout 0s: must be positive\nRun 'tallyctl healthcheck --help' for usage.\n"},
		{args: []string{"entry", "list", "--bogus"}, wantErr: "Error: unknown flag: --bogus\nRun 'tallyctl entry list --help' for usage.\n"},
		{args: []string{"entry", "show"}, wantErr: "Error: want one entry ID, got 0 argument(s)\nRun 'tallyctl entry show --help' for usage.\n"},
	}
	for _, tt := range tests {
		t.Run(tt.args[len(tt.args)-1], func(t *testing.T) {
			srv, socket := startAdmin(t)
			res := runCLI(t, socket, "", tt.args...)
			require.Equal(t, 1, res.code)
			require.Equal(t, tt.wantErr, res.stderr)
			require.Zero(t, srv.callCount())
		})
	}
}

// TestClientFactory checks that the injected factory is what commands use.
func TestClientFactory(t *testing.T) {
	root := newRootCommand(func(context.Context) (tallyv1.AdminClient, io.Closer, error) {
		return nil, nil, errors.New("no client today")
	})
	var stdout, stderr bytes.Buffer
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	root.SetArgs([]string{"agent", "list"})
	require.Equal(t, 1, Execute(context.Background(), root))
	require.Equal(t, "Error: no client today\n", stderr.String())
}
