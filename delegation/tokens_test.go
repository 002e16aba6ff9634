package delegation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"maps"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
)

// The chain of the tests: alice logged in at the gateway, which called
// frontend, which calls orders (the service under test) with a token whose
// current actor is frontend.
var (
	testTD     = spiffeid.RequireTrustDomainFromString("example.org")
	otherTD    = spiffeid.RequireTrustDomainFromString("other.org")
	gatewayID  = spiffeid.RequireFromPath(testTD, "/gateway")
	frontendID = spiffeid.RequireFromPath(testTD, "/frontend")
	ordersID   = spiffeid.RequireFromPath(testTD, "/orders")
)

const (
	testIssuer = "https://tally.example.org"
	userIssuer = "https://idp.example.com"
	testTxn    = "6f1c2a9e-txn"
	testKeyID  = "key-1"
)

// testCA is the JWT key of one trust domain and the bundle that holds it.
type testCA struct {
	td     spiffeid.TrustDomain
	key    *ecdsa.PrivateKey
	kid    string
	bundle *jwtbundle.Bundle
}

func newTestCA(t *testing.T, td spiffeid.TrustDomain, kid string) *testCA {
	t.Helper()
	key := newKey(t)
	bundle := jwtbundle.New(td)
	require.NoError(t, bundle.AddJWTAuthority(kid, key.Public()))
	return &testCA{td: td, key: key, kid: kid, bundle: bundle}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return key
}

// sign returns claims as a compact JWS signed with ES256 by key, with header
// kid and, unless empty, typ.
func sign(t *testing.T, key any, alg jose.SignatureAlgorithm, kid, typ string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithHeader(jose.HeaderKey("kid"), kid)
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	require.NoError(t, err)
	payload, err := json.Marshal(claims)
	require.NoError(t, err)
	jws, err := signer.Sign(payload)
	require.NoError(t, err)
	s, err := jws.CompactSerialize()
	require.NoError(t, err)
	return s
}

func (ca *testCA) sign(t *testing.T, typ string, claims map[string]any) string {
	t.Helper()
	return sign(t, ca.key, jose.ES256, ca.kid, typ, claims)
}

// unsigned returns claims as a JWT with alg "none".
func unsigned(t *testing.T, typ string, claims map[string]any) string {
	t.Helper()
	header, err := json.Marshal(map[string]any{"alg": "none", "typ": typ, "kid": testKeyID})
	require.NoError(t, err)
	payload, err := json.Marshal(claims)
	require.NoError(t, err)
	enc := base64.RawURLEncoding.EncodeToString
	return enc(header) + "." + enc(payload) + "."
}

func testUser() map[string]any {
	return map[string]any{
		"iss":   userIssuer,
		"sub":   "alice",
		"email": "alice@example.com",
		"roles": []any{"admin", "buyer"},
	}
}

// actChain returns the act claim of actors, current actor first.
func actChain(actors ...spiffeid.ID) map[string]any {
	var act map[string]any
	for i := len(actors) - 1; i >= 0; i-- {
		a := map[string]any{"sub": actors[i].String()}
		if act != nil {
			a["act"] = act
		}
		act = a
	}
	return act
}

// jwtSVIDClaims are those of docs/delegation.md of a JWT-SVID that frontend
// sends to orders, issued at now.
func jwtSVIDClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss":   testIssuer,
		"sub":   frontendID.String(),
		"aud":   []string{ordersID.String()},
		"iat":   now.Unix(),
		"exp":   now.Add(5 * time.Minute).Unix(),
		"jti":   "jti-1",
		"txn":   testTxn,
		"scope": "orders.read orders.write",
		"usr":   testUser(),
		"act":   actChain(frontendID, gatewayID),
	}
}

// txnTokenClaims are those of docs/delegation.md of a Txn-Token that
// frontend sends, issued at now.
func txnTokenClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss":    testIssuer,
		"iat":    now.Unix(),
		"exp":    now.Add(5 * time.Minute).Unix(),
		"aud":    testTD.IDString(),
		"txn":    testTxn,
		"sub":    "alice",
		"scope":  "orders.read",
		"req_wl": frontendID.String(),
		"tctx":   map[string]any{"usr": testUser()},
		"rctx": map[string]any{
			"authn":  "agent",
			"req_ip": "10.0.0.7",
			"agent":  "spiffe://example.org/tally/agent/node-1",
		},
		"act": actChain(frontendID, gatewayID),
	}
}

// with returns a copy of claims changed by edit.
func with(claims map[string]any, edit func(map[string]any)) map[string]any {
	c := maps.Clone(claims)
	edit(c)
	return c
}
