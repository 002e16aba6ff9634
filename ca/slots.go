package ca

import (
	"crypto"
	"crypto/x509"
	"time"
)

// Kind is the kind of key a slot holds.
type Kind string

const (
	// KindX509 slots sign X509-SVIDs; each holds a CA certificate.
	KindX509 Kind = "x509"
	// KindJWT slots sign JWT-SVIDs; each holds a P-256 key named by a kid.
	KindJWT Kind = "jwt"
)

// SlotStatus is where a key is in its life.
type SlotStatus string

const (
	// StatusPrepared: published in the bundle, not signing yet.
	StatusPrepared SlotStatus = "prepared"
	// StatusActive: signing. Exactly one slot per kind is active.
	StatusActive SlotStatus = "active"
	// StatusOld: no longer signing; kept in the bundle until it expires, so
	// that everything it signed still verifies.
	StatusOld SlotStatus = "old"
	// StatusDropped: removed from the bundle. Only reported to Metrics.
	StatusDropped SlotStatus = "dropped"
	// StatusRevoked: removed from the bundle by Revoke. Only reported.
	StatusRevoked SlotStatus = "revoked"
)

// SlotInfo describes a key slot, for metrics and the dashboard. It holds no
// key material.
type SlotInfo struct {
	Kind   Kind       `json:"kind"`
	Status SlotStatus `json:"status"`
	// ID is the hex subject key ID of the CA certificate (x509) or the kid (jwt).
	ID          string    `json:"id"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	// RetiredAt is when an old key stopped signing; zero for a key retired
	// by a version that did not record it.
	RetiredAt time.Time `json:"retired_at,omitzero"`
	// Tainted marks an old key by Taint: agents re-mint what it signed.
	Tainted   bool      `json:"tainted,omitempty"`
	TaintedAt time.Time `json:"tainted_at,omitzero"`
}

// slot is one key of one kind. Slots are copied on write: a slot reachable
// from the committed state is never modified.
type slot struct {
	kind        Kind
	status      SlotStatus
	id          string
	keyFile     string // base name in KeyDir; empty once the key is no longer needed
	createdAt   time.Time
	notBefore   time.Time
	notAfter    time.Time // x509: chainNotAfter; nothing the slot signs outlives it
	activatedAt time.Time
	retiredAt   time.Time // when it became old; zero if not recorded
	tainted     bool      // old slots only
	taintedAt   time.Time

	cert     *x509.Certificate   // x509: the CA certificate of this key
	upstream []*x509.Certificate // x509, upstream mode: the upstream CA certificate and its chain, anchor last
	public   crypto.PublicKey    // jwt
	signer   crypto.Signer       // nil once old
}

func (s *slot) info() SlotInfo {
	return SlotInfo{
		Kind:        s.kind,
		Status:      s.status,
		ID:          s.id,
		NotBefore:   s.notBefore.UTC(),
		NotAfter:    s.notAfter.UTC(),
		ActivatedAt: s.activatedAt.UTC(),
		RetiredAt:   s.retiredAt.UTC(),
		Tainted:     s.tainted,
		TaintedAt:   s.taintedAt.UTC(),
	}
}

// anchor is the certificate the bundle must hold for this X.509 slot.
func (s *slot) anchor() *x509.Certificate {
	if len(s.upstream) > 0 {
		return s.upstream[len(s.upstream)-1]
	}
	return s.cert
}

// chainNotAfter is when the first certificate of this X.509 slot's chain,
// from its CA certificate up to and including the trust anchor, expires.
func (s *slot) chainNotAfter() time.Time {
	return firstToExpire(append([]*x509.Certificate{s.cert}, s.upstream...)).NotAfter
}

// intermediates are the certificates sent after a leaf signed by this slot.
func (s *slot) intermediates() []*x509.Certificate {
	if len(s.upstream) == 0 {
		return nil
	}
	out := make([]*x509.Certificate, 0, len(s.upstream))
	out = append(out, s.cert)
	return append(out, s.upstream[:len(s.upstream)-1]...)
}

// lifetime-based schedule, measured from creation to NotAfter.

// prepareAt is when a successor of the active slot s is prepared (1/2).
func (s *slot) prepareAt() time.Time {
	return s.createdAt.Add(s.notAfter.Sub(s.createdAt) / 2)
}

// retireAt is when the active slot s hands over to its successor (5/6).
func (s *slot) retireAt() time.Time {
	return s.createdAt.Add(s.notAfter.Sub(s.createdAt) / 6 * 5)
}

// state is the committed set of slots and the bundle sequence number.
type state struct {
	seq  uint64
	x509 []*slot
	jwt  []*slot
}

func (st *state) slots(k Kind) []*slot {
	if k == KindX509 {
		return st.x509
	}
	return st.jwt
}

func (st *state) setSlots(k Kind, s []*slot) {
	if k == KindX509 {
		st.x509 = s
	} else {
		st.jwt = s
	}
}

func (st *state) infos() []SlotInfo {
	out := make([]SlotInfo, 0, len(st.x509)+len(st.jwt))
	for _, k := range kinds() {
		for _, s := range st.slots(k) {
			out = append(out, s.info())
		}
	}
	return out
}

// find returns the active and the prepared slot, either may be nil.
func find(slots []*slot) (active, prepared *slot) {
	for _, s := range slots {
		switch s.status {
		case StatusActive:
			active = s
		case StatusPrepared:
			prepared = s
		}
	}
	return active, prepared
}

func kinds() [2]Kind { return [2]Kind{KindX509, KindJWT} }
