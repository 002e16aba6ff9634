package ca

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCSRChecks(t *testing.T) {
	key := newKey(t)
	id := mustID(t, "spiffe://example.org/ns/default/sa/web")
	wantDNS := []string{"web.default.svc"}

	basicConstraints := func(isCA bool) pkix.Extension {
		v, err := asn1.Marshal(struct {
			IsCA bool `asn1:"optional"`
		}{isCA})
		require.NoError(t, err)
		return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v}
	}
	keyUsage := func(bits ...int) pkix.Extension {
		b := make([]byte, 2)
		for _, i := range bits {
			b[i/8] |= 0x80 >> (i % 8)
		}
		v, err := asn1.Marshal(asn1.BitString{Bytes: b, BitLength: 9})
		require.NoError(t, err)
		return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: v}
	}
	good := func() *x509.CertificateRequest {
		return &x509.CertificateRequest{
			Subject:  pkix.Name{CommonName: "web"},
			URIs:     uris(t, id.String()),
			DNSNames: []string{"web.default.svc"},
		}
	}
	with := func(f func(*x509.CertificateRequest)) []byte {
		tmpl := good()
		f(tmpl)
		return makeCSR(t, key, tmpl)
	}
	badSig := with(func(*x509.CertificateRequest) {})
	badSig[len(badSig)-1] ^= 0xff

	for _, tc := range []struct {
		name string
		der  []byte
		want string // empty: accepted
	}{
		{"good", with(func(*x509.CertificateRequest) {}), ""},
		{"dns case-insensitive", with(func(c *x509.CertificateRequest) { c.DNSNames = []string{"WEB.default.svc"} }), ""},
		{"non-ca basic constraints", with(func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{basicConstraints(false)}
		}), ""},
		{"digitalSignature key usage", with(func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{keyUsage(0)}
		}), ""},
		{"garbage", []byte("not a csr"), "ca: invalid csr: parse"},
		{"empty", nil, "ca: invalid csr: parse"},
		{"bad signature", badSig, "ca: invalid csr: signature"},
		{"no uri san", with(func(c *x509.CertificateRequest) { c.URIs = nil }), "0 uri sans, want exactly 1"},
		{"extra uri san", with(func(c *x509.CertificateRequest) {
			c.URIs = uris(t, id.String(), "spiffe://example.org/admin")
		}), "2 uri sans, want exactly 1"},
		{"wrong id", with(func(c *x509.CertificateRequest) { c.URIs = uris(t, "spiffe://example.org/admin") }), `uri san "spiffe://example.org/admin"`},
		{"other trust domain", with(func(c *x509.CertificateRequest) {
			c.URIs = uris(t, "spiffe://evil.org/ns/default/sa/web")
		}), "uri san"},
		{"extra dns", with(func(c *x509.CertificateRequest) { c.DNSNames = []string{"web.default.svc", "bank.com"} }), `dns san "bank.com" is not allowed`},
		{"missing dns", with(func(c *x509.CertificateRequest) { c.DNSNames = nil }), `dns san "web.default.svc" missing`},
		{"ip san", with(func(c *x509.CertificateRequest) { c.IPAddresses = []net.IP{net.ParseIP("10.0.0.1")} }), "ip sans are not allowed"},
		{"email san", with(func(c *x509.CertificateRequest) { c.EmailAddresses = []string{"a@example.org"} }), "email sans are not allowed"},
		{"ca basic constraints", with(func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{basicConstraints(true)}
		}), "requests a ca certificate"},
		{"keyCertSign", with(func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{keyUsage(0, 5)}
		}), "requests keyCertSign or cRLSign"},
		{"cRLSign", with(func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{keyUsage(6)}
		}), "requests keyCertSign or cRLSign"},
		{"malformed basic constraints", with(func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Value: []byte{0x05}}}
		}), "malformed basicConstraints"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			csr, err := ValidateCSR(tc.der)
			if err == nil {
				err = CheckCSR(csr, id, wantDNS)
			}
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidCSR)
			assert.Contains(t, err.Error(), tc.want)
			assert.Regexp(t, `^ca: invalid csr: `, err.Error())
		})
	}
}

// TestCSRContentsNeverCopied: even an accepted CSR only contributes its
// public key; the certificate is built from the params.
func TestCSRContentsNeverCopied(t *testing.T) {
	e := newTestEnv(t, nil)
	key := newKey(t)
	id := mustID(t, "spiffe://example.org/w")
	csr, err := ValidateCSR(makeCSR(t, key, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "root", Organization: []string{"Evil"}},
		URIs:    uris(t, id.String()),
	}))
	require.NoError(t, err)
	require.NoError(t, CheckCSR(csr, id, nil))
	chain, err := e.a.SignX509SVID(t.Context(), X509SVIDParams{PublicKey: csr.PublicKey, ID: id})
	require.NoError(t, err)
	assert.Equal(t, []string{"Tally"}, chain[0].Subject.Organization)
	assert.Empty(t, chain[0].Subject.CommonName)
}
