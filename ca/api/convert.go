package api

import (
	"fmt"
	"time"

	"github.com/tallyid/tally/ca/store"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// maxTTLSeconds bounds every TTL on the wire before it becomes a
// time.Duration (which would overflow past ~292 years). Real limits are
// checked later; this only keeps the conversion exact.
const maxTTLSeconds = 100 * 365 * 24 * 3600

// ttlFromSeconds converts a wire TTL, refusing values that cannot be a
// lifetime. Negative values pass through for the domain check to name.
func ttlFromSeconds(field string, s int64) (time.Duration, error) {
	if s > maxTTLSeconds {
		return 0, fmt.Errorf("%w: %s: %d seconds is out of range", errInvalid, field, s)
	}
	if s < -maxTTLSeconds {
		return 0, fmt.Errorf("%w: %s: %d seconds is negative", errInvalid, field, s)
	}
	return time.Duration(s) * time.Second, nil
}

func entryFromProto(p *tallyv1.Entry) (store.Entry, error) {
	if p == nil {
		return store.Entry{}, fmt.Errorf("%w: entry is required", errInvalid)
	}
	if p.GetOwner() != nil {
		return store.Entry{}, fmt.Errorf("%w: owner is output only: the Kubernetes registrar marks the entries it keeps", errInvalid)
	}
	x509TTL, err := ttlFromSeconds("x509_ttl", p.GetX509TtlSeconds())
	if err != nil {
		return store.Entry{}, err
	}
	jwtTTL, err := ttlFromSeconds("jwt_ttl", p.GetJwtTtlSeconds())
	if err != nil {
		return store.Entry{}, err
	}
	return store.Entry{
		ID:        p.GetId(),
		SPIFFEID:  p.GetSpiffeId(),
		ParentID:  p.GetParentId(),
		Selectors: selectorsFromProto(p.GetSelectors()),
		X509TTL:   x509TTL,
		JWTTTL:    jwtTTL,
		DNSNames:  p.GetDnsNames(),
		Hint:      p.GetHint(),
		Admin:     p.GetAdmin(),
	}, nil
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
		Owner:          ownerToProto(e.Owner),
		Revision:       e.Revision,
		CreatedAt:      e.CreatedAt.Unix(),
	}
}

func ownerToProto(o *store.Owner) *tallyv1.EntryOwner {
	if o == nil {
		return nil
	}
	return &tallyv1.EntryOwner{Cluster: o.Cluster, Kind: o.Kind, Name: o.Name, Pod: o.Pod, PodUid: o.PodUID}
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
