package agent

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/attest"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// entry is a registration entry as the agent uses it. Immutable.
type entry struct {
	ID        string
	SPIFFEID  spiffeid.ID
	Selectors []attest.Selector
	X509TTL   time.Duration
	DNSNames  []string
	Hint      string
	Revision  uint64
	CreatedAt time.Time
}

func entryFromProto(p *tallyv1.Entry) (*entry, error) {
	id, err := spiffeid.FromString(p.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("spiffe_id: %w", err)
	}
	e := &entry{
		ID:        p.GetId(),
		SPIFFEID:  id,
		X509TTL:   time.Duration(p.GetX509TtlSeconds()) * time.Second,
		DNSNames:  p.GetDnsNames(),
		Hint:      p.GetHint(),
		Revision:  p.GetRevision(),
		CreatedAt: time.Unix(p.GetCreatedAt(), 0),
	}
	for _, s := range p.GetSelectors() {
		e.Selectors = append(e.Selectors, attest.Selector{Type: s.GetType(), Value: s.GetValue()})
	}
	return e, nil
}

// sameIdentity reports whether an SVID minted for a is still right for b.
func sameIdentity(a, b *entry) bool {
	if a.SPIFFEID != b.SPIFFEID || a.X509TTL != b.X509TTL || len(a.DNSNames) != len(b.DNSNames) {
		return false
	}
	for i := range a.DNSNames {
		if a.DNSNames[i] != b.DNSNames[i] {
			return false
		}
	}
	return true
}

// matches reports whether every selector of e is in have (AND).
func (e *entry) matches(have map[attest.Selector]struct{}) bool {
	for _, s := range e.Selectors {
		if _, ok := have[s]; !ok {
			return false
		}
	}
	return true
}
