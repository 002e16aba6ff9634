package exchange

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"mime"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ClientAssertionType is the client_assertion_type of a JWT-SVID client
// assertion (RFC 7523 section 2.2).
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// maxForm bounds a token request's body: a subject token and a client
// assertion of at most 16 KiB each, and the rest.
const maxForm = 64 << 10

// Handler serves the token endpoint, POST /oauth2/token (RFC 8693), on an
// HTTPS server whose TLS config requests (not requires) a client
// certificate: the caller authenticates with its X509-SVID, verified here
// against the current bundle, or with a JWT-SVID client assertion whose aud
// is the endpoint's URL. Register ConnContext on the http.Server so that a
// kept-alive connection's SVID is verified once per bundle, not per request.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /oauth2/token", s.serveToken)
	mux.HandleFunc("/oauth2/token", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, &Error{Code: CodeInvalidRequest, Description: "use POST"})
	})
	return mux
}

func (s *Service) serveToken(w http.ResponseWriter, r *http.Request) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		writeError(w, http.StatusBadRequest, refuse(CodeInvalidRequest, "Content-Type must be application/x-www-form-urlencoded"))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			writeError(w, http.StatusRequestEntityTooLarge, refuse(CodeInvalidRequest, "request body is larger than %d bytes", maxForm))
			return
		}
		writeError(w, http.StatusBadRequest, refuse(CodeInvalidRequest, "malformed form body"))
		return
	}
	form := r.PostForm
	for k, v := range form {
		if len(v) > 1 && k != "audience" && k != "resource" {
			writeError(w, http.StatusBadRequest, refuse(CodeInvalidRequest, "parameter %s is given more than once", k))
			return
		}
	}
	caller, err := s.authenticate(r)
	if err != nil {
		e := AsError(err)
		s.record(r.Context(), caller, &outcome{typ: form.Get("requested_token_type")}, e, time.Now())
		writeError(w, statusOf(e.Code), e)
		return
	}
	resp, err := s.Exchange(r.Context(), caller, Request{
		GrantType:          form.Get("grant_type"),
		SubjectToken:       form.Get("subject_token"),
		SubjectTokenType:   form.Get("subject_token_type"),
		RequestedTokenType: form.Get("requested_token_type"),
		Audience:           form["audience"],
		Resource:           form["resource"],
		Scope:              form.Get("scope"),
		ActorToken:         form.Get("actor_token"),
		ActorTokenType:     form.Get("actor_token_type"),
	})
	if err != nil {
		e := AsError(err)
		writeError(w, statusOf(e.Code), e)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// authenticate returns the caller's SPIFFE ID from its client certificate
// or its client assertion.
func (s *Service) authenticate(r *http.Request) (Caller, error) {
	form := r.PostForm
	assertion := form.Get("client_assertion")
	c := Caller{Addr: r.RemoteAddr}
	var certs []*x509.Certificate
	if r.TLS != nil {
		certs = r.TLS.PeerCertificates
	}
	switch {
	case len(certs) > 0 && assertion != "":
		return c, refuse(CodeInvalidRequest, "authenticate with a client certificate or a client assertion, not both")
	case len(certs) > 0:
		id, err := s.verifyPeer(r.Context(), certs)
		if err != nil {
			return c, err
		}
		c.ID, c.Authn = id, AuthnX509
	case assertion != "":
		if t := form.Get("client_assertion_type"); t != ClientAssertionType {
			return c, refuse(CodeInvalidClient, "client_assertion_type must be %s", ClientAssertionType)
		}
		if len(assertion) > MaxTokenBytes {
			return c, refuse(CodeInvalidClient, "client_assertion is longer than %d bytes", MaxTokenBytes)
		}
		svid, err := jwtsvid.ParseAndValidate(assertion, s.cfg.Signer.Bundle(), []string{s.TokenEndpoint()})
		if err != nil {
			return c, refuse(CodeInvalidClient, "client assertion is not a valid JWT-SVID for %s: %w", s.TokenEndpoint(), err)
		}
		c.ID, c.Authn = svid.ID, AuthnJWT
	default:
		return c, refuse(CodeInvalidClient, "no client authentication: present an X509-SVID (mTLS) or a JWT-SVID client assertion")
	}
	if c.ID.TrustDomain() != s.cfg.TrustDomain {
		return c, refuse(CodeInvalidClient, "%s is not in trust domain %s", c.ID, s.cfg.TrustDomain)
	}
	return c, nil
}

// peerAuth caches one connection's verified client SVID.
type peerAuth struct {
	mu     sync.Mutex
	leaf   *x509.Certificate
	bundle uint64 // the sequence number of the bundle that verified it
	id     spiffeid.ID
}

type peerAuthKey struct{}

// ConnContext is an http.Server ConnContext hook: it gives each connection a
// place to keep its verified client SVID.
func ConnContext(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, peerAuthKey{}, &peerAuth{})
}

// verifyPeer verifies the client certificate chain as an X509-SVID of the
// current bundle; a connection's result is reused while the bundle and the
// certificate stay the same and the certificate is valid.
func (s *Service) verifyPeer(ctx context.Context, certs []*x509.Certificate) (spiffeid.ID, error) {
	b := s.cfg.Signer.Bundle()
	seq, _ := b.SequenceNumber()
	now := s.cfg.Clock.Now()
	pa, _ := ctx.Value(peerAuthKey{}).(*peerAuth)
	if pa != nil {
		pa.mu.Lock()
		defer pa.mu.Unlock()
		if pa.leaf == certs[0] && pa.bundle == seq && now.Before(pa.leaf.NotAfter) {
			return pa.id, nil
		}
	}
	id, _, err := x509svid.Verify(certs, b, x509svid.WithTime(now))
	if err != nil {
		return spiffeid.ID{}, refuse(CodeInvalidClient, "client certificate is not a valid X509-SVID: %w", err)
	}
	if pa != nil {
		pa.leaf, pa.bundle, pa.id = certs[0], seq, id
	}
	return id, nil
}

func writeError(w http.ResponseWriter, status int, e *Error) {
	body := map[string]string{"error": e.Code, "error_description": e.Description}
	if e.Rule != "" {
		body["error_description"] += " (rule " + e.Rule + ")"
		body["rule"] = e.Rule
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// statusOf is the HTTP status of a refusal (RFC 6749 section 5.2).
func statusOf(code string) int {
	switch code {
	case CodeInvalidClient:
		return http.StatusUnauthorized
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeServerError:
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}
