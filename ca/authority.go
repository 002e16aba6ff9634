// Package ca is Tally's certificate authority: it keeps the trust domain's
// X.509 and JWT signing keys, rotates them through PREPARED, ACTIVE and OLD
// slots, signs X509-SVIDs and JWT-SVIDs, and publishes the trust bundle.
package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	kmsapi "go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/softkms"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/internal/logkey"
)

// Log attribute keys.

// Authority is the trust domain's certificate authority. Signing methods,
// Bundle, SubscribeBundle, Slots and TaintedX509IDs are safe for concurrent
// use and do not block on rotation; Run drives rotation, and Prepare,
// Activate, Taint and Revoke rotate by hand (manual.go).
type Authority struct {
	cfg     Config
	td      spiffeid.TrustDomain
	clock   clock.Clock
	log     *slog.Logger
	kms     *softkms.SoftKMS
	creator *softcas.SoftCAS // makes CA certificates and keys

	mu          sync.Mutex // serialises rotation and persistence
	st          *state     // committed state; guarded by mu
	bundleDirty bool       // the stored bundle may differ from a.bundle; guarded by mu

	x509   atomic.Pointer[x509Signer]
	jwt    atomic.Pointer[jwtSigner]
	bundle atomic.Pointer[spiffebundle.Bundle]
	infos  atomic.Pointer[[]SlotInfo]
	subs   subscribers

	upstreamNotAfter atomic.Pointer[time.Time] // see UpstreamNotAfter
	stepca           *stepCA                   // the connected upstream step-ca; guarded by mu
}

// New validates cfg, loads the journal and the keys it names from KeyDir, or
// on a new store creates the first X.509 and JWT keys, and performs any
// rotation step that fell due while the authority was stopped. On return the
// authority can sign. Errors wrap ErrInvalidConfig for a bad Config.
func New(ctx context.Context, cfg Config) (*Authority, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	kms, err := softkms.New(ctx, kmsapi.Options{})
	if err != nil {
		return nil, fmt.Errorf("ca: softkms: %w", err)
	}
	creator, err := softcas.New(ctx, apiv1.Options{IsCreator: true, KeyManager: kms})
	if err != nil {
		return nil, fmt.Errorf("ca: softcas: %w", err)
	}
	a := &Authority{
		cfg:     cfg,
		td:      cfg.TrustDomain,
		clock:   cfg.Clock,
		log:     cfg.Logger,
		kms:     kms,
		creator: creator,
	}
	if err := a.prepareKeyDir(); err != nil {
		return nil, err
	}
	if cfg.UpstreamCertFile != "" {
		if _, err := a.loadUpstream(a.clock.Now()); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}

	a.mu.Lock()
	err = a.load(ctx)
	a.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if _, err := a.tick(ctx); err != nil {
		// A step due at start that fails (an upstream CA that is down) is
		// retried by Run, as any failed step; with keys to sign with, that is
		// no reason not to start.
		if a.x509.Load() == nil || a.jwt.Load() == nil {
			return nil, err
		}
		a.log.Warn("ca rotation step failed at start; the current keys keep signing", logkey.Error, err)
	}
	return a, nil
}

// load installs the journal's state, with the keys of live slots, and notes
// whether the stored bundle matches it. Callers hold a.mu.
func (a *Authority) load(ctx context.Context) error {
	st := &state{}
	data, err := a.cfg.Journal.LoadJournal(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		a.log.Info("ca journal not found; creating keys")
	case err != nil:
		return fmt.Errorf("ca: load journal: %w", err)
	default:
		if st, err = parseJournal(a.td, data); err != nil {
			return err
		}
		now := a.clock.Now()
		for _, k := range kinds() {
			for _, s := range st.slots(k) {
				if s.keyFile == "" || !now.Before(s.notAfter) {
					continue // old, or expired: dropped by the next tick
				}
				if s.signer, err = a.loadKey(s); err != nil {
					return err
				}
			}
		}
	}
	if err := a.removeOrphanKeys(st); err != nil {
		return err
	}
	b := a.buildBundle(st)
	sg, err := a.signersFor(ctx, st)
	if err != nil {
		return err
	}
	a.install(st, b, sg)

	a.bundleDirty = true
	stored, err := a.cfg.Journal.LoadBundle(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return fmt.Errorf("ca: load bundle: %w", err)
	default:
		if sb, err := spiffebundle.Parse(a.td, stored); err == nil && sb.Equal(b) {
			a.bundleDirty = false
		}
	}
	return nil
}

// signers holds what signs with the active slots of a state.
type signers struct {
	x509 *x509Signer
	jwt  *jwtSigner
}

// signersFor returns signers for st's active slots, reusing the current ones
// for unchanged slots.
func (a *Authority) signersFor(ctx context.Context, st *state) (signers, error) {
	var sg signers
	if active, _ := find(st.x509); active != nil && active.signer != nil {
		if cur := a.x509.Load(); cur != nil && cur.id == active.id {
			sg.x509 = cur
		} else {
			s, err := newX509Signer(ctx, active)
			if err != nil {
				return signers{}, err
			}
			sg.x509 = s
		}
	}
	if active, _ := find(st.jwt); active != nil && active.signer != nil {
		if cur := a.jwt.Load(); cur != nil && cur.kid == active.id {
			sg.jwt = cur
		} else {
			s, err := newJWTSigner(active)
			if err != nil {
				return signers{}, err
			}
			sg.jwt = s
		}
	}
	return sg, nil
}

// install makes st the committed state. Callers hold a.mu.
func (a *Authority) install(st *state, b *spiffebundle.Bundle, sg signers) {
	a.st = st
	a.x509.Store(sg.x509)
	a.jwt.Store(sg.jwt)
	a.bundle.Store(b)
	infos := st.infos()
	a.infos.Store(&infos)
}

// Slots describes every live key slot, X.509 first, oldest first.
func (a *Authority) Slots() []SlotInfo {
	infos := *a.infos.Load()
	out := make([]SlotInfo, len(infos))
	copy(out, infos)
	return out
}

// UpstreamNotAfter is when the first certificate of the upstream chain
// expires (the upstream CA, its intermediates or the root, whichever is
// first), as read from UpstreamCertFile at start and for every new X.509
// key; no X.509 key or SVID outlives the chain it was made with. It is the
// zero time without an upstream CA. Safe for concurrent use.
func (a *Authority) UpstreamNotAfter() time.Time {
	if t := a.upstreamNotAfter.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

// TrustDomain is the trust domain the authority signs for.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.td }
