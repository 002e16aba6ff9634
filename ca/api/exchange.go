package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/ca/exchange"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/internal/logkey"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Exchanger performs token exchanges (RFC 8693): the server's
// exchange.Service. A refusal is an *exchange.Error; any other error is a
// server_error.
type Exchanger interface {
	Exchange(ctx context.Context, c exchange.Caller, r exchange.Request) (exchange.Response, error)
}

// errExchangeOff is ExchangeToken on a server whose NodeConfig has no
// Exchanger.
var errExchangeOff = errors.New("token exchange is not configured on this server")

// ExchangeToken performs a token exchange for one of the calling agent's
// workloads: the agent must be entitled to issue entry_id (as for
// NewJWTSVID), and the actor is that entry's SPIFFE ID, authenticated by the
// agent (exchange.AuthnAgent). exchange.spiffe_id, if set, must be the
// entry's. A refusal by the exchange carries a google.rpc.ErrorInfo
// (exchangeStatus); without an Exchanger the call is Unimplemented.
//
// The exchange service writes the audit line of every exchange it decides;
// this method audits only the refusals it decides itself (an entry the
// agent may not issue, a malformed request). No token is ever logged.
func (n *Node) ExchangeToken(ctx context.Context, req *tallyv1.ExchangeTokenRequest) (*tallyv1.ExchangeResponse, error) {
	agent, err := n.authAgent(ctx)
	if err != nil {
		return nil, n.exchangeStatus(err)
	}
	if n.cfg.Exchanger == nil {
		return nil, n.exchangeStatus(errExchangeOff)
	}
	caller, target, err := n.exchangeCaller(ctx, scopeOf(agent), req)
	if err != nil {
		n.auditLog(ctx, agent.ID, "exchange_token", target, err)
		return nil, n.exchangeStatus(err)
	}
	resp, err := n.cfg.Exchanger.Exchange(ctx, caller, exchangeRequest(req.GetExchange()))
	if err != nil {
		if ctx.Err() == nil {
			err = exchange.AsError(err)
		}
		return nil, n.exchangeStatus(err)
	}
	return &tallyv1.ExchangeResponse{
		AccessToken:     resp.AccessToken,
		IssuedTokenType: resp.IssuedTokenType,
		TokenType:       resp.TokenType,
		ExpiresIn:       resp.ExpiresIn,
		Scope:           resp.Scope,
	}, nil
}

// exchangeCaller checks req and the agent's entitlement to its entry and
// returns the caller the exchange acts for, and the audit target (the
// entry's SPIFFE ID once known, else the entry ID).
func (n *Node) exchangeCaller(ctx context.Context, sc registry.Scope, req *tallyv1.ExchangeTokenRequest) (exchange.Caller, string, error) {
	if req.GetExchange() == nil {
		return exchange.Caller{}, req.GetEntryId(), fmt.Errorf("%w: exchange is required", errInvalid)
	}
	entry, err := n.cfg.Entries.Authorized(sc, req.GetEntryId())
	if err != nil {
		return exchange.Caller{}, req.GetEntryId(), err
	}
	id, err := spiffeid.FromString(entry.SPIFFEID)
	if err != nil {
		return exchange.Caller{}, entry.SPIFFEID, err
	}
	if want := req.GetExchange().GetSpiffeId(); want != "" && want != entry.SPIFFEID {
		return exchange.Caller{}, entry.SPIFFEID, fmt.Errorf("%w: spiffe_id %q is not the SPIFFE ID of entry %q", errInvalid, want, entry.ID)
	}
	agentID, err := spiffeid.FromString(sc.AgentID)
	if err != nil {
		return exchange.Caller{}, entry.SPIFFEID, err
	}
	return exchange.Caller{ID: id, Authn: exchange.AuthnAgent, Agent: agentID, Addr: peerHost(ctx)}, entry.SPIFFEID, nil
}

// exchangeRequest is the exchange r asks for; its grant type is implied.
func exchangeRequest(r *tallyv1.ExchangeRequest) exchange.Request {
	return exchange.Request{
		GrantType:          exchange.GrantType,
		SubjectToken:       r.GetSubjectToken(),
		SubjectTokenType:   r.GetSubjectTokenType(),
		RequestedTokenType: r.GetRequestedTokenType(),
		Audience:           r.GetAudience(),
		Resource:           r.GetResource(),
		Scope:              r.GetScope(),
	}
}

// exchangeStatus is toStatus for ExchangeToken. A refused exchange (an
// *exchange.Error anywhere in err's chain) becomes a status whose code
// follows its RFC 6749 error code:
//
//	invalid_request, invalid_scope, invalid_target, unsupported_grant_type  InvalidArgument
//	invalid_grant, unauthorized_client                                      PermissionDenied
//	invalid_client                                                          Unauthenticated
//	temporarily_unavailable                                                 Unavailable
//	server_error (and any unknown code)                                     Internal
//
// with the error's description as message ("internal error" for Internal,
// whose cause is logged, never sent), and one detail, a google.rpc.ErrorInfo:
// Domain "oauth2", Reason the RFC 6749 error code, and, when a policy rule
// refused, Metadata {"rule": <rule name>}. A client maps a status back to
// an OAuth error by that detail. Without an Exchanger: Unimplemented (no
// detail). Every other error is mapped by toStatus.
func (n *Node) exchangeStatus(err error) error {
	var e *exchange.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &e):
		return oauthStatus(n.cfg.Logger, e)
	case errors.Is(err, errExchangeOff):
		n.cfg.Logger.Debug("request refused", logkey.Method, "ExchangeToken", logkey.Code, codes.Unimplemented.String(), logkey.Error, err)
		return status.Error(codes.Unimplemented, err.Error())
	default:
		return toStatus(n.cfg.Logger, "ExchangeToken", err)
	}
}

// oauthStatus is the status of a refused exchange (exchangeStatus).
func oauthStatus(log *slog.Logger, e *exchange.Error) error {
	code, msg := codes.Internal, "internal error"
	switch e.Code {
	case exchange.CodeInvalidRequest, exchange.CodeInvalidScope, exchange.CodeInvalidTarget, exchange.CodeUnsupportedGrant:
		code, msg = codes.InvalidArgument, e.Description
	case exchange.CodeInvalidGrant, exchange.CodeUnauthorizedClient:
		code, msg = codes.PermissionDenied, e.Description
	case exchange.CodeInvalidClient:
		code, msg = codes.Unauthenticated, e.Description
	case exchange.CodeUnavailable:
		code, msg = codes.Unavailable, e.Description
	}
	reason := e.Code
	if code == codes.Internal {
		reason = exchange.CodeServerError
		cause := error(e)
		if inner := e.Unwrap(); inner != nil {
			cause = inner
		}
		log.Error("request failed", logkey.Method, "ExchangeToken", logkey.Error, cause)
	} else {
		log.Debug("request refused", logkey.Method, "ExchangeToken", logkey.Code, code.String(), logkey.Error, e)
	}
	info := &errdetails.ErrorInfo{Domain: "oauth2", Reason: reason}
	if e.Rule != "" {
		info.Metadata = map[string]string{"rule": e.Rule}
	}
	st, err := status.New(code, msg).WithDetails(info)
	if err != nil { // only if info cannot be marshalled
		return status.Error(code, msg)
	}
	return st.Err()
}
