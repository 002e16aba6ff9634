package api

import (
	"time"

	"github.com/tallyid/tally/ca/store"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func entryFromProto(p *tallyv1.Entry) store.Entry {
	if p == nil {
		return store.Entry{}
	}
	return store.Entry{
		ID:        p.GetId(),
		SPIFFEID:  p.GetSpiffeId(),
		ParentID:  p.GetParentId(),
		Selectors: selectorsFromProto(p.GetSelectors()),
		X509TTL:   time.Duration(p.GetX509TtlSeconds()) * time.Second,
		JWTTTL:    time.Duration(p.GetJwtTtlSeconds()) * time.Second,
		DNSNames:  p.GetDnsNames(),
		Hint:      p.GetHint(),
		Admin:     p.GetAdmin(),
	}
}

// EntryToProto converts a stored entry to its wire form.
func EntryToProto(e *store.Entry) *tallyv1.Entry {
	return &tallyv1.Entry{
		Id:             e.ID,
		SpiffeId:       e.SPIFFEID,
		ParentId:       e.ParentID,
		Selectors:      selectorsToProto(e.Selectors),
		X509TtlSeconds: int64(e.X509TTL / time.Second),
		JwtTtlSeconds:  int64(e.JWTTTL / time.Second),
		DnsNames:       e.DNSNames,
		Hint:           e.Hint,
		Admin:          e.Admin,
		Revision:       e.Revision,
		CreatedAt:      e.CreatedAt.Unix(),
	}
}

func selectorsFromProto(ps []*tallyv1.Selector) []store.Selector {
	out := make([]store.Selector, 0, len(ps))
	for _, p := range ps {
		out = append(out, store.Selector{Type: p.GetType(), Value: p.GetValue()})
	}
	return out
}

func selectorsToProto(ss []store.Selector) []*tallyv1.Selector {
	out := make([]*tallyv1.Selector, 0, len(ss))
	for _, s := range ss {
		out = append(out, &tallyv1.Selector{Type: s.Type, Value: s.Value})
	}
	return out
}

func agentToProto(a *store.Agent) *tallyv1.Agent {
	return &tallyv1.Agent{
		SpiffeId:        a.ID,
		AttestationType: a.AttestationType,
		SerialNumber:    a.SerialNumber,
		ExpiresAt:       a.ExpiresAt.Unix(),
		Selectors:       selectorsToProto(a.Selectors),
		Aliases:         a.Aliases,
		Banned:          a.Banned,
		AttestedAt:      a.AttestedAt.Unix(),
		RenewedAt:       a.RenewedAt.Unix(),
	}
}
