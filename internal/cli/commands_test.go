package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func TestTokenGenerate(t *testing.T) {
	fake, socket := startFakeAdmin(t)

	res := runCLI(t, socket, "", "token", "generate")
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.CreateJoinTokenRequest{TtlSeconds: 600}, fake.requests("CreateJoinToken")[0])
	require.Equal(t, "Token: tok-123\nExpires: 2023-11-14T22:23:20Z\n", res.stdout)

	res = runCLI(t, socket, "", "token", "generate", "-o", "json", "--ttl", "1h", "--spiffe-id", "spiffe://example.org/node1")
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.CreateJoinTokenRequest{TtlSeconds: 3600, SpiffeId: "spiffe://example.org/node1"},
		fake.requests("CreateJoinToken")[1])
	require.JSONEq(t, `{"token": "tok-123", "expires_at": "2023-11-14T23:13:20Z", "spiffe_id": "spiffe://example.org/node1"}`, res.stdout)
}

func TestAgentCommands(t *testing.T) {
	fake, socket := startFakeAdmin(t)
	agent := testAgent()
	fake.addAgent(agent)
	id := agent.SpiffeId

	res := runCLI(t, socket, "", "agent", "list")
	require.Equal(t, 0, res.code, res.stderr)
	require.Contains(t, res.stdout, "spiffe://example.org/agent/join_token/abc  join_token   2023-11-14T23:13:20Z  false\n")

	res = runCLI(t, socket, "", "agent", "show", id)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.GetAgentRequest{SpiffeId: id}, fake.requests("GetAgent")[0])
	require.Contains(t, res.stdout, "Serial number:     42\n")

	res = runCLI(t, socket, "", "-o", "json", "agent", "ban", id)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.BanAgentRequest{SpiffeId: id}, fake.requests("BanAgent")[0])
	var banned agentJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &banned))
	require.True(t, banned.Banned)
	require.Equal(t, id, banned.SPIFFEID)

	res = runCLI(t, socket, "", "agent", "evict", id)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.EvictAgentRequest{SpiffeId: id}, fake.requests("EvictAgent")[0])
	require.Equal(t, "Agent "+id+" evicted.\n", res.stdout)

	res = runCLI(t, socket, "", "-o", "json", "agent", "list")
	require.Equal(t, 0, res.code, res.stderr)
	require.JSONEq(t, `{"agents": []}`, res.stdout)

	res = runCLI(t, socket, "", "agent", "evict", id)
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: evict agent "+id+": no agent "+id+" (NotFound)\n", res.stderr)

	calls := fake.callCount()
	res = runCLI(t, socket, "", "agent", "ban", "node1")
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, `Error: agent SPIFFE ID "node1": `)
	require.Equal(t, calls, fake.callCount())
}

func TestBundleShow(t *testing.T) {
	fake, socket := startFakeAdmin(t)

	t.Run("pem", func(t *testing.T) {
		res := runCLI(t, socket, "", "bundle", "show")
		require.Equal(t, 0, res.code, res.stderr)
		block, rest := pem.Decode([]byte(res.stdout))
		require.NotNil(t, block)
		require.Equal(t, "CERTIFICATE", block.Type)
		require.Empty(t, rest)
		cert, err := x509.ParseCertificate(block.Bytes)
		require.NoError(t, err)
		require.True(t, cert.Equal(fake.ca.cert))
	})
	t.Run("spiffe", func(t *testing.T) {
		res := runCLI(t, socket, "", "bundle", "show", "--format", "spiffe")
		require.Equal(t, 0, res.code, res.stderr)
		b, err := spiffebundle.Parse(testTD, []byte(res.stdout))
		require.NoError(t, err)
		require.True(t, b.HasX509Authority(fake.ca.cert))
	})
	t.Run("pem json", func(t *testing.T) {
		res := runCLI(t, socket, "", "bundle", "show", "-o", "json")
		require.Equal(t, 0, res.code, res.stderr)
		var out pemBundleJSON
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
		require.Equal(t, uint64(7), out.Sequence)
		require.Equal(t, certificatePEMs([][]byte{fake.ca.cert.Raw}), out.X509Authorities)
	})
	t.Run("spiffe json", func(t *testing.T) {
		res := runCLI(t, socket, "", "bundle", "show", "-o", "json", "--format", "spiffe")
		require.Equal(t, 0, res.code, res.stderr)
		var out spiffeBundleJSON
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
		require.Equal(t, uint64(7), out.Sequence)
		want, err := fake.spiffeBundle()
		require.NoError(t, err)
		require.JSONEq(t, string(want), string(out.SPIFFEBundle))
	})
	t.Run("bad format", func(t *testing.T) {
		res := runCLI(t, socket, "", "bundle", "show", "--format", "jwks")
		require.Equal(t, 1, res.code)
		require.Contains(t, res.stderr, `Error: --format "jwks": want pem or spiffe`)
	})
}

func TestJWTMint(t *testing.T) {
	fake, socket := startFakeAdmin(t)

	res := runCLI(t, socket, "", "jwt", "mint", "--spiffe-id", "spiffe://example.org/w", "--audience", "a", "--audience", "b", "--ttl", "5m")
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.MintJWTSVIDRequest{SpiffeId: "spiffe://example.org/w", Audience: []string{"a", "b"}, TtlSeconds: 300},
		fake.requests("MintJWTSVID")[0])
	require.Equal(t, "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n", res.stdout)

	res = runCLI(t, socket, "", "jwt", "mint", "-o", "json", "--spiffe-id", "spiffe://example.org/w", "--audience", "a")
	require.Equal(t, 0, res.code, res.stderr)
	require.JSONEq(t, `{"token": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "expires_at": "2023-11-14T22:18:20Z"}`, res.stdout)

	res = runCLI(t, socket, "", "jwt", "mint", "--spiffe-id", "spiffe://example.org/w")
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, "Error: --audience is required")
	require.Len(t, fake.requests("MintJWTSVID"), 2)
}

func TestHealthcheck(t *testing.T) {
	fake, socket := startFakeAdmin(t)

	res := runCLI(t, socket, "", "healthcheck")
	require.Equal(t, 0, res.code, res.stderr)
	require.Equal(t, "Server is healthy.\n", res.stdout)
	require.Len(t, fake.requests("GetBundle"), 1)

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
	fake, socket := startFakeAdmin(t)
	t.Setenv(socketEnv, socket)

	res := runCLI(t, "", "", "healthcheck")
	require.Equal(t, 0, res.code, res.stderr)
	require.Len(t, fake.requests("GetBundle"), 1)
}

func TestTimeout(t *testing.T) {
	fake, socket := startFakeAdmin(t)
	fake.blockGetBundle()

	res := runCLI(t, socket, "", "--timeout", "100ms", "bundle", "show")
	require.Equal(t, 1, res.code)
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
			fake, socket := startFakeAdmin(t)
			res := runCLI(t, socket, "", tt.args...)
			require.Equal(t, 1, res.code)
			require.Equal(t, tt.wantErr, res.stderr)
			require.Zero(t, fake.callCount())
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
