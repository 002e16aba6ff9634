package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/ca/exchange"
	"github.com/tallyid/tally/internal/logkey"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// maxSubjectToken bounds, in bytes, the subject token of an exchange; a
// longer one is refused before it is forwarded (the server's own bound).
const maxSubjectToken = exchange.MaxTokenBytes

// Identity is one identity of a caller: a registration entry the agent may
// issue, and its SPIFFE ID.
type Identity struct {
	EntryID string
	ID      spiffeid.ID
}

// Exchanger is what the TokenExchange service needs of the agent. Its
// methods are called concurrently.
type Exchanger interface {
	// Identities returns the identities of the entries whose selectors are
	// all among selectors, in the order of the caller's X509-SVIDs: the
	// first is its default identity. None (and a nil error) means the
	// caller has no identity; an error reaches the workload as Unavailable.
	Identities(ctx context.Context, selectors []attest.Selector) ([]Identity, error)
	// ExchangeToken forwards req to the server for id. The server's answer
	// is returned as it is: a refusal as its gRPC status error, unwrapped,
	// which reaches the workload unchanged (code, message and details).
	// Any other error (no connection to the server, say) reaches it as
	// Unavailable, or as ResourceExhausted if it wraps ErrRateLimited.
	ExchangeToken(ctx context.Context, id Identity, req *tallyv1.ExchangeRequest) (*tallyv1.ExchangeResponse, error)
}

// exchangeServer serves tallyv1.TokenExchange on the Workload API socket,
// with the Server's header check, attestation and status mapping.
type exchangeServer struct {
	tallyv1.UnimplementedTokenExchangeServer
	s *Server
}

// Exchange forwards a token exchange to the server for one of the caller's
// identities: spiffe_id if set, else its first (that of its default
// X509-SVID). A missing header, a malformed spiffe_id or a subject token
// over maxSubjectToken bytes is InvalidArgument; a caller without an
// identity, or without the one spiffe_id names, is PermissionDenied. The
// server's refusals reach the caller as the server sent them (see
// Exchanger). No token is logged.
func (x exchangeServer) Exchange(ctx context.Context, req *tallyv1.ExchangeRequest) (*tallyv1.ExchangeResponse, error) {
	s := x.s
	log := s.log.With(logkey.Method, "Exchange")
	if err := checkHeader(ctx); err != nil {
		return nil, toStatus(log, err)
	}
	if n := len(req.GetSubjectToken()); n > maxSubjectToken {
		return nil, toStatus(log, fmt.Errorf("%w: subject_token of %d bytes, at most %d", errInvalid, n, maxSubjectToken))
	}
	var want spiffeid.ID
	if req.GetSpiffeId() != "" {
		var err error
		if want, err = spiffeid.FromString(req.GetSpiffeId()); err != nil {
			return nil, toStatus(log, fmt.Errorf("%w: spiffe_id: %w", errInvalid, err))
		}
	}
	c, log, err := s.attest(ctx, log)
	if err != nil {
		return nil, toStatus(log, err)
	}
	ids, err := s.cfg.Exchanger.Identities(ctx, c.selectors)
	if err != nil {
		return nil, toStatus(log, fmt.Errorf("%w: %w", errSource, err))
	}
	id, err := chooseIdentity(ids, want)
	if err != nil {
		return nil, toStatus(log, err)
	}
	log = log.With(logkey.SPIFFEID, id.ID.String(), logkey.EntryID, id.EntryID)
	resp, err := s.cfg.Exchanger.ExchangeToken(ctx, id, req)
	if err != nil {
		return nil, forwardStatus(log, err)
	}
	// The token goes only to the process that connected.
	if err := c.pin.Alive(); err != nil {
		return nil, toStatus(log, err)
	}
	return resp, nil
}

// chooseIdentity is want among ids, or the first of ids if want is zero.
func chooseIdentity(ids []Identity, want spiffeid.ID) (Identity, error) {
	for _, id := range ids {
		if want.IsZero() || id.ID == want {
			return id, nil
		}
	}
	if want.IsZero() {
		return Identity{}, errNoIdentity
	}
	return Identity{}, fmt.Errorf("%w: caller is not %s", errNoIdentity, want)
}

// forwardStatus is the status of a failed forward: the server's status as
// it is, else what toStatus makes of err.
func forwardStatus(log *slog.Logger, err error) error {
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		log.Debug("token exchange refused by the server", logkey.Code, status.Code(err).String(), logkey.Error, err)
		return err
	}
	if errors.Is(err, ErrRateLimited) {
		return toStatus(log, fmt.Errorf("%w: %w", errExchangeLimited, err))
	}
	return toStatus(log, fmt.Errorf("%w: %w", errSource, err))
}
