package cli

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tallyid/tally/delegation"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// fakeTokenExchange is the agent's TokenExchange service: it refuses calls
// without the Workload API's security header, records the requests and
// answers with resp or err.
type fakeTokenExchange struct {
	tallyv1.UnimplementedTokenExchangeServer

	mu   sync.Mutex
	reqs []*tallyv1.ExchangeRequest
	resp *tallyv1.ExchangeResponse
	err  error
}

func (f *fakeTokenExchange) Exchange(ctx context.Context, req *tallyv1.ExchangeRequest) (*tallyv1.ExchangeResponse, error) {
	if err := checkSecurityHeader(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	return f.resp, f.err
}

func (f *fakeTokenExchange) requests() []*tallyv1.ExchangeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs
}

// startTokenExchange serves f on a Unix socket in a fresh temporary directory
// until the test ends, and returns the socket path.
func startTokenExchange(t *testing.T, f *fakeTokenExchange) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tallyctl")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	lis, err := net.Listen("unix", socket)
	require.NoError(t, err)

	srv := grpc.NewServer()
	tallyv1.RegisterTokenExchangeServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return socket
}

// issuedToken is a JWT-SVID carrying a user, as the server would issue it.
func issuedToken(t *testing.T, typ string) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: newTestKey(t)},
		(&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader("kid", "jwt-key-1"))
	require.NoError(t, err)
	payload, err := json.Marshal(map[string]any{
		"iss": "https://tally.example.org",
		"sub": "spiffe://example.org/frontend",
		"aud": []string{"spiffe://example.org/orders"},
		"txn": "txn-1",
		"usr": map[string]any{"iss": "https://idp.example.com", "sub": "alice"},
		"act": map[string]any{"sub": "spiffe://example.org/frontend"},
	})
	require.NoError(t, err)
	jws, err := signer.Sign(payload)
	require.NoError(t, err)
	s, err := jws.CompactSerialize()
	require.NoError(t, err)
	return s
}

func TestExchangeText(t *testing.T) {
	token := issuedToken(t, "JWT")
	f := &fakeTokenExchange{resp: &tallyv1.ExchangeResponse{
		AccessToken:     token,
		IssuedTokenType: delegation.TokenTypeJWT,
		TokenType:       "N_A",
		ExpiresIn:       300,
		Scope:           "orders.read orders.write",
	}}
	socket := startTokenExchange(t, f)
	file := filepath.Join(t.TempDir(), "id_token")
	require.NoError(t, os.WriteFile(file, []byte("user.id.token\n"), 0o600))

	res := runCLI(t, "", "", "exchange", "--socket-path", socket,
		"--subject-token-file", file, "--subject-token-type", "id_token",
		"--audience", "spiffe://example.org/orders", "--scope", "orders.read orders.write", "--scope", "x",
		"--spiffe-id", "spiffe://example.org/frontend")
	require.Equal(t, 0, res.code, res.stderr)

	reqs := f.requests()
	require.Len(t, reqs, 1)
	want := &tallyv1.ExchangeRequest{
		SubjectToken:       "user.id.token",
		SubjectTokenType:   "urn:ietf:params:oauth:token-type:id_token",
		RequestedTokenType: "urn:ietf:params:oauth:token-type:jwt",
		Audience:           []string{"spiffe://example.org/orders"},
		Scope:              "orders.read orders.write x",
		SpiffeId:           "spiffe://example.org/frontend",
	}
	require.True(t, proto.Equal(want, reqs[0]), "want %v\ngot  %v", want, reqs[0])

	require.Equal(t, `Issued token type:  urn:ietf:params:oauth:token-type:jwt
Token type:         N_A
Expires in:         5m0s
Scope:              orders.read orders.write
Header:
{
  "alg": "ES256",
  "kid": "jwt-key-1",
  "typ": "JWT"
}
Claims (unverified):
{
  "act": {
    "sub": "spiffe://example.org/frontend"
  },
  "aud": [
    "spiffe://example.org/orders"
  ],
  "iss": "https://tally.example.org",
  "sub": "spiffe://example.org/frontend",
  "txn": "txn-1",
  "usr": {
    "iss": "https://idp.example.com",
    "sub": "alice"
  }
}
Token:
`+token+"\n", res.stdout)
}

func TestExchangeJSON(t *testing.T) {
	token := issuedToken(t, "txntoken+jwt")
	f := &fakeTokenExchange{resp: &tallyv1.ExchangeResponse{
		AccessToken:     token,
		IssuedTokenType: delegation.TokenTypeTxnToken,
		TokenType:       "N_A",
		ExpiresIn:       120,
	}}
	socket := startTokenExchange(t, f)

	res := runCLI(t, "", "  inbound.txn.token\n", "exchange", "--socket-path", socket, "-o", "json",
		"--subject-token-file", "-", "--subject-token-type", "urn:ietf:params:oauth:token-type:txn_token",
		"--requested-token-type", "txn_token")
	require.Equal(t, 0, res.code, res.stderr)

	reqs := f.requests()
	require.Len(t, reqs, 1)
	require.Equal(t, "inbound.txn.token", reqs[0].GetSubjectToken())
	require.Equal(t, delegation.TokenTypeTxnToken, reqs[0].GetSubjectTokenType())
	require.Equal(t, delegation.TokenTypeTxnToken, reqs[0].GetRequestedTokenType())
	require.Empty(t, reqs[0].GetAudience())

	var out map[string]any
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.Equal(t, token, out["access_token"])
	require.Equal(t, delegation.TokenTypeTxnToken, out["issued_token_type"])
	require.Equal(t, "N_A", out["token_type"])
	require.Equal(t, float64(120), out["expires_in"])
	require.NotContains(t, out, "scope")
	require.Equal(t, "txntoken+jwt", out["header"].(map[string]any)["typ"])
	require.Equal(t, "txn-1", out["claims"].(map[string]any)["txn"])
}

func TestExchangeRefused(t *testing.T) {
	st, err := status.New(codes.PermissionDenied, "scope orders.write\x1b[31m not granted").WithDetails(&errdetails.ErrorInfo{
		Domain: "oauth2", Reason: "invalid_scope", Metadata: map[string]string{"rule": "frontend-read"},
	})
	require.NoError(t, err)
	socket := startTokenExchange(t, &fakeTokenExchange{err: st.Err()})

	res := runCLI(t, "", "", "exchange", "--socket-path", socket,
		"--subject-token", "t", "--subject-token-type", "jwt", "--audience", "spiffe://example.org/orders")
	require.Equal(t, 1, res.code)
	require.Equal(t, `Error: exchange refused: invalid_scope: "scope orders.write\x1b[31m not granted" (rule frontend-read)`+"\n", res.stderr)

	socket = startTokenExchange(t, &fakeTokenExchange{err: status.Error(codes.PermissionDenied, "no identity issued")})
	res = runCLI(t, "", "", "exchange", "--socket-path", socket, "--subject-token", "t", "--subject-token-type", "jwt")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: exchange token: no identity issued (PermissionDenied)\n", res.stderr)
}

func TestExchangeBadFlags(t *testing.T) {
	f := &fakeTokenExchange{}
	socket := startTokenExchange(t, f)
	missing := filepath.Join(t.TempDir(), "nope")

	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		want  string
		usage bool
	}{
		{name: "bad subject type", args: []string{"--subject-token", "t", "--subject-token-type", "saml"},
			want: `--subject-token-type "saml": want id_token, access_token, jwt, txn_token or a urn:ietf:params:oauth:token-type: URI`, usage: true},
		{name: "URI prefix only", args: []string{"--subject-token", "t", "--subject-token-type", "urn:ietf:params:oauth:token-type:"},
			want: `--subject-token-type "urn:ietf:params:oauth:token-type:": want`, usage: true},
		{name: "no subject type", args: []string{"--subject-token", "t"}, want: "--subject-token-type is required", usage: true},
		{name: "bad requested type", args: []string{"--subject-token", "t", "--subject-token-type", "jwt", "--requested-token-type", "id_token"},
			want: `--requested-token-type "id_token": want jwt or txn_token`, usage: true},
		{name: "no token", args: []string{"--subject-token-type", "jwt"}, want: "--subject-token-file (or --subject-token) is required", usage: true},
		{name: "both tokens", args: []string{"--subject-token", "t", "--subject-token-file", "-", "--subject-token-type", "jwt"},
			want: "--subject-token and --subject-token-file are exclusive", usage: true},
		{name: "empty stdin", stdin: " \n", args: []string{"--subject-token-file", "-", "--subject-token-type", "jwt"},
			want: "read subject token from standard input: it is empty"},
		{name: "missing file", args: []string{"--subject-token-file", missing, "--subject-token-type", "jwt"}, want: "read subject token: open " + missing},
		{name: "bad SPIFFE ID", args: []string{"--subject-token", "t", "--subject-token-type", "jwt", "--spiffe-id", "web"},
			want: `--spiffe-id "web"`, usage: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := runCLI(t, "", tc.stdin, append([]string{"exchange", "--socket-path", socket}, tc.args...)...)
			require.Equal(t, 1, res.code)
			require.Contains(t, res.stderr, "Error: "+tc.want)
			require.Equal(t, tc.usage, strings.Contains(res.stderr, "Run 'tallyctl exchange --help' for usage."), res.stderr)
		})
	}
	require.Empty(t, f.requests())
}

func TestTokenTypeFlag(t *testing.T) {
	for value, want := range map[string]string{
		"id_token":                               "urn:ietf:params:oauth:token-type:id_token",
		"access_token":                           "urn:ietf:params:oauth:token-type:access_token",
		"jwt":                                    "urn:ietf:params:oauth:token-type:jwt",
		"txn_token":                              "urn:ietf:params:oauth:token-type:txn_token",
		"urn:ietf:params:oauth:token-type:saml2": "urn:ietf:params:oauth:token-type:saml2",
	} {
		got, err := tokenTypeFlag("subject-token-type", value)
		require.NoError(t, err, value)
		require.Equal(t, want, got)
	}
	for _, value := range []string{"", "JWT", "id-token", "urn:ietf:params:oauth:grant-type:token-exchange"} {
		_, err := tokenTypeFlag("subject-token-type", value)
		require.Error(t, err, value)
	}
}
