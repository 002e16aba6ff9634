package ca

import (
	"crypto"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	kmsapi "go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/pemutil"

	"github.com/tallyid/tally/internal/logkey"
)

// keyFileMode and keyDirMode are the permissions of key files and KeyDir.
const (
	keyFileMode = 0o600
	keyDirMode  = 0o700
)

// prepareKeyDir creates KeyDir if needed. An existing directory is left as
// is, with a warning if others can read it.
func (a *Authority) prepareKeyDir() error {
	if err := os.MkdirAll(a.cfg.KeyDir, keyDirMode); err != nil {
		return fmt.Errorf("ca: create key dir: %w", err)
	}
	fi, err := os.Stat(a.cfg.KeyDir)
	if err != nil {
		return fmt.Errorf("ca: key dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("ca: key dir %s is not a directory", a.cfg.KeyDir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		a.log.Warn("ca key dir is accessible to group or others", logkey.Path, a.cfg.KeyDir,
			"mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	return nil
}

// writeKey stores key as a new PKCS#8 PEM file (mode 0600) in KeyDir and
// returns its base name. The file is complete and synced when writeKey
// returns: it is written to a temporary name and renamed.
func (a *Authority) writeKey(kind Kind, key crypto.PrivateKey) (name string, err error) {
	block, err := pemutil.Serialize(key, pemutil.WithPKCS8(true))
	if err != nil {
		return "", fmt.Errorf("ca: encode %s key: %w", kind, err)
	}
	name = string(kind) + "-" + strings.ToLower(rand.Text()) + ".pem"
	f, err := os.CreateTemp(a.cfg.KeyDir, ".tmp-"+name+"-*")
	if err != nil {
		return "", fmt.Errorf("ca: write key file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(keyFileMode); err != nil {
		return "", fmt.Errorf("ca: write key file: %w", err)
	}
	if err = pem.Encode(f, block); err != nil {
		return "", fmt.Errorf("ca: write key file: %w", err)
	}
	if err = f.Sync(); err != nil {
		return "", fmt.Errorf("ca: sync key file: %w", err)
	}
	if err = f.Close(); err != nil {
		return "", fmt.Errorf("ca: close key file: %w", err)
	}
	if err = os.Rename(tmp, filepath.Join(a.cfg.KeyDir, name)); err != nil {
		return "", fmt.Errorf("ca: rename key file: %w", err)
	}
	if err = syncDir(a.cfg.KeyDir); err != nil {
		return "", err
	}
	return name, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("ca: sync key dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("ca: sync key dir: %w", err)
	}
	return nil
}

// loadKey loads the private key of s from KeyDir through softkms and checks
// that it matches the slot's public key.
func (a *Authority) loadKey(s *slot) (crypto.Signer, error) {
	path := filepath.Join(a.cfg.KeyDir, s.keyFile)
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		a.log.Warn("ca key file is accessible to group or others", logkey.Path, path,
			"mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	signer, err := a.kms.CreateSigner(&kmsapi.CreateSignerRequest{SigningKey: path})
	if err != nil {
		return nil, fmt.Errorf("ca: load key of %s slot %s from %s: %w", s.kind, s.id, path, err)
	}
	if !publicKeysEqual(signer.Public(), s.publicKey()) {
		return nil, fmt.Errorf("ca: key file %s does not match %s slot %s", path, s.kind, s.id)
	}
	return signer, nil
}

// removeKeys deletes key files that are no longer referenced. Failures are
// logged: a leftover file is harmless to correctness.
func (a *Authority) removeKeys(names []string) {
	for _, n := range names {
		if n == "" {
			continue
		}
		if err := os.Remove(filepath.Join(a.cfg.KeyDir, n)); err != nil && !os.IsNotExist(err) {
			a.log.Warn("ca could not remove key file", logkey.Path, n, logkey.Error, err)
		}
	}
}

// removeOrphanKeys deletes key files KeyDir holds but st does not name: left
// by a crash between writing a key and saving the journal. Only names this
// package makes are touched.
func (a *Authority) removeOrphanKeys(st *state) error {
	entries, err := os.ReadDir(a.cfg.KeyDir)
	if err != nil {
		return fmt.Errorf("ca: read key dir: %w", err)
	}
	used := make(map[string]bool)
	for _, k := range kinds() {
		for _, s := range st.slots(k) {
			used[s.keyFile] = true
		}
	}
	var orphans []string
	for _, e := range entries {
		n := e.Name()
		ours := strings.HasPrefix(n, ".tmp-") ||
			strings.HasSuffix(n, ".pem") && (strings.HasPrefix(n, string(KindX509)+"-") || strings.HasPrefix(n, string(KindJWT)+"-"))
		if ours && !used[n] && e.Type().IsRegular() {
			a.log.Info("ca removing unreferenced key file", logkey.Path, n)
			orphans = append(orphans, n)
		}
	}
	a.removeKeys(orphans)
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}
