// Package jointoken attests agents with single-use join tokens.
package jointoken

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/internal/reserved"
)

// Type is the attestation type name on the wire.
const Type = "join_token"

// ErrUnknown and ErrExpired are what a Tokens implementation returns for a
// token that does not exist (or was used) and one that expired.
var (
	ErrUnknown = errors.New("join token unknown or already used")
	ErrExpired = errors.New("join token expired")
)

// Tokens consumes join tokens. Of concurrent callers with the same token
// exactly one succeeds.
type Tokens interface {
	// ConsumeJoinToken deletes the token and returns its alias ("" if none),
	// or an error wrapping ErrUnknown or ErrExpired.
	ConsumeJoinToken(ctx context.Context, token string) (alias string, err error)
}

// Attestor is the server side of join-token attestation.
type Attestor struct {
	td     spiffeid.TrustDomain
	tokens Tokens
}

// New returns an Attestor issuing agent IDs in td.
func New(td spiffeid.TrustDomain, tokens Tokens) *Attestor {
	return &Attestor{td: td, tokens: tokens}
}

// TokenID is the public name of a token: it appears in the agent ID and in
// logs instead of the secret.
func TokenID(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:16])
}

// AgentID is the SPIFFE ID of the agent that used token.
func AgentID(td spiffeid.TrustDomain, token string) spiffeid.ID {
	id, err := reserved.AgentID(td, Type, TokenID(token))
	if err != nil {
		panic(err) // a token ID is hex: always a valid segment
	}
	return id
}

// Attest consumes the token in data.
func (a *Attestor) Attest(ctx context.Context, data []byte) (attest.NodeResult, error) {
	token := string(data)
	if token == "" {
		return attest.NodeResult{}, fmt.Errorf("%w: empty join token", attest.ErrDenied)
	}
	alias, err := a.tokens.ConsumeJoinToken(ctx, token)
	switch {
	case errors.Is(err, ErrUnknown), errors.Is(err, ErrExpired):
		return attest.NodeResult{}, fmt.Errorf("%w: join token %s: %w", attest.ErrDenied, TokenID(token), err)
	case err != nil:
		return attest.NodeResult{}, fmt.Errorf("jointoken: consume %s: %w", TokenID(token), err)
	}
	res := attest.NodeResult{AgentID: AgentID(a.td, token)}
	if alias != "" {
		if err := checkAlias(a.td, alias); err != nil {
			return attest.NodeResult{}, fmt.Errorf("%w: join token %s: %w", attest.ErrDenied, TokenID(token), err)
		}
		res.Aliases = []string{alias}
	}
	return res, nil
}

// checkAlias refuses a stored alias that is not a SPIFFE ID of td, such as
// one written before the Admin API checked it or around it. go-spiffe's
// parser admits only [a-z0-9.-_] in the trust domain and [a-zA-Z0-9.-_] in
// path segments, so no control, bidirectional or other invisible character
// can become an agent's alias; the error quotes the alias escaped.
func checkAlias(td spiffeid.TrustDomain, alias string) error {
	id, err := spiffeid.FromString(alias)
	switch {
	case err != nil:
		return fmt.Errorf("stored alias %q: %w", alias, err)
	case !id.MemberOf(td):
		return fmt.Errorf("stored alias %q: not in trust domain %q", alias, td.Name())
	}
	return nil
}

// Client is the agent side: it presents the configured token, or the one in
// TokenFile, read at each attestation.
type Client struct {
	Token     string
	TokenFile string
}

// Type is the attestation type.
func (Client) Type() string { return Type }

// Data returns the token.
func (c Client) Data(context.Context) ([]byte, error) {
	token := c.Token
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("jointoken: join token file: %w", err)
		}
		if token = strings.TrimSpace(string(b)); token == "" {
			return nil, fmt.Errorf("jointoken: join token file %s is empty", c.TokenFile)
		}
	}
	if token == "" {
		return nil, errors.New("jointoken: no join token configured")
	}
	return []byte(token), nil
}
