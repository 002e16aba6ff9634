package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const (
	svidFile   = "agent-svid.pem"
	keyFile    = "agent-key.pem"
	bundleFile = "bundle.json"
)

// identity holds the agent's own SVID and the trust bundle it uses to
// authenticate the server, and keeps both in the data dir. It is an
// x509svid.Source and x509bundle.Source for mTLS to the server. Safe for
// concurrent use.
type identity struct {
	dir string
	td  spiffeid.TrustDomain

	mu     sync.RWMutex
	svid   *x509svid.SVID
	bundle *spiffebundle.Bundle
}

// loadIdentity reads what a previous run kept in dir. A missing SVID is not
// an error (the agent attests); a corrupt one is.
func loadIdentity(dir string, td spiffeid.TrustDomain) (*identity, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: data dir: %w", err)
	}
	id := &identity{dir: dir, td: td}
	if raw, err := os.ReadFile(filepath.Join(dir, bundleFile)); err == nil {
		b, err := spiffebundle.Parse(td, raw)
		if err != nil {
			return nil, fmt.Errorf("agent: %s: %w", bundleFile, err)
		}
		id.bundle = b
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("agent: %w", err)
	}
	svid, err := x509svid.Load(filepath.Join(dir, svidFile), filepath.Join(dir, keyFile))
	switch {
	case err == nil:
		id.svid = svid
	case errors.Is(err, os.ErrNotExist) || isNotExist(dir):
	default:
		return nil, fmt.Errorf("agent: stored SVID: %w", err)
	}
	return id, nil
}

func isNotExist(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, svidFile))
	return errors.Is(err, os.ErrNotExist)
}

// GetX509SVID implements x509svid.Source.
func (i *identity) GetX509SVID() (*x509svid.SVID, error) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	if i.svid == nil {
		return nil, errors.New("agent: no SVID yet")
	}
	return i.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (i *identity) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	if i.bundle == nil || td != i.td {
		return nil, fmt.Errorf("agent: no bundle for %q", td)
	}
	return i.bundle.X509Bundle(), nil
}

func (i *identity) current() (*x509svid.SVID, *spiffebundle.Bundle) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.svid, i.bundle
}

// setSVID replaces the SVID and writes it (key 0600) before returning.
func (i *identity) setSVID(svid *x509svid.SVID) error {
	certs, key, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("agent: marshal SVID: %w", err)
	}
	if err := writeFile(filepath.Join(i.dir, keyFile), key, 0o600); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(i.dir, svidFile), certs, 0o644); err != nil {
		return err
	}
	i.mu.Lock()
	i.svid = svid
	i.mu.Unlock()
	return nil
}

// setBundle replaces the bundle and writes it.
func (i *identity) setBundle(b *spiffebundle.Bundle) error {
	raw, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("agent: marshal bundle: %w", err)
	}
	if err := writeFile(filepath.Join(i.dir, bundleFile), raw, 0o644); err != nil {
		return err
	}
	i.mu.Lock()
	i.bundle = b
	i.mu.Unlock()
	return nil
}

// writeFile replaces path atomically (temp file, fsync, rename).
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err == nil {
		_, err = tmp.Write(data)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), path)
		}
		if err == nil {
			return nil
		}
	}
	tmp.Close()
	return fmt.Errorf("agent: write %s: %w", path, err)
}

// readBundlePEM reads X.509 authorities from a PEM file.
func readBundlePEM(td spiffeid.TrustDomain, path string) (*spiffebundle.Bundle, error) {
	b, err := x509bundle.Load(td, path)
	if err != nil {
		return nil, fmt.Errorf("agent: trust bundle: %w", err)
	}
	if len(b.X509Authorities()) == 0 {
		return nil, fmt.Errorf("agent: trust bundle %s: no certificates", path)
	}
	return spiffebundle.FromX509Bundle(b), nil
}
