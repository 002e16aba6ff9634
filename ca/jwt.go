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

// TxnTokenParams says what to put in a Txn-Token
// (draft-ietf-oauth-transaction-tokens-10).
type TxnTokenParams struct {
	// Audience is the trust domain the token is valid in. Required.
	Audience string
	// TTL is the lifetime; 0 means Config.JWTSVIDTTL; at most CATTL/6.
	TTL time.Duration
	// Claims are the token's claims (txn, sub, scope, req_wl, tctx, rctx…);
	// they cannot set aud, exp or iat.
	Claims map[string]any
}

// TxnTokenType is the JOSE typ header of a Txn-Token.
const TxnTokenType = "txntoken+jwt"

// jwtSigner signs with the active JWT slot: JWT-SVIDs (typ JWT) and
// Txn-Tokens (typ txntoken+jwt). It is immutable and safe for concurrent use.
type jwtSigner struct {
	kid      string
	signer   jose.Signer // typ JWT
	txn      jose.Signer // typ txntoken+jwt
	notAfter time.Time
}

func newJWTSigner(s *slot) (*jwtSigner, error) {
	key, ok := s.signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("ca: jwt slot %s: key is %T, want an ecdsa private key", s.id, s.signer)
	}
	sk := jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: s.id}}
	signer, err := jose.NewSigner(sk, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("ca: jwt slot %s: %w", s.id, err)
	}
	txn, err := jose.NewSigner(sk, (&jose.SignerOptions{}).WithType(TxnTokenType))
	if err != nil {
		return nil, fmt.Errorf("ca: jwt slot %s: %w", s.id, err)
	}
	return &jwtSigner{kid: s.id, signer: signer, txn: txn, notAfter: s.notAfter}, nil
}

// SignJWTSVID signs an ES256 JWT-SVID with the active JWT key: header kid
// and typ JWT; claims sub, aud, exp, iat and p.Claims. It returns the compact
// token and its expiry. Errors wrap ErrInvalidParams for bad params and
// ErrNotReady without a usable key. Safe for concurrent use.
func (a *Authority) SignJWTSVID(ctx context.Context, p JWTSVIDParams) (token string, expiresAt time.Time, err error) {
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
	token, expiresAt, err = a.signJWT(ctx, p.TTL, func(s *jwtSigner) jose.Signer { return s.signer },
		jwtClaims{Subject: p.ID.String(), Audience: jwt.Audience(p.Audience)}, p.Claims)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("ca: sign jwt-svid for %s: %w", p.ID, err)
	}
	return token, expiresAt, nil
}

// SignTxnToken signs an ES256 Txn-Token with the active JWT key: header kid
// and typ txntoken+jwt; claims aud, exp, iat and p.Claims. Errors as
// SignJWTSVID's. Safe for concurrent use.
func (a *Authority) SignTxnToken(ctx context.Context, p TxnTokenParams) (token string, expiresAt time.Time, err error) {
	if p.Audience == "" {
		return "", time.Time{}, fmt.Errorf("%w: audience required", ErrInvalidParams)
	}
	if _, ok := p.Claims["sub"]; !ok {
		return "", time.Time{}, fmt.Errorf("%w: a txn-token needs a sub", ErrInvalidParams)
	}
	claims := make(map[string]any, len(p.Claims))
	for k, v := range p.Claims {
		if k != "sub" {
			claims[k] = v
		}
	}
	sub, _ := p.Claims["sub"].(string)
	token, expiresAt, err = a.signJWT(ctx, p.TTL, func(s *jwtSigner) jose.Signer { return s.txn },
		jwtClaims{Subject: sub, Audience: jwt.Audience{p.Audience}}, claims)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("ca: sign txn-token: %w", err)
	}
	return token, expiresAt, nil
}

// signJWT signs std (with exp and iat set here) and extra with the active
// JWT key, through the signer pick chooses.
func (a *Authority) signJWT(ctx context.Context, ttl time.Duration, pick func(*jwtSigner) jose.Signer, std jwtClaims, extra map[string]any) (string, time.Time, error) {
	ttl, err := a.svidTTL(ttl, a.cfg.JWTSVIDTTL)
	if err != nil {
		return "", time.Time{}, err
	}
	for _, c := range [...]string{"sub", "aud", "exp", "iat"} { // set by the authority only
		if _, ok := extra[c]; ok {
			return "", time.Time{}, fmt.Errorf("%w: claim %q is set by the authority", ErrInvalidParams, c)
		}
	}
	if err := ctx.Err(); err != nil {
		return "", time.Time{}, err
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
	std.Expiry, std.IssuedAt = exp.Unix(), now.Unix()
	payload, err := marshalClaims(std, extra)
	if err != nil {
		return "", time.Time{}, err
	}
	jws, err := pick(s).Sign(payload)
	if err != nil {
		return "", time.Time{}, err
	}
	token, err := jws.CompactSerialize()
	if err != nil {
		return "", time.Time{}, err
	}
	return token, time.Unix(std.Expiry, 0), nil
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
