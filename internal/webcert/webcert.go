// Package webcert is the certificate tally-server's web listener presents to
// browsers: the dashboard and OIDC discovery.
//
// A browser refuses the server's X509-SVID: it names the server only by a
// SPIFFE ID in a URI SAN, and chains to the trust domain's CA, which no
// browser trusts. So the web listener (web_address, default 127.0.0.1:8444)
// is its own listener with its own certificate, one for DNS names and IP
// addresses, either
//
//   - from files given in the config (web_cert_file, web_key_file), e.g. a
//     cert-manager Certificate's Secret mounted in the pod: Load, re-read
//     whenever the files change, so that cert-manager's renewals are served
//     without a restart; or
//   - when none is given, signed by a local serving CA that this package
//     creates once and keeps in a directory (NewLocal): the user trusts its
//     certificate (CAFile) once, as with any local development CA.
//
// The SPIFFE bundle endpoint and the mTLS token endpoint stay on
// http_address, which keeps presenting the server's X509-SVID: SPIFFE
// bundle endpoint clients (https_spiffe) authenticate the server by its
// SPIFFE ID, and must not be handed a Web PKI certificate instead.
package webcert

import (
	"crypto/tls"
	"crypto/x509"
)

// Certificate is what the web listener presents. Files and Local are ones;
// GetCertificate is safe for concurrent use.
type Certificate interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// TLSConfig returns the web listener's server config: TLS 1.2 or later, h2
// and http/1.1, presenting what c returns at each handshake.
//
// With clientCAs, the listener also asks for a client certificate (an
// admin's X509-SVID for the dashboard) without requiring one: a certificate
// that is sent must chain to the pool clientCAs returns at that handshake
// (the trust bundle's X.509 authorities, which rotate), and browsers offer
// only certificates those CAs issued. The handler still checks the SPIFFE ID
// (and the chain, with x509svid.Verify). Without clientCAs no client
// certificate is asked for.
func TLSConfig(c Certificate, clientCAs func() *x509.CertPool) *tls.Config {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: c.GetCertificate,
	}
	if clientCAs != nil {
		base := cfg.Clone()
		cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			hc := base.Clone()
			hc.ClientAuth = tls.VerifyClientCertIfGiven
			hc.ClientCAs = clientCAs()
			return hc, nil
		}
	}
	return cfg
}
