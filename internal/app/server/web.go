package serverapp

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/ca/dashboard"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/reserved"
	"github.com/tallyid/tally/internal/webcert"
)

// webCertificate is the web listener's serving certificate: from files, or
// from the local serving CA in data_dir/web, whose certificate path it
// returns (empty with files).
func (s *Server) webCertificate() (webcert.Certificate, string, error) {
	cfg := s.cfg
	if cfg.WebCertFile != "" {
		f, err := webcert.Load(cfg.WebCertFile, cfg.WebKeyFile, s.log.With(logkey.Component, "webcert"))
		if err != nil {
			return nil, "", fmt.Errorf("server: web certificate: %w", err)
		}
		return f, "", nil
	}
	var names []string
	var ips []net.IP
	for _, n := range cfg.WebDNSNames {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			names = append(names, n)
		}
	}
	if host, _, err := net.SplitHostPort(cfg.WebAddress); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() && !slices.ContainsFunc(ips, ip.Equal) {
			ips = append(ips, ip)
		}
	}
	l, err := webcert.NewLocal(webcert.LocalConfig{Dir: filepath.Join(cfg.DataDir, "web"), DNSNames: names, IPAddresses: ips,
		Clock: s.clock, Logger: s.log.With(logkey.Component, "webcert")})
	if err != nil {
		return nil, "", fmt.Errorf("server: web certificate: %w", err)
	}
	return l, l.CAFile(), nil
}

// listenWeb builds the dashboard and the web listener: the dashboard under
// /dashboard/, the bundle and OIDC discovery as on http_address, with a web
// serving certificate; admin SVIDs are verified if presented.
func (s *Server) listenWeb(c *components) error {
	cert, caFile, err := s.webCertificate()
	if err != nil {
		return err
	}
	c.webCA = caFile
	c.dashboard, err = dashboard.New(dashboard.Config{
		Source: dashboardSource{fleet: c.fleet, records: c.records},
		Auth: dashboardAuth{tokens: s.dashboardTokens(c), bundle: c.authority.Bundle,
			admins: c.admin, clock: s.clock},
		Clock: s.clock,
		// Risks that come from time passing alone (an SVID entering its last
		// quarter) reach open pages within this, with no event to push them.
		Refresh: 2 * time.Second,
		Logger:  s.log.With(logkey.Component, "dashboard"),
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(dashboard.Prefix, c.dashboard)
	mux.Handle("/", publicHandler(c.authority, s.cfg.JWTIssuer, s.log))
	if c.webLis, err = net.Listen("tcp", s.cfg.WebAddress); err != nil {
		return fmt.Errorf("server: web_address: %w", err)
	}
	c.Add(c.webLis.Close)
	c.web = &http.Server{
		Handler:           mux,
		TLSConfig:         webcert.TLSConfig(cert, bundlePool(c.authority.Bundle)),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second, // the dashboard's event streams lift it for themselves
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return nil
}

// dashboardTokens signs the dashboard's tokens for the web listener.
func (s *Server) dashboardTokens(c *components) dashboardTokens {
	return dashboardTokens{signer: c.authority, id: reserved.DashboardID(s.td), maxTTL: s.cfg.CATTL / 6, web: s.webURL()}
}

// webURL is the dashboard's origin: web_address, with the first of
// web_dns_names for a wildcard address.
func (s *Server) webURL() string {
	host, port, _ := net.SplitHostPort(s.cfg.WebAddress)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
		if len(s.cfg.WebDNSNames) > 0 {
			host = s.cfg.WebDNSNames[0]
		}
	}
	return "https://" + net.JoinHostPort(host, port)
}

// bundlePool returns the trust bundle's X.509 authorities as a pool, for
// admin SVIDs presented to the web listener.
func bundlePool(b func() *spiffebundle.Bundle) func() *x509.CertPool {
	return func() *x509.CertPool {
		p := x509.NewCertPool()
		for _, c := range b().X509Authorities() {
			p.AddCert(c)
		}
		return p
	}
}

// adminCheck says whether a SPIFFE ID is an admin (the Admin API's rule).
type adminCheck interface {
	IsAdmin(id string) bool
}

// dashboardAuth authenticates the dashboard's viewers: a dashboard token, or
// an admin SVID over mTLS.
type dashboardAuth struct {
	tokens dashboardTokens
	bundle func() *spiffebundle.Bundle
	admins adminCheck
	clock  clock.PassiveClock
}

func (d dashboardAuth) VerifyToken(_ context.Context, token string) (time.Time, error) {
	svid, err := jwtsvid.ParseAndValidate(token, d.bundle(), []string{dashboardAudience})
	if err != nil {
		return time.Time{}, fmt.Errorf("dashboard token: %w", err)
	}
	if svid.ID != d.tokens.id {
		return time.Time{}, fmt.Errorf("dashboard token: subject %s is not %s", svid.ID, d.tokens.id)
	}
	return svid.Expiry, nil
}

func (d dashboardAuth) VerifyAdmin(_ context.Context, chain []*x509.Certificate) error {
	id, _, err := x509svid.Verify(chain, d.bundle(), x509svid.WithTime(d.clock.Now()))
	if err != nil {
		return fmt.Errorf("dashboard: client certificate: %w", err)
	}
	if !d.admins.IsAdmin(id.String()) {
		return fmt.Errorf("dashboard: %s is not an admin", id)
	}
	return nil
}
