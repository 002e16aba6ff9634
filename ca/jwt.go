package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	kmsapi "go.step.sm/crypto/kms/apiv1"
)

// JWTSVIDParams says what to put in a JWT-SVID.
type JWTSVIDParams struct {
	// ID is the subject, in the authority's trust domain, with a path.
	ID spiffeid.ID
	// Audience is required; every entry must be non-empty. One is
	// recommended.
	Audience []string
	// TTL is the lifetime; 0 means Config.JWTSVIDTTL; at most CATTL/6. The
	// token never outlives the key that signs it.
	TTL time.Duration
	// Claims are added to the token. They must marshal to JSON, should have
	// collision-resistant names, and cannot set sub, aud, exp or iat.
	Claims map[string]any
}

// jwtClaims is the payload of a JWT-SVID without extra claims.
type jwtClaims struct {
	Subject  string       `json:"sub"`
	Audience jwt.Audience `json:"aud"`
	Expiry   int64        `json:"exp"`
	IssuedAt int64        `json:"iat"`
}

// jwtSigner signs with the active JWT slot. It is immutable and safe for
// concurrent use.
type jwtSigner struct {
	kid      string
	signer   jose.Signer
	notAfter time.Time
}

func newJWTSigner(s *slot) (*jwtSigner, error) {
	key, ok := s.signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("ca: jwt slot %s: key is %T, want an ecdsa private key", s.id, s.signer)
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: s.id}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		return nil, fmt.Errorf("ca: jwt slot %s: %w", s.id, err)
	}
	return &jwtSigner{kid: s.id, signer: signer, notAfter: s.notAfter}, nil
}

// SignJWTSVID signs an ES256 JWT-SVID with the active JWT key: header kid
// and typ JWT; claims sub, aud, exp, iat and p.Claims. It returns the compact
// token and its expiry. Errors wrap ErrInvalidParams for bad params and
// ErrNotReady without a usable key. Safe for concurrent use.
func (a *Authority) SignJWTSVID(ctx context.Context, p JWTSVIDParams) (token string, expiresAt time.Time, err error) {
	ttl, err := a.svidTTL(p.TTL, a.cfg.JWTSVIDTTL)
	if err != nil {
		return "", time.Time{}, err
	}
	if err := a.checkSVIDID(p.ID); err != nil {
		return "", time.Time{}, err
	}
	if len(p.Audience) == 0 {
		return "", time.Time{}, fmt.Errorf("%w: audience required", ErrInvalidParams)
	}
	for _, aud := range p.Audience {
		if aud == "" {
			return "", time.Time{}, fmt.Errorf("%w: empty audience", ErrInvalidParams)
		}
	}
	for _, c := range [...]string{"sub", "aud", "exp", "iat"} { // set by the authority only
		if _, ok := p.Claims[c]; ok {
			return "", time.Time{}, fmt.Errorf("%w: claim %q is set by the authority", ErrInvalidParams, c)
		}
	}
	if err := ctx.Err(); err != nil {
		return "", time.Time{}, fmt.Errorf("ca: sign jwt-svid: %w", err)
	}
	s := a.jwt.Load()
	now := a.clock.Now()
	if s == nil || !now.Before(s.notAfter) {
		return "", time.Time{}, fmt.Errorf("%w: jwt key expired or missing", ErrNotReady)
	}
	exp := now.Add(ttl)
	if exp.After(s.notAfter) {
		exp = s.notAfter
	}
	claims := jwtClaims{
		Subject:  p.ID.String(),
		Audience: jwt.Audience(p.Audience),
		Expiry:   exp.Unix(),
		IssuedAt: now.Unix(),
	}
	payload, err := marshalClaims(claims, p.Claims)
	if err != nil {
		return "", time.Time{}, err
	}
	jws, err := s.signer.Sign(payload)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("ca: sign jwt-svid for %s: %w", p.ID, err)
	}
	token, err = jws.CompactSerialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("ca: serialize jwt-svid for %s: %w", p.ID, err)
	}
	return token, time.Unix(claims.Expiry, 0), nil
}

func marshalClaims(std jwtClaims, extra map[string]any) ([]byte, error) {
	var v any = std
	if len(extra) > 0 {
		m := make(map[string]any, len(extra)+4)
		for k, val := range extra {
			m[k] = val
		}
		m["sub"], m["aud"], m["exp"], m["iat"] = std.Subject, std.Audience, std.Expiry, std.IssuedAt
		v = m
	}
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: claims: %w", ErrInvalidParams, err)
	}
	return payload, nil
}

// newJWTSlot makes a new P-256 key with a random kid and writes it to
// KeyDir. The slot is PREPARED.
func (a *Authority) newJWTSlot(now time.Time) (*slot, error) {
	resp, err := a.kms.CreateKey(&kmsapi.CreateKeyRequest{SignatureAlgorithm: kmsapi.ECDSAWithSHA256})
	if err != nil {
		return nil, fmt.Errorf("ca: create jwt key: %w", err)
	}
	s := &slot{
		kind:      KindJWT,
		status:    StatusPrepared,
		id:        rand.Text(),
		createdAt: now,
		notBefore: now,
		notAfter:  now.Add(a.cfg.CATTL),
		public:    resp.PublicKey,
		signer:    resp.CreateSignerRequest.Signer,
	}
	if s.keyFile, err = a.writeKey(KindJWT, resp.PrivateKey); err != nil {
		return nil, err
	}
	return s, nil
}
