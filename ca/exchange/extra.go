package exchange

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// compile makes p ready to decide, reusing the issuers (and their cached
// discovery and keys) of the policy in force. s.mu is held, or s is new.
func (s *Service) compile(p Policy) *active {
	a := &active{policy: p, issuers: map[string]*issuer{}, ttl: MaxTokenTTL}
	if p.TokenTTL > 0 {
		a.ttl = p.TokenTTL
	}
	if s.cfg.MaxTTL > 0 && s.cfg.MaxTTL < a.ttl {
		a.ttl = s.cfg.MaxTTL
	}
	used := map[string]*issuer{}
	for _, is := range p.Issuers {
		key := is.URL + "\x00" + strings.Join(is.Audiences, "\x00")
		known := s.known[key]
		if known == nil {
			known = newIssuer(is, s.timeout, s.cfg.HTTPClient, s.cfg.Clock)
		}
		a.issuers[is.URL], used[key] = known, known
	}
	s.known = used // an issuer no policy lists any more is dropped
	return a
}

// SetExtra puts in force, beside the configured policy, the extra
// policies by name (the DelegationPolicy resources), replacing those of
// the last call. Each is validated on its own: one that fails is left
// out, and its error returned under its name; the others apply.
//
// The merged policy decides with the configured rules first, then each
// extra policy's rules by policy name, named "<policy>/<rule>" in
// refusals and audit lines. Issuers are united (an issuer listed twice
// accepts the audiences of both), and the shortest token_ttl set wins.
func (s *Service) SetExtra(extra map[string]Policy) map[string]error {
	s.mu.Lock()
	defer s.mu.Unlock()
	errs := map[string]error{}
	merged := s.cfg.Policy
	merged.Issuers = slices.Clone(merged.Issuers)
	merged.Rules = slices.Clone(merged.Rules)
	for _, name := range slices.Sorted(maps.Keys(extra)) {
		p := extra[name]
		if err := p.Validate(s.cfg.TrustDomain); err != nil {
			errs[name] = err
			continue
		}
		for _, is := range p.Issuers {
			if i := slices.IndexFunc(merged.Issuers, func(m Issuer) bool { return m.URL == is.URL }); i >= 0 {
				auds := slices.Concat(merged.Issuers[i].Audiences, is.Audiences)
				slices.Sort(auds)
				merged.Issuers[i].Audiences = slices.Compact(auds)
				continue
			}
			merged.Issuers = append(merged.Issuers, is)
		}
		for _, r := range p.Rules {
			r.Name = name + "/" + r.Name
			merged.Rules = append(merged.Rules, r)
		}
		if p.TokenTTL > 0 && (merged.TokenTTL == 0 || p.TokenTTL < merged.TokenTTL) {
			merged.TokenTTL = p.TokenTTL
		}
	}
	if err := merged.Validate(s.cfg.TrustDomain); err != nil {
		// Each part passed alone; together they cannot fail but for a rule
		// name made twice, which the names' "/" rules out. Keep the last.
		errs[""] = fmt.Errorf("exchange: merged policy: %w", err)
		return errs
	}
	s.active.Store(s.compile(merged))
	return errs
}
