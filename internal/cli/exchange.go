package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/delegation"
	"github.com/tallyid/tally/internal/text"
)

// tokenTypes are the short names --subject-token-type and
// --requested-token-type take for the RFC 8693 token type URIs.
var tokenTypes = map[string]string{
	"id_token":     delegation.TokenTypeIDToken,
	"access_token": delegation.TokenTypeAccessToken,
	"jwt":          delegation.TokenTypeJWT,
	"txn_token":    delegation.TokenTypeTxnToken,
}

// maxSubjectToken is the most read from --subject-token-file; the server
// refuses much less.
const maxSubjectToken = 1 << 20

func (a *app) newExchangeCommand() *cobra.Command {
	api := &workloadAPI{app: a}
	var (
		token, tokenFile string
		subjectType      string
		requestedType    string
		audiences        []string
		scopes           []string
		resources        []string
		spiffeID         string
	)
	cmd := &cobra.Command{
		Use:   "exchange",
		Short: "Exchange a user's token for a delegated token through the agent",
		Long: `Send a token to the agent's token exchange (RFC 8693, the
tally.v1.TokenExchange service on the Workload API socket) as the workload the
agent attests tallyctl to be, and print the issued token: its type, lifetime,
scopes, its claims decoded WITHOUT verifying the signature, and the token.
-o json prints the RFC 8693 response fields plus "header" and "claims".

The subject token is read from --subject-token-file (- for standard input),
which keeps it out of the shell history and the process list; --subject-token
takes it on the command line for quick tests. Token types are id_token,
access_token, jwt (a Tally JWT-SVID carrying a user), txn_token, or a full
urn:ietf:params:oauth:token-type: URI.

The agent's socket is --socket-path, else $` + workloadapi.SocketEnv + ` (a
unix:///path URL), else ` + defaultAgentSocket + `. The global --socket names
the server's Admin API and is not used here.`,
		Example: `  tallyctl exchange --subject-token-file id_token.jwt --subject-token-type id_token \
      --audience spiffe://example.org/orders --scope orders.read
  pbpaste | tallyctl exchange --subject-token-file - --subject-token-type access_token \
      --requested-token-type txn_token -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := delegation.ExchangeRequest{
				Audience: nonEmpty(audiences),
				Resource: nonEmpty(resources),
			}
			var err error
			if req.SubjectTokenType, err = tokenTypeFlag("subject-token-type", subjectType); err != nil {
				return err
			}
			if req.RequestedTokenType, err = tokenTypeFlag("requested-token-type", requestedType); err != nil {
				return err
			}
			if req.RequestedTokenType != delegation.TokenTypeJWT && req.RequestedTokenType != delegation.TokenTypeTxnToken {
				return usageErrorf("--requested-token-type %q: want jwt or txn_token", requestedType)
			}
			for _, s := range scopes {
				req.Scope = append(req.Scope, strings.Fields(s)...)
			}
			if spiffeID != "" {
				if req.SPIFFEID, err = spiffeid.FromString(spiffeID); err != nil {
					return &usageError{err: fmt.Errorf("--spiffe-id %q: %w", spiffeID, err)}
				}
			}
			if req.SubjectToken, err = readSubjectToken(cmd, token, tokenFile); err != nil {
				return err
			}
			addr, err := api.address()
			if err != nil {
				return err
			}

			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
			defer cancel()
			client, err := delegation.NewClient(addr)
			if err != nil {
				return err
			}
			defer client.Close()
			issued, err := client.Exchange(ctx, req)
			if err != nil {
				return exchangeError(err)
			}
			out := newExchangeJSON(issued)
			return a.render(cmd, out, func(w io.Writer) error {
				return writeExchange(w, out)
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&api.socketPath, "socket-path", "",
		"path of the agent's Workload API socket (default $"+workloadapi.SocketEnv+", else "+defaultAgentSocket+")")
	fs.StringVar(&tokenFile, "subject-token-file", "", "file holding the subject token, - for standard input")
	fs.StringVar(&token, "subject-token", "", "the subject token itself (visible in shell history: prefer --subject-token-file)")
	fs.StringVar(&subjectType, "subject-token-type", "", "id_token, access_token, jwt, txn_token or a token type URI (required)")
	fs.StringVar(&requestedType, "requested-token-type", "jwt", "jwt or txn_token")
	fs.StringArrayVar(&audiences, "audience", nil, "audience of the issued token (repeatable): the next hop's SPIFFE ID, or the trust domain for a Txn-Token")
	fs.StringArrayVar(&scopes, "scope", nil, "scope to request (repeatable, or space-separated)")
	fs.StringArrayVar(&resources, "resource", nil, "RFC 8707 resource (repeatable)")
	fs.StringVar(&spiffeID, "spiffe-id", "", "which of this process's SPIFFE IDs acts (default: its first)")
	return cmd
}

// tokenTypeFlag returns the token type URI that the value of flag names: a
// short name of tokenTypes, or a urn:ietf:params:oauth:token-type: URI as is.
func tokenTypeFlag(flag, value string) (string, error) {
	if uri, ok := tokenTypes[value]; ok {
		return uri, nil
	}
	if rest, ok := strings.CutPrefix(value, "urn:ietf:params:oauth:token-type:"); ok && rest != "" {
		return value, nil
	}
	if value == "" {
		return "", usageErrorf("--%s is required", flag)
	}
	return "", usageErrorf("--%s %q: want id_token, access_token, jwt, txn_token or a urn:ietf:params:oauth:token-type: URI", flag, value)
}

// readSubjectToken returns the token of --subject-token or the content of
// --subject-token-file (- for stdin), trimmed; exactly one must be given.
func readSubjectToken(cmd *cobra.Command, token, file string) (string, error) {
	switch {
	case token != "" && file != "":
		return "", usageErrorf("--subject-token and --subject-token-file are exclusive")
	case token != "":
		return strings.TrimSpace(token), nil
	case file == "":
		return "", usageErrorf("--subject-token-file (or --subject-token) is required")
	}
	what := file
	var r io.Reader
	if file == "-" {
		what, r = "standard input", cmd.InOrStdin()
	} else {
		f, err := os.Open(file)
		if err != nil {
			return "", fmt.Errorf("read subject token: %w", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxSubjectToken+1))
	switch {
	case err != nil:
		return "", fmt.Errorf("read subject token from %s: %w", what, err)
	case len(data) > maxSubjectToken:
		return "", fmt.Errorf("read subject token from %s: longer than %d bytes", what, maxSubjectToken)
	}
	t := strings.TrimSpace(string(data))
	if t == "" {
		return "", fmt.Errorf("read subject token from %s: it is empty", what)
	}
	return t, nil
}

// exchangeError renders a refused exchange with its code and rule, a gRPC
// error as rpcError does, and returns any other error as is; the server's
// text is escaped.
func exchangeError(err error) error {
	var refused *delegation.ExchangeError
	if errors.As(err, &refused) {
		msg := "exchange refused: " + text.Printable(refused.Code)
		if refused.Description != "" {
			msg += ": " + text.Printable(refused.Description)
		}
		if refused.Rule != "" {
			msg += " (rule " + text.Printable(refused.Rule) + ")"
		}
		return errors.New(msg)
	}
	var rpcErr interface {
		error
		GRPCStatus() *status.Status
	}
	if errors.As(err, &rpcErr) {
		return rpcError("exchange token", rpcErr)
	}
	return err
}

// exchangeJSON is the output of exchange: the RFC 8693 response, and the
// issued token's JOSE header and claims, decoded without verification.
type exchangeJSON struct {
	AccessToken     string         `json:"access_token"`
	IssuedTokenType string         `json:"issued_token_type"`
	TokenType       string         `json:"token_type"`
	ExpiresIn       int64          `json:"expires_in"`
	Scope           string         `json:"scope,omitempty"`
	Header          map[string]any `json:"header,omitempty"`
	Claims          map[string]any `json:"claims,omitempty"`

	decodeErr error
}

func newExchangeJSON(i *delegation.Issued) exchangeJSON {
	out := exchangeJSON{
		AccessToken:     i.Token,
		IssuedTokenType: i.IssuedTokenType,
		TokenType:       i.TokenType,
		ExpiresIn:       int64(i.ExpiresIn.Seconds()),
		Scope:           strings.Join(i.Scope, " "),
	}
	out.Header, out.Claims, out.decodeErr = decodeUnverified(i.Token)
	return out
}

// decodeUnverified returns the JOSE header and the claims of token without
// checking its signature: for display only.
func decodeUnverified(token string) (map[string]any, map[string]any, error) {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{
		jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.PS384, jose.PS512,
	})
	if err != nil {
		return nil, nil, err
	}
	h := tok.Headers[0]
	header := map[string]any{"alg": h.Algorithm}
	if h.KeyID != "" {
		header["kid"] = h.KeyID
	}
	for k, v := range h.ExtraHeaders {
		header[string(k)] = v
	}
	var claims map[string]any
	if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
		return nil, nil, err
	}
	return header, claims, nil
}

// writeExchange writes the response fields, the decoded header and claims as
// indented JSON, and the token last, on a line of its own.
func writeExchange(w io.Writer, out exchangeJSON) error {
	f := newFields(w)
	f.add("Issued token type", out.IssuedTokenType)
	f.add("Token type", out.TokenType)
	f.add("Expires in", (time.Duration(out.ExpiresIn) * time.Second).String())
	f.addIf("Scope", out.Scope)
	if err := f.flush(); err != nil {
		return err
	}
	if out.decodeErr != nil {
		fmt.Fprintf(w, "Claims: cannot decode the token: %v\n", out.decodeErr)
	} else {
		for _, part := range []struct {
			name string
			v    map[string]any
		}{{"Header", out.Header}, {"Claims (unverified)", out.Claims}} {
			var buf bytes.Buffer
			if err := writeJSON(&buf, part.v); err != nil {
				return err
			}
			fmt.Fprintf(w, "%s:\n%s", part.name, buf.Bytes())
		}
	}
	_, err := fmt.Fprintf(w, "Token:\n%s\n", text.Printable(out.AccessToken))
	return err
}
