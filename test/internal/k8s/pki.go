package k8s

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is the key material of one test cluster, written as PEM files into dir.
type pki struct {
	dir string

	caFile, caPEM         string
	caKeyFile             string
	servingCert, servingK string
	adminCert, adminKey   string
	adminCertPEM          []byte
	adminKeyPEM           []byte
	saPub, saKeyFile      string
	saKey                 *rsa.PrivateKey
	tokensFile            string
	adminToken            string
}

// newPKI creates, in dir: an EC P-256 CA, an apiserver serving certificate for 127.0.0.1 and
// the in-cluster names, an admin client certificate (CN=admin, O=system:masters), an RSA-2048
// service-account signing key (RS256, as kube-apiserver expects by default) and a static
// token file granting an admin bearer token.
func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("k8s: pki dir: %w", err)
	}
	p := &pki{dir: dir}
	now := time.Now()

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("k8s: ca key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "tally-test-kube-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("k8s: ca cert: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("k8s: ca cert: %w", err)
	}
	p.caFile = filepath.Join(dir, "ca.crt")
	p.caPEM = string(pemBytes("CERTIFICATE", caDER))
	if err := os.WriteFile(p.caFile, []byte(p.caPEM), 0o600); err != nil {
		return nil, fmt.Errorf("k8s: write ca: %w", err)
	}
	// the CA key, for a real kubelet's certificates and the controller-manager's CSR signer
	caKeyDER, err := x509.MarshalPKCS8PrivateKey(caKey)
	if err != nil {
		return nil, fmt.Errorf("k8s: ca key: %w", err)
	}
	p.caKeyFile = filepath.Join(dir, "ca.key")
	if err := os.WriteFile(p.caKeyFile, pemBytes("PRIVATE KEY", caKeyDER), 0o600); err != nil {
		return nil, fmt.Errorf("k8s: write ca key: %w", err)
	}

	leaf := func(name string, tmpl *x509.Certificate) (certFile, keyFile string, certPEM, keyPEM []byte, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", nil, nil, fmt.Errorf("k8s: %s key: %w", name, err)
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore = now.Add(-time.Hour)
		tmpl.NotAfter = now.Add(7 * 24 * time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			return "", "", nil, nil, fmt.Errorf("k8s: %s cert: %w", name, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return "", "", nil, nil, fmt.Errorf("k8s: %s key: %w", name, err)
		}
		certPEM, keyPEM = pemBytes("CERTIFICATE", der), pemBytes("PRIVATE KEY", keyDER)
		certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := writeFiles(map[string][]byte{certFile: certPEM, keyFile: keyPEM}); err != nil {
			return "", "", nil, nil, err
		}
		return certFile, keyFile, certPEM, keyPEM, nil
	}

	p.servingCert, p.servingK, _, _, err = leaf("apiserver", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1)},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
	})
	if err != nil {
		return nil, err
	}
	p.adminCert, p.adminKey, p.adminCertPEM, p.adminKeyPEM, err = leaf("admin", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}

	p.saKey, err = rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("k8s: sa key: %w", err)
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(crypto.PublicKey(&p.saKey.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("k8s: sa public key: %w", err)
	}
	p.saPub, p.saKeyFile = filepath.Join(dir, "sa.pub"), filepath.Join(dir, "sa.key")

	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return nil, fmt.Errorf("k8s: admin token: %w", err)
	}
	p.adminToken = hex.EncodeToString(tok)
	p.tokensFile = filepath.Join(dir, "tokens.csv")

	if err := writeFiles(map[string][]byte{
		p.saPub:      pemBytes("PUBLIC KEY", saPubDER),
		p.saKeyFile:  pemBytes("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(p.saKey)),
		p.tokensFile: []byte(p.adminToken + ",admin,admin-uid,system:masters\n"),
	}); err != nil {
		return nil, err
	}
	return p, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writeFiles(files map[string][]byte) error {
	for name, b := range files {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			return fmt.Errorf("k8s: write %s: %w", filepath.Base(name), err)
		}
	}
	return nil
}
