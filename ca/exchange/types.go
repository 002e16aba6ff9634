package exchange

import (
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Token type URIs (RFC 8693 section 3, draft-ietf-oauth-transaction-tokens).
const (
	GrantType    = "urn:ietf:params:oauth:grant-type:token-exchange"
	TypeJWT      = "urn:ietf:params:oauth:token-type:jwt"
	TypeTxnToken = "urn:ietf:params:oauth:token-type:txn_token"
	TypeIDToken  = "urn:ietf:params:oauth:token-type:id_token"
	TypeAccess   = "urn:ietf:params:oauth:token-type:access_token"
	TxnTokenTyp  = "txntoken+jwt" // JOSE header typ of a Txn-Token
	TokenTypeNA  = "N_A"          // token_type of every issued token

	// MaxTokenBytes bounds a subject token or client assertion: a longer one
	// is refused unparsed.
	MaxTokenBytes = 16 << 10
)

// MaxTokenTTL is the longest an issued token lives.
const MaxTokenTTL = 5 * time.Minute

// How a caller proved its SPIFFE ID (the rctx authn value).
const (
	AuthnX509  = "x509-svid" // mTLS with its X509-SVID
	AuthnJWT   = "jwt-svid"  // a JWT-SVID client assertion (RFC 7523)
	AuthnAgent = "agent"     // attested by an agent, forwarded over the Node API
)

// Request is a token-exchange request (RFC 8693 section 2.1) as the caller
// sent it; the actor is never part of it: it is the authenticated Caller.
type Request struct {
	GrantType          string
	SubjectToken       string
	SubjectTokenType   string
	RequestedTokenType string // empty: TypeJWT
	Audience           []string
	Resource           []string
	Scope              string // space-separated
	ActorToken         string
	ActorTokenType     string
}

// Caller is the authenticated workload asking for the exchange.
type Caller struct {
	ID    spiffeid.ID
	Authn string      // AuthnX509, AuthnJWT or AuthnAgent
	Agent spiffeid.ID // the forwarding agent, with AuthnAgent
	Addr  string      // the network peer (the agent's, with AuthnAgent)
}

// Response is the RFC 8693 section 2.2.1 response.
type Response struct {
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
	Scope           string `json:"scope,omitempty"`
}

// RFC 6749 section 5.2 and RFC 8693 section 2.2.2 error codes.
const (
	CodeInvalidRequest     = "invalid_request"
	CodeInvalidClient      = "invalid_client"
	CodeInvalidGrant       = "invalid_grant"
	CodeUnauthorizedClient = "unauthorized_client"
	CodeUnsupportedGrant   = "unsupported_grant_type"
	CodeInvalidScope       = "invalid_scope"
	CodeInvalidTarget      = "invalid_target"
	CodeUnavailable        = "temporarily_unavailable"
	CodeServerError        = "server_error"
)

// Error is a refused exchange: an RFC 6749 error code, a description safe to
// return to the caller (it never holds a token), and the policy rule that
// refused, if one did.
type Error struct {
	Code        string
	Description string
	Rule        string
	err         error // the cause, for logs
}

func (e *Error) Error() string {
	s := e.Code + ": " + e.Description
	if e.Rule != "" {
		s += " (rule " + e.Rule + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.err }

func refuse(code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Description: err.Error(), err: errors.Unwrap(err)}
}

func (e *Error) by(rule string) *Error { e.Rule = rule; return e }

// AsError returns err as an *Error; any other error is a server_error.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: CodeServerError, Description: "internal error", err: err}
}
