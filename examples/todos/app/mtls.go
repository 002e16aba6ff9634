package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/tallyid/tally/internal/httpserve"
)

// Serve serves h on addr over mTLS with the X509-SVID of source, kept
// current by the Workload API, until ctx is done. A client whose X509-SVID
// authorized refuses fails in the TLS handshake and never reaches h; the
// refusal is logged.
func Serve(ctx context.Context, log *slog.Logger, source *workloadapi.X509Source, addr string, authorized tlsconfig.Authorizer, h http.Handler) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("app: listen: %w", err)
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         tlsconfig.MTLSServerConfig(source, source, authorized),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelInfo),
	}
	log.Info("listening on " + lis.Addr().String())
	return httpserve.Serve(ctx, srv, lis, true)
}

// Client returns an HTTP client that presents the X509-SVID of source and
// talks only to a server whose X509-SVID authorized accepts: with any other,
// the request fails in the TLS handshake.
func Client(source *workloadapi.X509Source, authorized tlsconfig.Authorizer) *http.Client {
	return &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(source, source, authorized)},
	}
}

// PeerID returns the SPIFFE ID of the X509-SVID the client of r presented
// in the TLS handshake.
func PeerID(r *http.Request) (spiffeid.ID, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("app: no client certificate")
	}
	return x509svid.IDFromCert(r.TLS.PeerCertificates[0])
}
