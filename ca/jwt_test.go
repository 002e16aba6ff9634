package ca

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestJWTSVIDConformance checks the JWT-SVID lines of SPIFFE.md on a token
// the authority issues.
func TestJWTSVIDConformance(t *testing.T) {
	e := newTestEnv(t, nil)
	id := mustID(t, "spiffe://example.org/ns/default/sa/web")
	now := e.clock.Now()

	token, exp, err := e.a.SignJWTSVID(context.Background(), JWTSVIDParams{
		ID:       id,
		Audience: []string{"spiffe://example.org/db"},
		Claims:   map[string]any{"https://tally.dev/user": "alice"},
	})
	require.NoError(t, err)
	assert.Equal(t, now.Add(5*time.Minute).Unix(), exp.Unix())

	// Compact JWS.
	assert.Len(t, strings.Split(token, "."), 3)

	// go-spiffe validates it against the bundle's JWT authorities.
	svid, err := jwtsvid.ParseAndValidate(token, e.a.Bundle(), []string{"spiffe://example.org/db"})
	require.NoError(t, err)
	assert.Equal(t, id, svid.ID)
	assert.Equal(t, []string{"spiffe://example.org/db"}, svid.Audience)
	assert.Equal(t, exp.Unix(), svid.Expiry.Unix())
	assert.Equal(t, "alice", svid.Claims["https://tally.dev/user"])
	assert.Equal(t, float64(now.Unix()), svid.Claims["iat"])

	// ... and refuses it for another audience.
	_, err = jwtsvid.ParseAndValidate(token, e.a.Bundle(), []string{"spiffe://example.org/other"})
	require.Error(t, err)

	// Header: alg ES256, typ JWT, kid naming the active key.
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	require.NoError(t, err)
	h := jws.Signatures[0].Protected
	assert.Equal(t, "ES256", h.Algorithm)
	assert.Equal(t, "JWT", h.ExtraHeaders[jose.HeaderType])
	assert.Equal(t, activeID(t, e.a, KindJWT), h.KeyID)
	_, ok := e.a.Bundle().FindJWTAuthority(h.KeyID)
	assert.True(t, ok)

	// Several audiences are carried as an array.
	token, _, err = e.a.SignJWTSVID(context.Background(), JWTSVIDParams{ID: id, Audience: []string{"a", "b"}})
	require.NoError(t, err)
	svid, err = jwtsvid.ParseAndValidate(token, e.a.Bundle(), []string{"b"})
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, svid.Audience)
}

func TestJWTSVIDBadParams(t *testing.T) {
	e := newTestEnv(t, nil)
	id := mustID(t, "spiffe://example.org/w")
	aud := []string{"x"}
	for _, tc := range []struct {
		name string
		p    JWTSVIDParams
		want string
	}{
		{"no audience", JWTSVIDParams{ID: id}, "audience required"},
		{"empty audience", JWTSVIDParams{ID: id, Audience: []string{"x", ""}}, "empty audience"},
		{"no id", JWTSVIDParams{Audience: aud}, "spiffe id required"},
		{"other trust domain", JWTSVIDParams{ID: mustID(t, "spiffe://other.org/w"), Audience: aud}, "not in trust domain"},
		{"trust domain id", JWTSVIDParams{ID: testTD.ID(), Audience: aud}, "has no path"},
		{"negative ttl", JWTSVIDParams{ID: id, Audience: aud, TTL: -time.Second}, "out of range"},
		{"ttl above CATTL/6", JWTSVIDParams{ID: id, Audience: aud, TTL: 5 * time.Hour}, "out of range"},
		{"reserved claim", JWTSVIDParams{ID: id, Audience: aud, Claims: map[string]any{"sub": "spiffe://example.org/admin"}}, `claim "sub"`},
		{"reserved exp", JWTSVIDParams{ID: id, Audience: aud, Claims: map[string]any{"exp": 1}}, `claim "exp"`},
		{"unmarshalable claim", JWTSVIDParams{ID: id, Audience: aud, Claims: map[string]any{"x": make(chan int)}}, "claims"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			token, _, err := e.a.SignJWTSVID(context.Background(), tc.p)
			require.ErrorIs(t, err, ErrInvalidParams)
			assert.Contains(t, err.Error(), tc.want)
			assert.Regexp(t, `^ca: `, err.Error())
			assert.Empty(t, token)
		})
	}
}

func TestJWTSVIDExpiryCappedAtKey(t *testing.T) {
	e := newTestEnv(t, nil)
	notAfter := activeSlot(t, e.a, KindJWT).notAfter
	// Rotation is not running: the active key is 2 minutes from expiry.
	e.clock.SetTime(notAfter.Add(-2 * time.Minute))
	token, exp, err := e.a.SignJWTSVID(context.Background(), JWTSVIDParams{ID: mustID(t, "spiffe://example.org/w"), Audience: []string{"x"}})
	require.NoError(t, err)
	assert.Equal(t, notAfter.Unix(), exp.Unix())
	claims := verifyJWT(t, e.a, token, e.clock.Now())
	assert.Equal(t, notAfter.Unix(), claims.Expiry.Time().Unix())

	e.clock.SetTime(notAfter)
	_, _, err = e.a.SignJWTSVID(context.Background(), JWTSVIDParams{ID: mustID(t, "spiffe://example.org/w"), Audience: []string{"x"}})
	require.ErrorIs(t, err, ErrNotReady)
}

// verifyJWT checks token's signature against the bundle's JWT authority named
// by its kid and validates its claims at now (go-spiffe validates at the real
// time only, which tests that move the fake clock cannot use).
func verifyJWT(t *testing.T, a *Authority, token string, now time.Time) jwt.Claims {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	require.NoError(t, err)
	key, ok := a.Bundle().FindJWTAuthority(tok.Headers[0].KeyID)
	require.True(t, ok, "kid %s not in bundle", tok.Headers[0].KeyID)
	var claims jwt.Claims
	require.NoError(t, tok.Claims(key, &claims))
	require.NoError(t, claims.ValidateWithLeeway(jwt.Expected{Time: now}, 0))
	return claims
}

func activeSlot(t testing.TB, a *Authority, k Kind) *slot {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	active, _ := find(a.st.slots(k))
	require.NotNil(t, active)
	return active
}

func activeID(t testing.TB, a *Authority, k Kind) string {
	t.Helper()
	return activeSlot(t, a, k).id
}

func parseHeaderKID(token string) (string, error) {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return "", err
	}
	return tok.Headers[0].KeyID, nil
}
