package delegation

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// errorDomain is the google.rpc.ErrorInfo domain of a refused exchange.
const errorDomain = "oauth2"

// Client exchanges tokens through the Tally agent's Workload API socket
// (the tally.v1.TokenExchange service), as the workload the agent attests
// the calling process to be. A Client is safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn
	api  tallyv1.TokenExchangeClient
}

// NewClient returns a Client of the agent at addr, a Workload API address
// (unix:///path, or tcp://IP:port); empty addr means $SPIFFE_ENDPOINT_SOCKET.
// It does not connect: an absent agent shows as an error of the first
// Exchange. Close the Client when done.
func NewClient(addr string) (*Client, error) {
	if addr == "" {
		addr = os.Getenv(workloadapi.SocketEnv)
		if addr == "" {
			return nil, fmt.Errorf("delegation: new client: no agent address and $%s is not set", workloadapi.SocketEnv)
		}
	}
	target, err := workloadapi.TargetFromAddress(addr)
	if err != nil {
		return nil, fmt.Errorf("delegation: new client: agent address %q: %w", addr, err)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("delegation: new client: %w", err)
	}
	return &Client{conn: conn, api: tallyv1.NewTokenExchangeClient(conn)}, nil
}

// Close closes the connection to the agent.
func (c *Client) Close() error {
	return c.conn.Close()
}

// ExchangeRequest is an RFC 8693 token-exchange request. The actor is never
// part of it: it is the workload the agent attests the caller to be.
type ExchangeRequest struct {
	// SubjectToken is the user's token, or a delegated token received from
	// the previous hop. Required.
	SubjectToken string
	// SubjectTokenType is one of the TokenType URIs. Required.
	SubjectTokenType string
	// RequestedTokenType is TokenTypeJWT (empty means it) or
	// TokenTypeTxnToken.
	RequestedTokenType string
	// Audience is the next hop: its SPIFFE ID for a JWT-SVID; the trust
	// domain or nothing for a Txn-Token.
	Audience []string
	// Scope is the scopes wanted; empty: what the policy grants.
	Scope []string
	// Resource is the RFC 8707 resources, if the policy uses them.
	Resource []string
	// SPIFFEID chooses which of the caller's identities acts, when it has
	// several; zero: its first.
	SPIFFEID spiffeid.ID
}

// Issued is the token an exchange issued (the RFC 8693 response).
type Issued struct {
	// Token is the issued token (access_token). Never log it.
	Token string
	// IssuedTokenType is TokenTypeJWT or TokenTypeTxnToken.
	IssuedTokenType string
	// TokenType is the response's token_type, "N_A".
	TokenType string
	// ExpiresIn is the token's lifetime from when it was issued.
	ExpiresIn time.Duration
	// Scope is the scopes granted.
	Scope []string
}

// SetHeader sets the header of r that carries the issued token to the next
// hop: Txn-Token for a Txn-Token, "Authorization: Bearer" for a JWT-SVID.
func (i *Issued) SetHeader(r *http.Request) {
	if i.IssuedTokenType == TokenTypeTxnToken {
		r.Header.Set(TxnTokenHeader, i.Token)
		return
	}
	r.Header.Set("Authorization", "Bearer "+i.Token)
}

// ExchangeError is an exchange the token service refused: an RFC 6749
// error code (invalid_request, invalid_grant, invalid_scope, invalid_target,
// unauthorized_client, invalid_client, temporarily_unavailable,
// server_error), the server's description, and the policy rule that refused
// if one did. It unwraps to the gRPC status error.
type ExchangeError struct {
	Code        string
	Description string
	Rule        string
	err         error
}

func (e *ExchangeError) Error() string {
	s := "delegation: exchange refused: " + e.Code
	if e.Description != "" {
		s += ": " + e.Description
	}
	if e.Rule != "" {
		s += " (rule " + e.Rule + ")"
	}
	return s
}

func (e *ExchangeError) Unwrap() error { return e.err }

// Exchange asks the token service for a token for req. A refusal is an
// *ExchangeError; any other failure (the agent is unreachable, the caller
// was not attested) is the gRPC error, wrapped.
func (c *Client) Exchange(ctx context.Context, req ExchangeRequest) (*Issued, error) {
	switch {
	case req.SubjectToken == "":
		return nil, errors.New("delegation: exchange: no subject token")
	case req.SubjectTokenType == "":
		return nil, errors.New("delegation: exchange: no subject token type")
	}
	in := &tallyv1.ExchangeRequest{
		SubjectToken:       req.SubjectToken,
		SubjectTokenType:   req.SubjectTokenType,
		RequestedTokenType: req.RequestedTokenType,
		Audience:           req.Audience,
		Scope:              strings.Join(req.Scope, " "),
		Resource:           req.Resource,
	}
	if !req.SPIFFEID.IsZero() {
		in.SpiffeId = req.SPIFFEID.String()
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	resp, err := c.api.Exchange(ctx, in)
	if err != nil {
		return nil, exchangeError(err)
	}
	switch {
	case resp.GetAccessToken() == "":
		return nil, errors.New("delegation: exchange: the response has no token")
	case resp.GetIssuedTokenType() != TokenTypeJWT && resp.GetIssuedTokenType() != TokenTypeTxnToken:
		return nil, fmt.Errorf("delegation: exchange: issued token type %q is neither a JWT-SVID nor a Txn-Token", resp.GetIssuedTokenType())
	}
	return &Issued{
		Token:           resp.GetAccessToken(),
		IssuedTokenType: resp.GetIssuedTokenType(),
		TokenType:       resp.GetTokenType(),
		ExpiresIn:       time.Duration(resp.GetExpiresIn()) * time.Second,
		Scope:           strings.Fields(resp.GetScope()),
	}, nil
}

// exchangeError decodes the ErrorInfo of a refusal into an *ExchangeError,
// and wraps any other error.
func exchangeError(err error) error {
	st, ok := status.FromError(err)
	if ok {
		for _, d := range st.Details() {
			info, ok := d.(*errdetails.ErrorInfo)
			if ok && info.GetDomain() == errorDomain && info.GetReason() != "" {
				return &ExchangeError{
					Code:        info.GetReason(),
					Description: st.Message(),
					Rule:        info.GetMetadata()["rule"],
					err:         err,
				}
			}
		}
	}
	return fmt.Errorf("delegation: exchange: %w", err)
}

// OnBehalfOf exchanges inbound, a token this service verified, for a token
// of the same kind for the next hop: a JWT-SVID for audience (the next hop's
// SPIFFE ID), or a replacement Txn-Token (audience is then the trust domain
// or empty). The user and txn stay those of inbound; this service becomes
// the current actor. Empty scope asks for what the policy grants, never more
// than inbound's.
func (c *Client) OnBehalfOf(ctx context.Context, inbound *Token, audience string, scope ...string) (*Issued, error) {
	switch {
	case inbound == nil || inbound.Raw == "":
		return nil, errors.New("delegation: exchange: no inbound token")
	case inbound.Kind != JWTSVID && inbound.Kind != TxnToken:
		return nil, fmt.Errorf("delegation: exchange: inbound token of unknown kind %d", inbound.Kind)
	}
	typ := inbound.Kind.tokenType()
	return c.Exchange(ctx, ExchangeRequest{
		SubjectToken:       inbound.Raw,
		SubjectTokenType:   typ,
		RequestedTokenType: typ,
		Audience:           nonEmpty(audience),
		Scope:              scope,
	})
}

// ForIDToken exchanges a user's OIDC ID token for a JWT-SVID for audience
// that carries the user, starting a transaction. For a Txn-Token, or an
// access token, call Exchange.
func (c *Client) ForIDToken(ctx context.Context, idToken, audience string, scope ...string) (*Issued, error) {
	return c.forUser(ctx, idToken, TokenTypeIDToken, audience, scope)
}

// ForAccessToken is ForIDToken for a user's OAuth access token.
func (c *Client) ForAccessToken(ctx context.Context, accessToken, audience string, scope ...string) (*Issued, error) {
	return c.forUser(ctx, accessToken, TokenTypeAccessToken, audience, scope)
}

func (c *Client) forUser(ctx context.Context, token, typ, audience string, scope []string) (*Issued, error) {
	return c.Exchange(ctx, ExchangeRequest{
		SubjectToken:       token,
		SubjectTokenType:   typ,
		RequestedTokenType: TokenTypeJWT,
		Audience:           nonEmpty(audience),
		Scope:              scope,
	})
}

// nonEmpty returns s as a list, and none for "".
func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}
