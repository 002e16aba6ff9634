package agent

import (
	"crypto/x509"
	"encoding/hex"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DefaultTaintJitter is CacheConfig.TaintJitter's and
// SessionConfig.TaintJitter's default.
const DefaultTaintJitter = 30 * time.Second

// taintSet is the IDs of the tainted X.509 CA keys: the hex subject key
// IDs of their CA certificates, as the server's slots name them
// (SyncEntriesResponse.tainted_x509_ids). A nil set is "not known", an
// empty one "none". Immutable once made.
type taintSet map[string]struct{}

// newTaintSet is the set of ids, lowercased; never nil.
func newTaintSet(ids []string) taintSet {
	s := make(taintSet, len(ids))
	for _, id := range ids {
		s[strings.ToLower(id)] = struct{}{}
	}
	return s
}

// has reports whether key id is tainted; "" never is.
func (s taintSet) has(id string) bool {
	_, ok := s[id]
	return ok && id != ""
}

// minus is the IDs in s and not in old.
func (s taintSet) minus(old taintSet) taintSet {
	out := taintSet{}
	for id := range s {
		if !old.has(id) {
			out[id] = struct{}{}
		}
	}
	return out
}

// signerID is the slot ID of the CA key that signed chain's leaf: the hex
// of the leaf's AuthorityKeyId, which is the signing CA certificate's
// SubjectKeyId; for a leaf without one, the SubjectKeyId of the next
// certificate of chain, which should be a verified chain (x509svid.Verify)
// for that: its second certificate signed the leaf, whether the server
// sent it or it is the bundle's. "" if neither is known.
func signerID(chain []*x509.Certificate) string {
	if len(chain) == 0 {
		return ""
	}
	if aki := chain[0].AuthorityKeyId; len(aki) > 0 {
		return hex.EncodeToString(aki)
	}
	if len(chain) > 1 && len(chain[1].SubjectKeyId) > 0 {
		return hex.EncodeToString(chain[1].SubjectKeyId)
	}
	return ""
}

// svidSigner is signerID of an X509-SVID's chain, verified against bundle
// at now when the chain alone does not name the signer; "" if unknown.
func svidSigner(chain []*x509.Certificate, bundle x509bundle.Source, now time.Time) string {
	if id := signerID(chain); id != "" || bundle == nil {
		return id
	}
	if _, verified, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now)); err == nil {
		return signerID(verified[0])
	}
	return ""
}

// taintRenewAt is when a certificate valid until notAfter whose signing key
// is tainted at now is renewed: at a random time (rnd, in [0, 1)) within
// the next window or tenth of its remaining life, whichever is shorter, so
// that a taint does not make every SVID of a node renew at once; never
// later than renewAt, its renewal time before the taint.
func taintRenewAt(now, notAfter, renewAt time.Time, window time.Duration, rnd func() float64) time.Time {
	if rnd == nil {
		rnd = rand.Float64
	}
	window = min(window, notAfter.Sub(now)/10)
	at := now
	if window > 0 {
		at = now.Add(time.Duration(rnd() * float64(window)))
	}
	if !renewAt.IsZero() && renewAt.Before(at) {
		return renewAt
	}
	return at
}
