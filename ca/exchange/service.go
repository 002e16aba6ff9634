package exchange

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/text"
)

// Signer signs the issued tokens with the trust domain's JWT key and
// publishes the bundle that verifies Tally's own tokens.
type Signer interface {
	SignJWTSVID(ctx context.Context, p ca.JWTSVIDParams) (string, time.Time, error)
	SignTxnToken(ctx context.Context, p ca.TxnTokenParams) (string, time.Time, error)
	Bundle() *spiffebundle.Bundle
}

// Config configures the Service.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// Issuer is Tally's JWT issuer: the iss of the tokens it issues, and the
	// base of the token endpoint, Issuer + "/oauth2/token".
	Issuer string
	Signer Signer
	Policy Policy
	// MaxTTL caps issued tokens' lifetime further (the authority's default
	// JWT-SVID TTL). 0: no cap beyond the policy's.
	MaxTTL time.Duration
	// HTTPClient fetches issuers' discovery documents and keys. Default: a
	// client with the default transport.
	HTTPClient *http.Client
	Metrics    prometheus.Registerer
	Clock      clock.PassiveClock
	Logger     *slog.Logger
}

// Service performs token exchanges. It is safe for concurrent use.
type Service struct {
	cfg     Config
	tdID    string
	timeout time.Duration
	audit   *slog.Logger
	total   *prometheus.CounterVec
	latency prometheus.Histogram

	// active is the policy in force: the configured one, plus the extra
	// ones SetExtra gives. An exchange reads it once.
	active atomic.Pointer[active]

	mu    sync.Mutex         // serialises SetExtra
	known map[string]*issuer // by issuerKey: kept across policy changes with their caches
}

// active is a policy ready to decide: its issuers and token lifetime.
type active struct {
	policy  Policy
	issuers map[string]*issuer // by URL
	ttl     time.Duration
}

// New returns a Service for a policy that passed Validate.
func New(cfg Config) (*Service, error) {
	if err := cfg.Policy.Validate(cfg.TrustDomain); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	timeout := cfg.Policy.IssuerTimeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	s := &Service{
		cfg:     cfg,
		tdID:    cfg.TrustDomain.ID().String(),
		timeout: timeout,
		known:   map[string]*issuer{},
		audit:   cfg.Logger.With("log", "audit"),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_server_token_exchanges_total",
			Help: "Token exchanges, by issued token type (jwt, txn_token) and result (ok or the RFC 6749 error code).",
		}, []string{"token_type", "result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_server_token_exchange_seconds",
			Help:    "Time to answer a token exchange.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	s.active.Store(s.compile(cfg.Policy))
	if cfg.Metrics != nil {
		if err := errors.Join(cfg.Metrics.Register(s.total), cfg.Metrics.Register(s.latency)); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// TokenEndpoint is the URL of the token endpoint: the aud of client
// assertions.
func (s *Service) TokenEndpoint() string { return s.cfg.Issuer + "/oauth2/token" }

// outcome is what an exchange did, for its audit line.
type outcome struct {
	typ, audience, txn, rule string
	scope                    []string
	user                     User
}

// Exchange performs one token exchange for caller. A refusal is an *Error.
func (s *Service) Exchange(ctx context.Context, c Caller, r Request) (Response, error) {
	start := time.Now()
	var o outcome
	resp, err := s.exchange(ctx, c, r, &o)
	if err != nil {
		e := AsError(err)
		s.record(ctx, c, &o, e, start)
		return Response{}, e
	}
	s.record(ctx, c, &o, nil, start)
	return resp, nil
}

// record writes an exchange's audit line and metrics.
func (s *Service) record(ctx context.Context, c Caller, o *outcome, e *Error, start time.Time) {
	result := "ok"
	if e != nil {
		result = e.Code
		if o.rule == "" {
			o.rule = e.Rule
		}
	}
	s.total.WithLabelValues(shortType(o.typ), result).Inc()
	s.latency.Observe(time.Since(start).Seconds())
	actor := ""
	if !c.ID.IsZero() {
		actor = c.ID.String()
	}
	attrs := []slog.Attr{
		slog.String("action", "token_exchange"),
		slog.String(logkey.Actor, actor), slog.String(logkey.Authn, c.Authn), slog.String(logkey.Peer, c.Addr),
		slog.String(logkey.UserIssuer, text.Printable(o.user.Issuer)), slog.String(logkey.UserSubject, text.Printable(o.user.Subject)),
		slog.String(logkey.Audience, text.Printable(o.audience)), slog.String(logkey.Scope, strings.Join(o.scope, " ")),
		slog.String(logkey.Txn, o.txn), slog.String(logkey.Result, result), slog.String(logkey.Rule, o.rule),
	}
	if e != nil {
		attrs = append(attrs, slog.String(logkey.Error, text.Printable(e.Error())))
		if e.Code == CodeServerError && e.err != nil {
			attrs = append(attrs, slog.String("cause", text.Printable(e.err.Error())))
		}
	}
	s.audit.LogAttrs(ctx, slog.LevelInfo, "audit", attrs...)
}

func shortType(t string) string {
	switch t {
	case TypeTxnToken:
		return "txn_token"
	case TypeJWT, "":
		return "jwt"
	}
	return "unknown"
}

func (s *Service) exchange(ctx context.Context, c Caller, r Request, o *outcome) (Response, error) {
	if c.ID.IsZero() || c.ID.TrustDomain() != s.cfg.TrustDomain {
		return Response{}, refuse(CodeInvalidClient, "the caller is not a workload of trust domain %s", s.cfg.TrustDomain)
	}
	if err := checkRequest(r); err != nil {
		return Response{}, err
	}
	o.typ = r.RequestedTokenType
	if o.typ == "" {
		o.typ = TypeJWT
	}
	audience, err := s.audience(r, o.typ)
	if err != nil {
		return Response{}, err
	}
	o.audience = audience
	a := s.active.Load()
	rule, err := a.policy.decide(c.ID, audience)
	if err != nil {
		return Response{}, err
	}
	o.rule = rule.Name
	sub, err := s.verifySubject(ctx, a, c, r, o.typ)
	if err != nil {
		return Response{}, err
	}
	o.user, o.txn = sub.user, sub.txn
	if o.scope, err = rule.grant(strings.Fields(r.Scope), sub.scope, sub.tally); err != nil {
		return Response{}, err
	}
	now := s.cfg.Clock.Now()
	ttl := min(a.ttl, sub.expiry.Sub(now))
	if ttl < time.Second {
		return Response{}, refuse(CodeInvalidGrant, "subject token expires in less than a second")
	}
	if sub.txn == "" {
		sub.txn = rand.Text()
		o.txn = sub.txn
	}
	user := sub.user.only(rule.Claims)
	act := &Actor{Sub: c.ID.String(), Act: sub.act}
	claims := map[string]any{"iss": s.cfg.Issuer, "txn": sub.txn, "act": act}
	if len(o.scope) > 0 {
		claims["scope"] = strings.Join(o.scope, " ")
	}
	var token string
	var exp time.Time
	if o.typ == TypeTxnToken {
		claims["sub"] = user.Subject
		claims["req_wl"] = c.ID.String()
		claims["tctx"] = map[string]any{"usr": user}
		rctx := map[string]any{"authn": c.Authn}
		if c.Addr != "" {
			rctx["req_ip"] = hostOf(c.Addr)
		}
		if !c.Agent.IsZero() {
			rctx["agent"] = c.Agent.String()
		}
		claims["rctx"] = rctx
		token, exp, err = s.cfg.Signer.SignTxnToken(ctx, ca.TxnTokenParams{Audience: s.tdID, TTL: ttl, Claims: claims})
	} else {
		claims["usr"] = user
		claims["jti"] = rand.Text()
		token, exp, err = s.cfg.Signer.SignJWTSVID(ctx, ca.JWTSVIDParams{ID: c.ID, Audience: []string{audience}, TTL: ttl, Claims: claims})
	}
	if err != nil {
		if errors.Is(err, ca.ErrNotReady) {
			return Response{}, &Error{Code: CodeUnavailable, Description: "the signing key is not ready", err: err}
		}
		return Response{}, &Error{Code: CodeServerError, Description: "internal error", err: err}
	}
	return Response{
		AccessToken:     token,
		IssuedTokenType: o.typ,
		TokenType:       TokenTypeNA,
		ExpiresIn:       int64(exp.Sub(now).Round(time.Second) / time.Second),
		Scope:           strings.Join(o.scope, " "),
	}, nil
}

// checkRequest checks the request's form before anything is verified.
func checkRequest(r Request) error {
	switch {
	case r.GrantType == "":
		return refuse(CodeInvalidRequest, "grant_type is required")
	case r.GrantType != GrantType:
		return refuse(CodeUnsupportedGrant, "grant_type %q is not supported; only %s", text.Printable(r.GrantType), GrantType)
	case r.SubjectToken == "":
		return refuse(CodeInvalidRequest, "subject_token is required")
	case r.SubjectTokenType == "":
		return refuse(CodeInvalidRequest, "subject_token_type is required")
	case len(r.SubjectToken) > MaxTokenBytes:
		return refuse(CodeInvalidRequest, "subject_token is longer than %d bytes", MaxTokenBytes)
	case r.ActorToken != "" || r.ActorTokenType != "":
		return refuse(CodeInvalidRequest, "actor_token is not accepted: the actor is the authenticated caller")
	}
	switch r.SubjectTokenType {
	case TypeIDToken, TypeAccess, TypeJWT, TypeTxnToken:
	default:
		return refuse(CodeInvalidRequest, "subject_token_type %q is not supported", text.Printable(r.SubjectTokenType))
	}
	switch r.RequestedTokenType {
	case "", TypeJWT, TypeTxnToken:
	default:
		return refuse(CodeInvalidRequest, "requested_token_type %q is not supported; %s or %s", text.Printable(r.RequestedTokenType), TypeJWT, TypeTxnToken)
	}
	return nil
}

// audience resolves the one audience of the issued token: audience and
// resource together name it. A Txn-Token's is the trust domain.
func (s *Service) audience(r Request, typ string) (string, error) {
	targets := append(append([]string(nil), r.Audience...), r.Resource...)
	if typ == TypeTxnToken {
		for _, t := range targets {
			if t != s.tdID && t != s.cfg.TrustDomain.Name() {
				return "", refuse(CodeInvalidTarget, "a Txn-Token's audience is the trust domain %s, not %q", s.tdID, text.Printable(t))
			}
		}
		return s.tdID, nil
	}
	switch len(targets) {
	case 0:
		return "", refuse(CodeInvalidRequest, "audience is required for a JWT-SVID")
	case 1:
		if targets[0] == "" {
			return "", refuse(CodeInvalidRequest, "audience is empty")
		}
		return targets[0], nil
	}
	return "", refuse(CodeInvalidTarget, "one audience per token, got %d", len(targets))
}

// hostOf is the host of a host:port address.
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
