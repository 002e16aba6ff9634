package webcert

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/tallyid/tally/internal/logkey"
)

// Files is a certificate and key read from PEM files (the certificate file
// may hold the chain after the leaf), re-read when either file changes:
// cert-manager renews a Certificate by rewriting its Secret, which the
// kubelet swaps into the mounted volume.
type Files struct {
	certFile, keyFile string
	log               *slog.Logger

	mu       sync.Mutex
	cert     *tls.Certificate
	certStat os.FileInfo
	keyStat  os.FileInfo
	failed   [2]os.FileInfo // the file states a reload last failed on, so that it is logged once
}

// Load reads the certificate and key files, and fails if they do not hold a
// matching pair. log (nil: discard) receives the reloads and failed reloads.
func Load(certFile, keyFile string, log *slog.Logger) (*Files, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Files{certFile: certFile, keyFile: keyFile, log: log}
	cs, ks, err := f.stat()
	if err != nil {
		return nil, err
	}
	cert, err := loadPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	f.cert, f.certStat, f.keyStat = cert, cs, ks
	return f, nil
}

// GetCertificate returns the pair, re-reading the files first if either
// changed (another inode, size or modification time) since they were last
// read. If the new files cannot be read or do not match (cert-manager caught
// half way through a write), it keeps returning the last good pair and tries
// again at the next handshake.
func (f *Files) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cs, ks, err := f.stat()
	if err != nil || (same(cs, f.certStat) && same(ks, f.keyStat)) {
		return f.cert, nil
	}
	cert, err := loadPair(f.certFile, f.keyFile)
	if err != nil {
		if !same(cs, f.failed[0]) || !same(ks, f.failed[1]) {
			f.log.Warn("web certificate files changed but cannot be loaded; serving the previous certificate",
				logkey.Path, f.certFile, logkey.Error, err)
			f.failed = [2]os.FileInfo{cs, ks}
		}
		return f.cert, nil
	}
	f.cert, f.certStat, f.keyStat = cert, cs, ks
	f.log.Info("web certificate reloaded", logkey.Path, f.certFile, logkey.NotAfter, cert.Leaf.NotAfter)
	return f.cert, nil
}

func (f *Files) stat() (cs, ks os.FileInfo, err error) {
	if cs, err = os.Stat(f.certFile); err != nil {
		return nil, nil, fmt.Errorf("webcert: %w", err)
	}
	if ks, err = os.Stat(f.keyFile); err != nil {
		return nil, nil, fmt.Errorf("webcert: %w", err)
	}
	return cs, ks, nil
}

func same(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

func loadPair(certFile, keyFile string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("webcert: %s, %s: %w", certFile, keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("webcert: %s: %w", certFile, err)
		}
	}
	return &cert, nil
}
