package ca

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// The floors are what signing cannot avoid: for X.509, parsing the CSR,
// checking its signature and x509.CreateCertificate with a P-256 CA key; for
// JWT, one ES256 signature over the same claims with go-jose. The Sign
// benchmarks measure the authority doing the same job with all its checks.

func reportOps(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// benchLoop runs op serially and in parallel.
func benchLoop(b *testing.B, op func() error) {
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
		reportOps(b)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportOps(b)
	})
}

func benchCSR(b *testing.B) (der []byte, id string) {
	id = "spiffe://example.org/ns/default/sa/web"
	return makeCSR(b, newKey(b), &x509.CertificateRequest{URIs: uris(b, id)}), id
}

func BenchmarkFloorX509(b *testing.B) {
	caKey := newKey(b)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"Tally"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		b.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		b.Fatal(err)
	}
	der, idStr := benchCSR(b)
	id, err := url.Parse(idStr)
	if err != nil {
		b.Fatal(err)
	}
	maxSerial := new(big.Int).Lsh(big.NewInt(1), 128)
	benchLoop(b, func() error {
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return err
		}
		if err := csr.CheckSignature(); err != nil {
			return err
		}
		serial, err := rand.Int(rand.Reader, maxSerial)
		if err != nil {
			return err
		}
		now := time.Now()
		_, err = x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber:          serial,
			Subject:               pkix.Name{Organization: []string{"Tally"}},
			URIs:                  []*url.URL{id},
			NotBefore:             now.Add(-10 * time.Second),
			NotAfter:              now.Add(time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
		}, caCert, csr.PublicKey, caKey)
		return err
	})
}

func BenchmarkSignX509SVID(b *testing.B) {
	a := newBenchAuthority(b)
	der, idStr := benchCSR(b)
	id := mustID(b, idStr)
	ctx := context.Background()
	benchLoop(b, func() error {
		csr, err := ValidateCSR(der)
		if err != nil {
			return err
		}
		if err := CheckCSR(csr, id, nil); err != nil {
			return err
		}
		_, err = a.SignX509SVID(ctx, X509SVIDParams{PublicKey: csr.PublicKey, ID: id})
		return err
	})
}

func BenchmarkFloorJWT(b *testing.B) {
	key := newKey(b)
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "kid"}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		b.Fatal(err)
	}
	benchLoop(b, func() error {
		now := time.Now()
		payload, err := json.Marshal(jwtClaims{
			Subject:  "spiffe://example.org/ns/default/sa/web",
			Audience: jwt.Audience{"spiffe://example.org/db"},
			Expiry:   now.Add(5 * time.Minute).Unix(),
			IssuedAt: now.Unix(),
		})
		if err != nil {
			return err
		}
		jws, err := signer.Sign(payload)
		if err != nil {
			return err
		}
		_, err = jws.CompactSerialize()
		return err
	})
}

func BenchmarkSignJWTSVID(b *testing.B) {
	a := newBenchAuthority(b)
	p := JWTSVIDParams{
		ID:       mustID(b, "spiffe://example.org/ns/default/sa/web"),
		Audience: []string{"spiffe://example.org/db"},
	}
	ctx := context.Background()
	benchLoop(b, func() error {
		_, _, err := a.SignJWTSVID(ctx, p)
		return err
	})
}

// newBenchAuthority is an authority on the real clock.
func newBenchAuthority(b *testing.B) *Authority {
	a, err := New(context.Background(), Config{
		TrustDomain: testTD,
		KeyDir:      b.TempDir(),
		Journal:     &memJournal{},
	})
	if err != nil {
		b.Fatal(err)
	}
	return a
}
