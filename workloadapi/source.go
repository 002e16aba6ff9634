package workloadapi

import (
	"context"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/attest"
)

// X509SVID is one identity, ready to send: DER chain and PKCS#8 key.
type X509SVID struct {
	ID spiffeid.ID
	// CertChain is the DER certificates concatenated, leaf first.
	CertChain []byte
	// Key is the unencrypted PKCS#8 DER private key.
	Key       []byte
	Hint      string
	ExpiresAt time.Time
}

// X509Update is the full current state for one caller: every identity it
// may use and the trust bundle of the trust domain.
type X509Update struct {
	SVIDs  []X509SVID
	Bundle *spiffebundle.Bundle
}

// JWTSVID is a signed JWT-SVID.
type JWTSVID struct {
	ID        spiffeid.ID
	Token     string
	Hint      string
	ExpiresAt time.Time
}

// Subscription delivers X509Updates for one caller. Updates holds only the
// latest value (buffered(1)); a slow reader skips intermediate states.
type Subscription interface {
	Updates() <-chan X509Update
	Close()
}

// Source is what the Workload API needs of the agent's caches. Its methods
// are called concurrently. An error wrapping attest.ErrDenied reaches the
// workload as PermissionDenied, one wrapping ErrRateLimited as
// ResourceExhausted; any other error as Unavailable (the cause is logged, not
// shown).
type Source interface {
	// SubscribeX509 starts following the identities of the entries whose
	// selectors are all among selectors. The first update is sent as soon as
	// those SVIDs exist (minted or cached). An update with no SVIDs means the
	// caller has no identity.
	SubscribeX509(ctx context.Context, selectors []attest.Selector) (Subscription, error)
	// FetchJWTSVIDs returns a JWT-SVID for audience for each identity of the
	// caller (only id, if not zero). None (and a nil error) means the caller
	// has no such identity.
	FetchJWTSVIDs(ctx context.Context, selectors []attest.Selector, id spiffeid.ID, audience []string) ([]JWTSVID, error)
	// SubscribeBundle delivers the current trust bundle at once and every
	// change after it (latest wins); cancel ends it.
	SubscribeBundle() (updates <-chan *spiffebundle.Bundle, cancel func())
	// Bundle is the current trust bundle, nil before the first sync.
	Bundle() *spiffebundle.Bundle
}

// Attestor turns a caller's process into selectors. It is called
// concurrently. An error wrapping attest.ErrDenied, or no selectors, is
// PermissionDenied; another error Unavailable. The Server checks after
// Attest returns that the PID still names the process that connected, still
// running the program it ran then (p.Exe).
type Attestor interface {
	Attest(ctx context.Context, p attest.Process) ([]attest.Selector, error)
}
