package harness

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// loadAgentSVID reads the SPIFFE ID of the SVID an agent keeps in dir.
func loadAgentSVID(dir string) (spiffeid.ID, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "agent-svid.pem"))
	if err != nil {
		return spiffeid.ID{}, err
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return spiffeid.ID{}, errors.New("agent-svid.pem: not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return spiffeid.ID{}, err
	}
	return x509svid.IDFromCert(cert)
}
