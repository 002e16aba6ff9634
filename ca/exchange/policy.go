package exchange

import (
	"bytes"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"

	"github.com/tallyid/tally/internal/text"
)

// Policy says who may exchange what. It is the exchange key of the server's
// config file.
type Policy struct {
	// Issuers are the OIDC issuers whose users' tokens are accepted as
	// subject tokens.
	Issuers []Issuer `yaml:"issuers"`
	// Rules, in order: the first rule that lists the caller and the
	// requested audience decides.
	Rules []Rule `yaml:"rules"`
	// TokenTTL is the lifetime of issued tokens: at most 5m (the default),
	// and never past the subject token's expiry.
	TokenTTL time.Duration `yaml:"token_ttl"`
	// IssuerTimeout bounds each call to an issuer (discovery, JWKS).
	// Default 5s.
	IssuerTimeout time.Duration `yaml:"issuer_timeout"`
}

// Issuer is a trusted OIDC issuer.
type Issuer struct {
	// URL is the issuer identifier (the iss claim); discovery is at
	// URL/.well-known/openid-configuration.
	URL string `yaml:"url"`
	// Audiences: a subject token's aud must include one of them (the
	// client ID of the application the user signed in to).
	Audiences []string `yaml:"audiences"`
}

// Rule lets some workloads exchange users' tokens for some audiences.
type Rule struct {
	// Name appears in refusals, audit lines and metrics. Required, unique.
	Name string `yaml:"name"`
	// Actors are the callers' SPIFFE IDs; an ID ending in /* matches every ID
	// below that path.
	Actors []string `yaml:"actors"`
	// Audiences are the audiences tokens may be issued for: SPIFFE IDs of
	// the next hop for JWT-SVIDs, the trust domain (spiffe://<td>) for
	// Txn-Tokens.
	Audiences []string `yaml:"audiences"`
	// Scopes are the scopes that may be granted; none: tokens carry no
	// scope.
	Scopes []string `yaml:"scopes"`
	// Claims are the user claims (beyond iss and sub) passed into tokens,
	// e.g. email and roles.
	Claims []string `yaml:"claims"`
}

// UnmarshalYAML decodes strictly: an unknown key anywhere in the policy is
// an error, as it is at the top of the config.
func (p *Policy) UnmarshalYAML(n *yaml.Node) error {
	raw, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	type plain Policy
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	return dec.Decode((*plain)(p))
}

// Reserved user claim names: set from the verified token, never passed.
var reservedClaims = []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "act", "may_act", "txn", "scope", "usr", "azp", "nonce"}

// Validate checks p for the trust domain td.
func (p Policy) Validate(td spiffeid.TrustDomain) error {
	if p.TokenTTL < 0 || p.TokenTTL > MaxTokenTTL {
		return fmt.Errorf("exchange: token_ttl %s out of range (0, %s]", p.TokenTTL, MaxTokenTTL)
	}
	if p.IssuerTimeout < 0 {
		return fmt.Errorf("exchange: issuer_timeout must not be negative, got %s", p.IssuerTimeout)
	}
	seen := map[string]bool{}
	for i, is := range p.Issuers {
		u, err := url.Parse(is.URL)
		switch {
		case err != nil:
			return fmt.Errorf("exchange: issuers[%d]: url %q: %w", i, is.URL, err)
		case u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname())):
			return fmt.Errorf("exchange: issuers[%d]: url %q: want https (http only for a loopback address)", i, is.URL)
		case u.RawQuery != "" || u.Fragment != "":
			return fmt.Errorf("exchange: issuers[%d]: url %q: no query or fragment allowed", i, is.URL)
		case seen[is.URL]:
			return fmt.Errorf("exchange: issuers[%d]: url %q listed twice", i, is.URL)
		case len(is.Audiences) == 0:
			return fmt.Errorf("exchange: issuers[%d] (%s): audiences required", i, is.URL)
		}
		seen[is.URL] = true
	}
	names := map[string]bool{}
	for i, r := range p.Rules {
		where := fmt.Sprintf("exchange: rules[%d]", i)
		if r.Name == "" || text.Printable(r.Name) != r.Name || len(r.Name) > 128 {
			return fmt.Errorf("%s: name required (printable, at most 128 bytes)", where)
		}
		where += " (" + r.Name + ")"
		if names[r.Name] {
			return fmt.Errorf("%s: name used twice", where)
		}
		names[r.Name] = true
		if len(r.Actors) == 0 || len(r.Audiences) == 0 {
			return fmt.Errorf("%s: actors and audiences required", where)
		}
		for _, a := range r.Actors {
			id, err := spiffeid.FromString(strings.TrimSuffix(a, "/*"))
			if err != nil {
				return fmt.Errorf("%s: actor %q: %w", where, a, err)
			}
			if id.TrustDomain() != td {
				return fmt.Errorf("%s: actor %q is not in trust domain %s", where, a, td)
			}
		}
		for _, a := range r.Audiences {
			if a == "" || text.Printable(a) != a || strings.ContainsAny(a, " ") {
				return fmt.Errorf("%s: audience %q: want a non-empty string without spaces", where, a)
			}
		}
		for _, s := range r.Scopes {
			if !validScope(s) {
				return fmt.Errorf("%s: scope %q: want printable ASCII without spaces, quotes or backslashes (RFC 6749 section 3.3)", where, s)
			}
		}
		for _, c := range r.Claims {
			if slices.Contains(reservedClaims, c) || c == "" {
				return fmt.Errorf("%s: claim %q cannot be passed through (it is set by Tally or empty)", where, c)
			}
		}
	}
	return nil
}

func isLoopback(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

// validScope is RFC 6749's scope-token: %x21 / %x23-5B / %x5D-7E.
func validScope(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// matches reports whether the rule lists id as an actor.
func (r *Rule) matches(id spiffeid.ID) bool {
	s := id.String()
	for _, a := range r.Actors {
		if prefix, ok := strings.CutSuffix(a, "/*"); ok {
			if strings.HasPrefix(s, prefix+"/") {
				return true
			}
		} else if a == s {
			return true
		}
	}
	return false
}

// decide finds the rule for caller and audience.
func (p *Policy) decide(caller spiffeid.ID, audience string) (*Rule, error) {
	var listed *Rule
	for i := range p.Rules {
		r := &p.Rules[i]
		if !r.matches(caller) {
			continue
		}
		if slices.Contains(r.Audiences, audience) {
			return r, nil
		}
		if listed == nil {
			listed = r
		}
	}
	if listed == nil {
		return nil, refuse(CodeUnauthorizedClient, "no exchange rule lists %s as an actor", caller)
	}
	return nil, refuse(CodeInvalidTarget, "%s may not exchange for audience %q", caller, audience).by(listed.Name)
}

// grant works out the scopes to grant: the requested ones (all of them
// allowed), or, when none is requested, every allowed one. allowed is the
// rule's scopes, narrowed to the subject token's when it has a scope (a
// chain never widens).
func (r *Rule) grant(requested []string, subject []string, subjectBounds bool) ([]string, error) {
	allowed := r.Scopes
	if subjectBounds {
		allowed = slices.DeleteFunc(slices.Clone(allowed), func(s string) bool { return !slices.Contains(subject, s) })
	}
	if len(requested) == 0 {
		return allowed, nil
	}
	for _, s := range requested {
		if !validScope(s) {
			return nil, refuse(CodeInvalidScope, "scope %q is not a valid scope token", s)
		}
		if !slices.Contains(r.Scopes, s) {
			return nil, refuse(CodeInvalidScope, "scope %q is not allowed", s).by(r.Name)
		}
		if !slices.Contains(allowed, s) {
			return nil, refuse(CodeInvalidScope, "scope %q is wider than the subject token's scope %q", s, strings.Join(subject, " ")).by(r.Name)
		}
	}
	return requested, nil
}
