package ca

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// maxCSRSize bounds the DER accepted by ValidateCSR.
const maxCSRSize = 64 << 10

// ValidateCSR parses a DER PKCS#10 request and checks its self-signature.
// Errors wrap ErrInvalidCSR.
func ValidateCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) > maxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidCSR, len(der), maxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: parse: %w", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrInvalidCSR, err)
	}
	return csr, nil
}

// CheckCSR checks that csr asks for exactly what the caller may have: one URI
// SAN equal to wantID, DNS SANs equal to the set wantDNS (case-insensitive,
// in any order), no email or IP SAN, and no requested CA powers (a
// basicConstraints extension with cA=true, or a keyUsage with keyCertSign or
// cRLSign). The certificate's contents come from the signing params, never
// from the CSR; this check refuses requests that disagree with them. Errors
// wrap ErrInvalidCSR.
func CheckCSR(csr *x509.CertificateRequest, wantID spiffeid.ID, wantDNS []string) error {
	if n := len(csr.URIs); n != 1 {
		return fmt.Errorf("%w: %d uri sans, want exactly 1 (%s)", ErrInvalidCSR, n, wantID)
	}
	if got := csr.URIs[0].String(); got != wantID.String() {
		return fmt.Errorf("%w: uri san %q, want %q", ErrInvalidCSR, got, wantID)
	}
	if len(csr.EmailAddresses) > 0 {
		return fmt.Errorf("%w: email sans are not allowed", ErrInvalidCSR)
	}
	if len(csr.IPAddresses) > 0 {
		return fmt.Errorf("%w: ip sans are not allowed", ErrInvalidCSR)
	}
	if err := checkDNSSet(csr.DNSNames, wantDNS); err != nil {
		return err
	}
	for _, ext := range csr.Extensions {
		switch {
		case ext.Id.Equal(oidBasicConstraints()):
			var bc struct {
				IsCA       bool `asn1:"optional"`
				MaxPathLen int  `asn1:"optional,default:-1"`
			}
			if rest, err := asn1.Unmarshal(ext.Value, &bc); err != nil || len(rest) > 0 {
				return fmt.Errorf("%w: malformed basicConstraints extension", ErrInvalidCSR)
			}
			if bc.IsCA {
				return fmt.Errorf("%w: requests a ca certificate (basicConstraints cA=true)", ErrInvalidCSR)
			}
		case ext.Id.Equal(oidKeyUsage()):
			var bits asn1.BitString
			if rest, err := asn1.Unmarshal(ext.Value, &bits); err != nil || len(rest) > 0 {
				return fmt.Errorf("%w: malformed keyUsage extension", ErrInvalidCSR)
			}
			// RFC 5280 4.2.1.3: bit 5 keyCertSign, bit 6 cRLSign.
			if bits.At(5) == 1 || bits.At(6) == 1 {
				return fmt.Errorf("%w: requests keyCertSign or cRLSign key usage", ErrInvalidCSR)
			}
		}
	}
	return nil
}

// checkDNSSet compares DNS names as case-insensitive sets.
func checkDNSSet(got, want []string) error {
	has := func(set []string, name string) bool {
		for _, s := range set {
			if strings.EqualFold(s, name) {
				return true
			}
		}
		return false
	}
	for _, name := range got {
		if !has(want, name) {
			return fmt.Errorf("%w: dns san %q is not allowed (allowed: %q)", ErrInvalidCSR, name, want)
		}
	}
	for _, name := range want {
		if !has(got, name) {
			return fmt.Errorf("%w: dns san %q missing", ErrInvalidCSR, name)
		}
	}
	return nil
}

func oidBasicConstraints() asn1.ObjectIdentifier { return asn1.ObjectIdentifier{2, 5, 29, 19} }
func oidKeyUsage() asn1.ObjectIdentifier         { return asn1.ObjectIdentifier{2, 5, 29, 15} }
