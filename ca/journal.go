package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// journalVersion is the version of the journal format written by this code.
// Fields added within a version are optional (retired_at, tainted,
// tainted_at): a journal written without them reads as it always did.
const journalVersion = 1

// journalDoc is the persisted form of the authority's state: the key slots
// and the sequence number of the last published bundle. It holds no private
// key: those live in KeyDir, named by key_file.
type journalDoc struct {
	Version        int           `json:"version"`
	TrustDomain    string        `json:"trust_domain"`
	BundleSequence uint64        `json:"bundle_sequence"`
	Slots          []journalSlot `json:"slots"`
}

type journalSlot struct {
	Kind   Kind       `json:"kind"`
	Status SlotStatus `json:"status"`
	ID     string     `json:"id"`
	// KeyFile is the private key's file name in KeyDir; empty for old slots,
	// whose keys are deleted.
	KeyFile string `json:"key_file,omitempty"`
	// CertDER is the CA certificate (x509).
	CertDER []byte `json:"cert_der,omitempty"`
	// UpstreamDER is the upstream chain above CertDER, anchor last (x509,
	// upstream mode).
	UpstreamDER [][]byte `json:"upstream_der,omitempty"`
	// PublicKeyDER is the PKIX public key (jwt).
	PublicKeyDER []byte    `json:"public_key_der,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	NotBefore    time.Time `json:"not_before"`
	NotAfter     time.Time `json:"not_after"`
	ActivatedAt  time.Time `json:"activated_at,omitzero"`
	// RetiredAt is when an old slot stopped signing. Journals written
	// before it was recorded lack it: such a slot is treated as signing
	// until its NotAfter.
	RetiredAt time.Time `json:"retired_at,omitzero"`
	// Tainted and TaintedAt mark an old slot tainted by hand.
	Tainted   bool      `json:"tainted,omitempty"`
	TaintedAt time.Time `json:"tainted_at,omitzero"`
}

func marshalJournal(td spiffeid.TrustDomain, st *state) ([]byte, error) {
	doc := journalDoc{
		Version:        journalVersion,
		TrustDomain:    td.Name(),
		BundleSequence: st.seq,
	}
	for _, k := range kinds() {
		for _, s := range st.slots(k) {
			js := journalSlot{
				Kind:        s.kind,
				Status:      s.status,
				ID:          s.id,
				KeyFile:     s.keyFile,
				CreatedAt:   s.createdAt,
				NotBefore:   s.notBefore,
				NotAfter:    s.notAfter,
				ActivatedAt: s.activatedAt,
				RetiredAt:   s.retiredAt,
				Tainted:     s.tainted,
				TaintedAt:   s.taintedAt,
			}
			switch s.kind {
			case KindX509:
				js.CertDER = s.cert.Raw
				for _, c := range s.upstream {
					js.UpstreamDER = append(js.UpstreamDER, c.Raw)
				}
			case KindJWT:
				der, err := x509.MarshalPKIXPublicKey(s.public)
				if err != nil {
					return nil, fmt.Errorf("ca: journal: marshal public key of jwt slot %s: %w", s.id, err)
				}
				js.PublicKeyDER = der
			}
			doc.Slots = append(doc.Slots, js)
		}
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("ca: journal: marshal: %w", err)
	}
	return data, nil
}

// parseJournal decodes a journal and checks it is consistent. Private keys
// are not loaded here.
func parseJournal(td spiffeid.TrustDomain, data []byte) (*state, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc journalDoc
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("ca: journal: decode: %w", err)
	}
	if doc.Version != journalVersion {
		return nil, fmt.Errorf("ca: journal: unsupported version %d (want %d)", doc.Version, journalVersion)
	}
	if doc.TrustDomain != td.Name() {
		return nil, fmt.Errorf("ca: journal: written for trust domain %q, configured %q", doc.TrustDomain, td.Name())
	}
	st := &state{seq: doc.BundleSequence}
	for i, js := range doc.Slots {
		s, err := parseJournalSlot(td, js)
		if err != nil {
			return nil, fmt.Errorf("ca: journal: slot %d: %w", i, err)
		}
		st.setSlots(s.kind, append(st.slots(s.kind), s))
	}
	for _, k := range kinds() {
		var active, prepared int
		for _, s := range st.slots(k) {
			switch s.status {
			case StatusActive:
				active++
			case StatusPrepared:
				prepared++
			}
		}
		if active > 1 || prepared > 1 {
			return nil, fmt.Errorf("ca: journal: %s: %d active and %d prepared slots, want at most one each", k, active, prepared)
		}
	}
	return st, nil
}

func parseJournalSlot(td spiffeid.TrustDomain, js journalSlot) (*slot, error) {
	s := &slot{
		kind:        js.Kind,
		status:      js.Status,
		id:          js.ID,
		keyFile:     js.KeyFile,
		createdAt:   js.CreatedAt,
		notBefore:   js.NotBefore,
		notAfter:    js.NotAfter,
		activatedAt: js.ActivatedAt,
		retiredAt:   js.RetiredAt,
		tainted:     js.Tainted,
		taintedAt:   js.TaintedAt,
	}
	if js.Tainted && js.Status != StatusOld {
		return nil, fmt.Errorf("%s slot %s is tainted; only old slots can be", js.Status, js.ID)
	}
	switch js.Status {
	case StatusPrepared, StatusActive:
		if js.KeyFile == "" {
			return nil, fmt.Errorf("%s slot %s has no key file", js.Status, js.ID)
		}
	case StatusOld:
	default:
		return nil, fmt.Errorf("slot %s has unknown status %q", js.ID, js.Status)
	}
	if js.KeyFile != "" && (filepath.Base(js.KeyFile) != js.KeyFile || js.KeyFile == "." || js.KeyFile == "..") {
		return nil, fmt.Errorf("slot %s: key file %q is not a plain file name", js.ID, js.KeyFile)
	}
	if !js.CreatedAt.Before(js.NotAfter) {
		return nil, fmt.Errorf("slot %s: created_at %s is not before not_after %s", js.ID, js.CreatedAt, js.NotAfter)
	}
	switch js.Kind {
	case KindX509:
		cert, err := x509.ParseCertificate(js.CertDER)
		if err != nil {
			return nil, fmt.Errorf("x509 slot %s: parse certificate: %w", js.ID, err)
		}
		if err := checkCACert(td, cert); err != nil {
			return nil, fmt.Errorf("x509 slot %s: %w", js.ID, err)
		}
		if got := hex.EncodeToString(cert.SubjectKeyId); got != js.ID {
			return nil, fmt.Errorf("x509 slot %s: certificate subject key id is %s", js.ID, got)
		}
		s.cert = cert
		for _, der := range js.UpstreamDER {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, fmt.Errorf("x509 slot %s: parse upstream certificate: %w", js.ID, err)
			}
			s.upstream = append(s.upstream, c)
		}
		// A slot made before its lifetime was capped by the upstream chain
		// may hold a certificate that outlives it: it ends with the chain.
		s.notBefore, s.notAfter = cert.NotBefore, s.chainNotAfter()
	case KindJWT:
		pub, err := x509.ParsePKIXPublicKey(js.PublicKeyDER)
		if err != nil {
			return nil, fmt.Errorf("jwt slot %s: parse public key: %w", js.ID, err)
		}
		if js.ID == "" {
			return nil, fmt.Errorf("jwt slot has no kid")
		}
		s.public = pub
	default:
		return nil, fmt.Errorf("slot %s has unknown kind %q", js.ID, js.Kind)
	}
	return s, nil
}

// checkCACert checks that cert is a signing certificate of td: cA=true,
// keyCertSign, and the trust domain's SPIFFE ID (no path) as URI SAN.
func checkCACert(td spiffeid.TrustDomain, cert *x509.Certificate) error {
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("certificate is not a signing certificate (cA and keyCertSign required)")
	}
	id, err := x509svid.IDFromCert(cert)
	if err != nil {
		return fmt.Errorf("certificate spiffe id: %w", err)
	}
	if id != td.ID() {
		return fmt.Errorf("certificate spiffe id is %s, want %s", id, td.ID())
	}
	return nil
}

// publicKey returns the public key the slot's private key must match.
func (s *slot) publicKey() crypto.PublicKey {
	if s.kind == KindX509 {
		return s.cert.PublicKey
	}
	return s.public
}
