package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/renew"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/workloadapi"
)

// x509Minter gets workload X509-SVIDs signed: a key and a CSR per entry,
// made on this node, go to the server in one call, and every chain that
// comes back is checked before it is used. Safe for concurrent use.
type x509Minter struct {
	minter Minter
	bundle func() *spiffebundle.Bundle // the trust bundle the chains must verify against
	clock  clock.PassiveClock
	log    *slog.Logger
}

// minted is one X509-SVID ready to serve.
type minted struct {
	svid    workloadapi.X509SVID
	renewAt time.Time
	svidInfo
}

// svidInfo is what the agent reports of an X509-SVID and decides by, read
// from its chain once.
type svidInfo struct {
	serial    string    // the leaf's serial number, hex
	notBefore time.Time // the leaf's
	signer    string    // signerID of the chain
}

// newSVIDInfo reads chain, a verified chain (leaf first, up to the
// bundle's authority).
func newSVIDInfo(chain []*x509.Certificate) svidInfo {
	leaf := chain[0]
	return svidInfo{serial: leaf.SerialNumber.Text(16), notBefore: leaf.NotBefore, signer: signerID(chain)}
}

// mint returns one result per entry of batch, in order: an SVID, or nil
// and the error that kept the entry from getting one (also logged).
func (m *x509Minter) mint(ctx context.Context, batch []*entry) ([]*minted, []error) {
	out := make([]*minted, len(batch))
	errs := make([]error, len(batch))
	results, keys, err := m.sign(ctx, batch)
	if err != nil {
		m.log.Warn("minting SVIDs", "count", len(batch), logkey.Error, err)
		for i := range errs {
			errs[i] = err
		}
		return out, errs
	}
	bundle := m.bundle()
	for i, r := range results {
		if r.GetError() != "" {
			m.log.Warn("server refused an SVID", logkey.EntryID, batch[i].ID, logkey.SPIFFEID, batch[i].SPIFFEID.String(), logkey.Error, r.GetError())
			errs[i] = fmt.Errorf("agent: server refused the SVID: %s", r.GetError())
			continue
		}
		s, err := newMinted(batch[i], r.GetCertChain(), keys[i], bundle, m.clock.Now())
		if err != nil {
			m.log.Warn("bad SVID from server", logkey.EntryID, batch[i].ID, logkey.Error, err)
			errs[i] = err
			continue
		}
		out[i] = s
	}
	return out, errs
}

// sign makes the keys and CSRs of batch and asks the server to sign them:
// one result per entry, in order, and the PKCS#8 keys.
func (m *x509Minter) sign(ctx context.Context, batch []*entry) ([]*tallyv1.X509SVIDResult, [][]byte, error) {
	reqs := make([]*tallyv1.X509SVIDRequest, 0, len(batch))
	keys := make([][]byte, 0, len(batch))
	for _, e := range batch {
		csr, key, err := entryCSR(e)
		if err != nil {
			return nil, nil, err
		}
		reqs = append(reqs, &tallyv1.X509SVIDRequest{EntryId: e.ID, Csr: csr})
		keys = append(keys, key)
	}
	results, err := m.minter.NewX509SVIDs(ctx, reqs)
	if err != nil {
		return nil, nil, err
	}
	if len(results) != len(batch) {
		return nil, nil, fmt.Errorf("agent: server answered %d of %d CSRs", len(results), len(batch))
	}
	return results, keys, nil
}

// newMinted checks a chain from the server for entry e and the PKCS#8 key
// made for it: the leaf is a valid X509-SVID for the key, carries e's
// SPIFFE ID and chains to bundle at now. It renews when renew.At says.
func newMinted(e *entry, chain [][]byte, key []byte, bundle *spiffebundle.Bundle, now time.Time) (*minted, error) {
	if len(chain) == 0 {
		return nil, errors.New("agent: empty chain")
	}
	if bundle == nil {
		return nil, errors.New("agent: no trust bundle to verify the chain against")
	}
	der := concatDER(chain)
	svid, err := x509svid.ParseRaw(der, key)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if svid.ID != e.SPIFFEID {
		return nil, fmt.Errorf("agent: SVID for %s, want %s", svid.ID, e.SPIFFEID)
	}
	_, verified, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(now))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	leaf := svid.Certificates[0]
	return &minted{
		svid:     workloadapi.X509SVID{ID: e.SPIFFEID, CertChain: der, Key: key, Hint: e.Hint, ExpiresAt: leaf.NotAfter},
		renewAt:  renew.At(now, leaf.NotBefore, leaf.NotAfter),
		svidInfo: newSVIDInfo(verified[0]),
	}, nil
}

// concatDER joins DER certificates, leaf first, into one buffer (the
// Workload API's form of a chain).
func concatDER(chain [][]byte) []byte {
	n := 0
	for _, c := range chain {
		n += len(c)
	}
	out := make([]byte, 0, n)
	for _, c := range chain {
		out = append(out, c...)
	}
	return out
}

// entryCSR is newCSR for the entry's ID and DNS names.
func entryCSR(e *entry) ([]byte, []byte, error) {
	u, err := url.Parse(e.SPIFFEID.String())
	if err != nil {
		return nil, nil, fmt.Errorf("agent: %w", err)
	}
	return newCSR(&x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: e.DNSNames})
}

// newCSR makes a P-256 key on this node (keys never leave it) and a CSR of
// tmpl for it; it returns the CSR and the key as PKCS#8.
func newCSR(tmpl *x509.CertificateRequest) (csr, pkcs8 []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: key: %w", err)
	}
	csr, err = x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: CSR: %w", err)
	}
	pkcs8, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: key: %w", err)
	}
	return csr, pkcs8, nil
}
