package api

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/tallyid/tally/internal/reserved"
)

// peerVerifier verifies callers' TLS client certificates as X509-SVIDs of
// the trust domain. A chain that verified against the current bundle is
// remembered (by the leaf's hash, until it expires or the bundle changes),
// so calls on an established connection skip the signature checks. A
// remembered verification holds only for the bundle sequence it was made
// with, and the first call with a later bundle forgets them
// all: a key revoked from the bundle (which bumps the sequence)
// authenticates nothing from the next call on.
type peerVerifier struct {
	td spiffeid.TrustDomain

	mu   sync.Mutex
	seq  uint64 // the latest bundle sequence seen; seen holds only verifications made with it
	seen map[[32]byte]verified
}

type verified struct {
	id        spiffeid.ID
	bundleSeq uint64
	notBefore time.Time
	notAfter  time.Time
}

const maxVerified = 10_000

func newPeerVerifier(td spiffeid.TrustDomain) *peerVerifier {
	return &peerVerifier{td: td, seen: map[[32]byte]verified{}}
}

// verify returns the caller's SPIFFE ID and leaf certificate at time now.
func (v *peerVerifier) verify(ctx context.Context, bundle *spiffebundle.Bundle, now time.Time) (spiffeid.ID, *x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: no peer", errUnauthenticated)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: no client certificate", errUnauthenticated)
	}
	certs := info.State.PeerCertificates
	seq, _ := bundle.SequenceNumber()
	key := sha256.Sum256(certs[0].Raw)

	v.mu.Lock()
	if seq > v.seq {
		clear(v.seen)
		v.seq = seq
	}
	hit, ok := v.seen[key]
	v.mu.Unlock()
	if ok && hit.bundleSeq == seq && !now.Before(hit.notBefore) && now.Before(hit.notAfter) {
		return hit.id, certs[0], nil
	}

	id, chains, err := x509svid.Verify(certs, bundle, x509svid.WithTime(now))
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: client certificate: %w", errUnauthenticated, err)
	}
	if !id.MemberOf(v.td) {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: %s is not in trust domain %s", errUnauthenticated, id, v.td.Name())
	}
	notBefore, notAfter := certs[0].NotBefore, certs[0].NotAfter
	for _, c := range chains[0] {
		notBefore = later(notBefore, c.NotBefore)
		notAfter = earlier(notAfter, c.NotAfter)
	}
	v.mu.Lock()
	if len(v.seen) >= maxVerified {
		clear(v.seen)
	}
	if seq == v.seq { // not a call that raced a bundle change with the older bundle
		v.seen[key] = verified{id: id, bundleSeq: seq, notBefore: notBefore, notAfter: notAfter}
	}
	v.mu.Unlock()
	return id, certs[0], nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// isAgentID reports whether id names an agent.
func isAgentID(id spiffeid.ID) bool {
	return reserved.IsAgent(id)
}

func serialString(c *x509.Certificate) string { return c.SerialNumber.Text(16) }
