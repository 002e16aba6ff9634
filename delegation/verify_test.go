package delegation

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
)

// verifyFixture is a trust domain's key and a Verifier of orders on a clock
// stopped at now. now is the real time when the test started, because
// go-spiffe checks a JWT-SVID's exp against the system clock as well.
type verifyFixture struct {
	now      time.Time
	ca       *testCA
	verifier *Verifier
}

func newVerifyFixture(t *testing.T, opts ...VerifierOption) *verifyFixture {
	t.Helper()
	fx := &verifyFixture{now: time.Now().Truncate(time.Second), ca: newTestCA(t, testTD, testKeyID)}
	opts = append([]VerifierOption{WithClock(func() time.Time { return fx.now })}, opts...)
	v, err := NewVerifier(fx.ca.bundle, ordersID, opts...)
	require.NoError(t, err)
	fx.verifier = v
	return fx
}

func (fx *verifyFixture) verify(kind Kind, token string) (*Token, error) {
	if kind == TxnToken {
		return fx.verifier.VerifyTxnToken(token)
	}
	return fx.verifier.VerifyJWTSVID(token)
}

func TestVerifyJWTSVID(t *testing.T) {
	fx := newVerifyFixture(t, WithIssuer(testIssuer))
	claims := jwtSVIDClaims(fx.now)
	token := fx.ca.sign(t, "JWT", claims)

	got, err := fx.verifier.VerifyJWTSVID(token)
	require.NoError(t, err)
	require.Equal(t, JWTSVID, got.Kind)
	require.Equal(t, testIssuer, got.Issuer)
	require.Equal(t, frontendID, got.Subject)
	require.Equal(t, []string{ordersID.String()}, got.Audience)
	require.Equal(t, []string{"orders.read", "orders.write"}, got.Scope)
	require.True(t, got.HasScope("orders.write"))
	require.False(t, got.HasScope("orders"))
	require.Equal(t, testTxn, got.Txn)
	require.Equal(t, []spiffeid.ID{frontendID, gatewayID}, got.Actors)
	require.Equal(t, fx.now, got.IssuedAt)
	require.Equal(t, fx.now.Add(5*time.Minute), got.Expiry)
	require.Nil(t, got.RequestContext)
	require.Equal(t, "jti-1", got.Claims["jti"])
	require.Equal(t, token, got.Raw)

	require.Equal(t, userIssuer, got.User.Issuer)
	require.Equal(t, "alice", got.User.Subject)
	require.Equal(t, "alice@example.com", got.User.Email)
	require.Equal(t, []string{"admin", "buyer"}, got.User.Roles)
	require.True(t, got.User.HasRole("buyer"))
	require.Equal(t, "alice", got.User.Claims["sub"])

	// No typ header is a JWT-SVID too, as go-spiffe has it.
	_, err = fx.verifier.VerifyJWTSVID(fx.ca.sign(t, "", claims))
	require.NoError(t, err)
}

func TestVerifyTxnToken(t *testing.T) {
	fx := newVerifyFixture(t, WithIssuer(testIssuer))
	token := fx.ca.sign(t, "txntoken+jwt", txnTokenClaims(fx.now))

	got, err := fx.verifier.VerifyTxnToken(token)
	require.NoError(t, err)
	require.Equal(t, TxnToken, got.Kind)
	require.Equal(t, testIssuer, got.Issuer)
	require.Equal(t, frontendID, got.Subject)
	require.Equal(t, []string{"spiffe://example.org"}, got.Audience)
	require.Equal(t, []string{"orders.read"}, got.Scope)
	require.Equal(t, testTxn, got.Txn)
	require.Equal(t, []spiffeid.ID{frontendID, gatewayID}, got.Actors)
	require.Equal(t, fx.now, got.IssuedAt)
	require.Equal(t, fx.now.Add(5*time.Minute), got.Expiry)
	require.Equal(t, "alice", got.User.Subject)
	require.Equal(t, userIssuer, got.User.Issuer)
	require.Equal(t, []string{"admin", "buyer"}, got.User.Roles)
	require.Equal(t, map[string]any{
		"authn":  "agent",
		"req_ip": "10.0.0.7",
		"agent":  "spiffe://example.org/tally/agent/node-1",
	}, got.RequestContext)
	require.Equal(t, "alice", got.Claims["sub"])
	require.Equal(t, token, got.Raw)
}

func TestVerifyRefuses(t *testing.T) {
	fx := newVerifyFixture(t)
	now := fx.now
	svid, txn := jwtSVIDClaims(now), txnTokenClaims(now)
	pubDER, err := x509.MarshalPKIXPublicKey(fx.ca.key.Public())
	require.NoError(t, err)
	deep := make([]spiffeid.ID, MaxActors+1)
	deep[0] = frontendID
	for i := 1; i < len(deep); i++ {
		deep[i] = spiffeid.RequireFromPathf(testTD, "/hop-%d", i)
	}
	otherCA := newTestCA(t, testTD, "key-2") // a key of nobody's bundle
	impostor := newTestCA(t, testTD, testKeyID)

	for _, tc := range []struct {
		name  string
		kind  Kind
		token string
		is    error  // errors.Is target, if any
		msg   string // substring of the error
	}{
		// The type of token.
		{name: "Txn-Token as JWT-SVID", kind: JWTSVID, token: fx.ca.sign(t, "txntoken+jwt", svid), msg: "header type"},
		{name: "JWT-SVID as Txn-Token", kind: TxnToken, token: fx.ca.sign(t, "JWT", txn), msg: `typ "JWT"`},
		{name: "Txn-Token without typ", kind: TxnToken, token: fx.ca.sign(t, "", txn), msg: `typ ""`},
		{name: "Txn-Token typ with a media type prefix", kind: TxnToken, token: fx.ca.sign(t, "application/txntoken+jwt", txn), msg: "typ"},
		{name: "real JWT-SVID as Txn-Token", kind: TxnToken, token: fx.ca.sign(t, "JWT", svid), msg: "typ"},

		// Algorithms and keys.
		{name: "JWT-SVID alg none", kind: JWTSVID, token: unsigned(t, "JWT", svid), msg: "unable to parse"},
		{name: "Txn-Token alg none", kind: TxnToken, token: unsigned(t, "txntoken+jwt", txn), msg: "unexpected signature algorithm"},
		{name: "JWT-SVID HS256 with the public key", kind: JWTSVID, token: sign(t, pubDER, jose.HS256, testKeyID, "JWT", svid), msg: "unable to parse"},
		{name: "Txn-Token HS256 with the public key", kind: TxnToken, token: sign(t, pubDER, jose.HS256, testKeyID, "txntoken+jwt", txn), msg: "unexpected signature algorithm"},
		{name: "JWT-SVID unknown kid", kind: JWTSVID, token: otherCA.sign(t, "JWT", svid), msg: `no JWT authority "key-2"`},
		{name: "Txn-Token unknown kid", kind: TxnToken, token: otherCA.sign(t, "txntoken+jwt", txn), msg: `no key "key-2"`},
		{name: "JWT-SVID known kid, other key", kind: JWTSVID, token: impostor.sign(t, "JWT", svid), msg: "unable to get claims"},
		{name: "Txn-Token known kid, other key", kind: TxnToken, token: impostor.sign(t, "txntoken+jwt", txn), msg: "signature does not verify"},
		{name: "Txn-Token no kid", kind: TxnToken, token: sign(t, fx.ca.key, jose.ES256, "", "txntoken+jwt", txn), msg: "no kid"},
		{name: "JWT-SVID tampered", kind: JWTSVID, token: tamper(fx.ca.sign(t, "JWT", svid)), msg: "jwtsvid"},
		{name: "Txn-Token tampered", kind: TxnToken, token: tamper(fx.ca.sign(t, "txntoken+jwt", txn)), msg: "Txn-Token"},

		// Times: JWT-SVIDs against both clocks, Txn-Tokens against the Verifier's.
		{name: "JWT-SVID expired", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) {
			c["iat"], c["exp"] = now.Add(-10*time.Minute).Unix(), now.Add(-2*time.Minute).Unix()
		})), msg: "expired"},
		{name: "Txn-Token expired", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			c["iat"], c["exp"] = now.Add(-10*time.Minute).Unix(), now.Add(-time.Minute).Unix()
		})), is: jwt.ErrExpired},
		{name: "Txn-Token issued in the future", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			c["iat"] = now.Add(2 * time.Minute).Unix()
		})), is: jwt.ErrIssuedInTheFuture},
		{name: "JWT-SVID no iat", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) { delete(c, "iat") })), msg: "no iat"},
		{name: "Txn-Token no exp", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) { delete(c, "exp") })), msg: "no exp"},

		// Audience.
		{name: "JWT-SVID wrong audience", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) {
			c["aud"] = []string{"spiffe://example.org/billing"}
		})), msg: "expected audience"},
		{name: "Txn-Token of another trust domain's audience", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			c["aud"] = otherTD.IDString()
		})), msg: "audience"},
		{name: "Txn-Token bare trust domain audience", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			c["aud"] = "example.org"
		})), msg: "audience"},
		{name: "Txn-Token second audience", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			c["aud"] = []string{testTD.IDString(), "spiffe://example.org/x"}
		})), msg: "audience"},

		// The user and the transaction.
		{name: "JWT-SVID plain, not delegated", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) {
			delete(c, "usr")
			delete(c, "act")
			delete(c, "txn")
		})), is: ErrNotDelegated},
		{name: "JWT-SVID missing usr", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) { delete(c, "usr") })), is: ErrNotDelegated},
		{name: "Txn-Token missing tctx.usr", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			c["tctx"] = map[string]any{}
		})), is: ErrNotDelegated},
		{name: "Txn-Token usr only at the top", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			delete(c, "tctx")
			c["usr"] = testUser()
		})), is: ErrNotDelegated},
		{name: "usr without sub", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) {
			c["usr"] = map[string]any{"iss": userIssuer}
		})), is: ErrNotDelegated},
		{name: "usr with empty iss", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			c["tctx"] = map[string]any{"usr": map[string]any{"iss": "", "sub": "alice"}}
		})), msg: "usr.iss"},
		{name: "usr roles not a list", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) {
			c["usr"] = with(testUser(), func(u map[string]any) { u["roles"] = "admin" })
		})), msg: "usr.roles"},
		{name: "missing txn", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) { delete(c, "txn") })), is: ErrNotDelegated},
		{name: "Txn-Token missing sub", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) { delete(c, "sub") })), is: ErrNotDelegated},
		{name: "Txn-Token missing req_wl", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) { delete(c, "req_wl") })), msg: "no req_wl"},
		{name: "Txn-Token req_wl not a SPIFFE ID", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) { c["req_wl"] = "frontend" })), msg: "req_wl"},
		{name: "scope not a string", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) { c["scope"] = []string{"orders.read"} })), msg: "claims"},

		// The actor chain.
		{name: "JWT-SVID missing act", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) { delete(c, "act") })), is: ErrNotDelegated},
		{name: "JWT-SVID act outermost is not sub", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) {
			c["act"] = actChain(gatewayID, frontendID)
		})), is: ErrActorChain},
		{name: "Txn-Token act outermost is not req_wl", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			c["act"] = actChain(gatewayID)
		})), is: ErrActorChain},
		{name: "act too deep", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) {
			c["act"] = actChain(deep...)
		})), is: ErrActorChain},
		{name: "act sub not a SPIFFE ID", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			c["act"] = map[string]any{"sub": frontendID.String(), "act": map[string]any{"sub": "gateway"}}
		})), is: ErrActorChain},
		{name: "act without sub", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) {
			c["act"] = map[string]any{"sub": frontendID.String(), "act": map[string]any{}}
		})), is: ErrActorChain},
		{name: "act not an object", kind: JWTSVID, token: fx.ca.sign(t, "JWT", with(svid, func(c map[string]any) { c["act"] = frontendID.String() })), msg: "claims"},

		// Size.
		{name: "JWT-SVID too large", kind: JWTSVID, token: strings.Repeat("a", MaxTokenSize+1), is: ErrTooLarge},
		{name: "Txn-Token too large", kind: TxnToken, token: fx.ca.sign(t, "txntoken+jwt", with(txn, func(c map[string]any) {
			c["rctx"] = map[string]any{"pad": strings.Repeat("x", MaxTokenSize)}
		})), is: ErrTooLarge},
		{name: "garbage", kind: TxnToken, token: "not.a.jwt", msg: "Txn-Token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fx.verify(tc.kind, tc.token)
			require.Error(t, err)
			require.Nil(t, got)
			if tc.is != nil {
				require.ErrorIs(t, err, tc.is)
			}
			require.ErrorContains(t, err, tc.msg)
			require.True(t, strings.HasPrefix(err.Error(), "delegation: "+tc.kind.String()+": "), err.Error())
		})
	}
}

// tamper changes the last character of the payload of a compact JWS.
func tamper(token string) string {
	parts := strings.Split(token, ".")
	p := []byte(parts[1])
	if p[len(p)-2] == 'A' {
		p[len(p)-2] = 'B'
	} else {
		p[len(p)-2] = 'A'
	}
	parts[1] = string(p)
	return strings.Join(parts, ".")
}

func TestVerifyActorDepthLimit(t *testing.T) {
	fx := newVerifyFixture(t)
	actors := make([]spiffeid.ID, MaxActors)
	actors[0] = frontendID
	for i := 1; i < len(actors); i++ {
		actors[i] = spiffeid.RequireFromPathf(testTD, "/hop-%d", i)
	}
	token := fx.ca.sign(t, "JWT", with(jwtSVIDClaims(fx.now), func(c map[string]any) { c["act"] = actChain(actors...) }))
	got, err := fx.verifier.VerifyJWTSVID(token)
	require.NoError(t, err)
	require.Equal(t, actors, got.Actors)
}

func TestVerifyClock(t *testing.T) {
	fx := newVerifyFixture(t)
	jwtSVID := fx.ca.sign(t, "JWT", jwtSVIDClaims(fx.now))
	txnToken := fx.ca.sign(t, "txntoken+jwt", txnTokenClaims(fx.now))

	// Within the clock skew of exp: still valid.
	fx.now = fx.now.Add(5*time.Minute + clockSkew - time.Second)
	_, err := fx.verifier.VerifyTxnToken(txnToken)
	require.NoError(t, err)

	// The JWT-SVID is valid for the system clock but not for the Verifier's.
	fx.now = fx.now.Add(2 * time.Second)
	_, err = fx.verifier.VerifyJWTSVID(jwtSVID)
	require.ErrorIs(t, err, jwt.ErrExpired)
	_, err = fx.verifier.VerifyTxnToken(txnToken)
	require.ErrorIs(t, err, jwt.ErrExpired)
}

func TestVerifyIssuer(t *testing.T) {
	fx := newVerifyFixture(t, WithIssuer("https://tally.other.example"))
	_, err := fx.verifier.VerifyJWTSVID(fx.ca.sign(t, "JWT", jwtSVIDClaims(fx.now)))
	require.ErrorContains(t, err, `issuer "https://tally.example.org"`)
	_, err = fx.verifier.VerifyTxnToken(fx.ca.sign(t, "txntoken+jwt", txnTokenClaims(fx.now)))
	require.ErrorContains(t, err, `issuer "https://tally.example.org"`)
}

// TestVerifyOtherTrustDomain: with the bundles of two trust domains, a
// Txn-Token is only accepted from the Verifier's own; a JWT-SVID is verified
// with the key of its sub's trust domain.
func TestVerifyOtherTrustDomain(t *testing.T) {
	fx := newVerifyFixture(t)
	other := newTestCA(t, otherTD, "other-key")
	v, err := NewVerifier(jwtbundle.NewSet(fx.ca.bundle, other.bundle), ordersID, WithClock(func() time.Time { return fx.now }))
	require.NoError(t, err)

	otherFrontend := spiffeid.RequireFromPath(otherTD, "/frontend")
	otherTxn := with(txnTokenClaims(fx.now), func(c map[string]any) {
		c["aud"] = otherTD.IDString()
		c["req_wl"] = otherFrontend.String()
		c["act"] = actChain(otherFrontend)
	})
	_, err = v.VerifyTxnToken(other.sign(t, "txntoken+jwt", otherTxn))
	require.ErrorContains(t, err, `no key "other-key" in the bundle of "example.org"`)

	// Signed by other.org for this trust domain's audience: still not ours.
	otherTxn["aud"] = testTD.IDString()
	_, err = v.VerifyTxnToken(other.sign(t, "txntoken+jwt", otherTxn))
	require.ErrorContains(t, err, `no key "other-key"`)

	// A JWT-SVID from frontend of other.org signed by other.org is verified
	// with other.org's key, and not with example.org's.
	otherSVID := with(jwtSVIDClaims(fx.now), func(c map[string]any) {
		c["sub"] = otherFrontend.String()
		c["act"] = actChain(otherFrontend)
	})
	got, err := v.VerifyJWTSVID(other.sign(t, "JWT", otherSVID))
	require.NoError(t, err)
	require.Equal(t, otherFrontend, got.Subject)
	_, err = v.VerifyJWTSVID(fx.ca.sign(t, "JWT", otherSVID))
	require.ErrorContains(t, err, `no JWT authority "key-1" found for trust domain "other.org"`)
}

func TestNewVerifierErrors(t *testing.T) {
	_, err := NewVerifier(nil, ordersID)
	require.ErrorContains(t, err, "no bundle source")
	_, err = NewVerifier(jwtbundle.New(testTD), spiffeid.ID{})
	require.ErrorContains(t, err, "no SPIFFE ID")
}
