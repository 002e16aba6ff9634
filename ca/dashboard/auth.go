package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Authenticator checks who calls the dashboard. Its methods are called
// concurrently.
type Authenticator interface {
	// VerifyToken checks a dashboard token (`tallyctl dashboard token`,
	// signed by the server) and returns when it expires.
	VerifyToken(ctx context.Context, token string) (expiresAt time.Time, err error)
	// VerifyAdmin checks that chain, a client certificate chain as the
	// client sent it (leaf first; r.TLS.PeerCertificates), is an X509-SVID
	// of an admin SPIFFE ID that verifies against the trust bundle now.
	VerifyAdmin(ctx context.Context, chain []*x509.Certificate) error
}

// SessionCookie names the dashboard's session cookie. The __Host- prefix
// makes browsers keep it only if it is Secure, for Path=/ and for this host
// alone.
const SessionCookie = "__Host-tally-dashboard"

// errUnauthenticated is the error of a request with no credentials at all.
var errUnauthenticated = errors.New("dashboard: no credentials")

// principal is an authenticated caller.
type principal struct {
	via     string // "mtls", "session" or "bearer"
	expires time.Time
}

// authenticate checks, in order, an admin client certificate, the session
// cookie and a bearer token; the first that is valid decides. Refused, it
// returns why the first present was refused, or errUnauthenticated.
func (h *Handler) authenticate(r *http.Request) (principal, error) {
	now := h.cfg.Clock.Now()
	var refused error
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		err := h.cfg.Auth.VerifyAdmin(r.Context(), r.TLS.PeerCertificates)
		if err == nil {
			return principal{via: "mtls", expires: r.TLS.PeerCertificates[0].NotAfter}, nil
		}
		refused = err
	}
	if c, err := r.Cookie(SessionCookie); err == nil {
		if exp, ok := h.sessions.lookup(c.Value, now); ok {
			return principal{via: "session", expires: exp}, nil
		}
		if refused == nil {
			refused = errors.New("dashboard: unknown or expired session")
		}
	}
	if tok := bearer(r); tok != "" {
		exp, err := h.cfg.Auth.VerifyToken(r.Context(), tok)
		if err == nil && !exp.After(now) {
			err = errors.New("dashboard: token expired")
		}
		if err == nil {
			return principal{via: "bearer", expires: exp}, nil
		}
		if refused == nil {
			refused = err
		}
	}
	if refused == nil {
		refused = errUnauthenticated
	}
	return principal{}, refused
}

func bearer(r *http.Request) string {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// sameOrigin refuses a cross-site request, by its Origin and Sec-Fetch-Site
// headers (a browser sends one or both with every POST from a page); a
// request with neither (curl) is not from a page.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" && o != "https://"+r.Host {
		return false
	}
	return true
}

// sessions are the dashboard's browser sessions: an opaque random ID in an
// HttpOnly cookie, mapped to the expiry of the token it was opened with.
// Nothing else is kept; they do not outlive the process. Safe for
// concurrent use.
type sessions struct {
	max int
	mu  sync.Mutex
	m   map[string]time.Time
}

func newSessions(max int) *sessions {
	return &sessions{max: max, m: map[string]time.Time{}}
}

// open starts a session that ends at expires. With max sessions open, the
// expired ones are dropped, then the one that would end soonest.
func (s *sessions) open(now, expires time.Time) string {
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	id := base64.RawURLEncoding.EncodeToString(raw[:])
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= s.max {
		var soonest string
		for k, exp := range s.m {
			if !exp.After(now) {
				delete(s.m, k)
			} else if soonest == "" || exp.Before(s.m[soonest]) {
				soonest = k
			}
		}
		if len(s.m) >= s.max {
			delete(s.m, soonest)
		}
	}
	s.m[id] = expires
	return id
}

func (s *sessions) lookup(id string, now time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.m[id]
	if !ok {
		return time.Time{}, false
	}
	if !exp.After(now) {
		delete(s.m, id)
		return time.Time{}, false
	}
	return exp, true
}

func (s *sessions) close(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
}
