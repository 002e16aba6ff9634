// Package dashboard is tally-server's read-only web dashboard, for an
// operator: the trust domain's CA keys on a timeline, its agents and
// workloads, a chart of issuances per minute, and what is at risk first.
// It updates live through server-sent events.
//
// # Where it is served
//
// The handler is mounted at Prefix (/dashboard/) on the web listener
// (web_address, default 127.0.0.1:8444), which presents a web serving
// certificate a browser accepts (internal/webcert). It is not served on
// http_address: that listener keeps presenting the server's X509-SVID for
// the SPIFFE bundle endpoint and the mTLS token endpoint.
//
// # Authentication
//
// Every data endpoint answers 401, with no data, to a caller that is not
// one of:
//
//   - an admin: a client certificate that is an X509-SVID of an admin ID
//     (Authenticator.VerifyAdmin), on every request;
//   - a bearer token from `tallyctl dashboard token` in an Authorization
//     header (Authenticator.VerifyToken), on every request (curl);
//   - a browser session. The token is handed to the page in the URL's
//     fragment, /dashboard/login#token=…, which browsers never send to a
//     server, so it is in no request line, access log or Referer. The login
//     page's script removes it from the address bar and history, and
//     exchanges it (POST /dashboard/api/session, Authorization: Bearer) for
//     a session: an opaque random ID in an HttpOnly, Secure, SameSite=Strict
//     __Host- cookie that ends when the token does. EventSource cannot set
//     headers; the cookie rides along by itself, and the page's script never
//     sees it.
//
// The server never sends a token or a key to the page. The page is
// read-only: its only requests that change anything are the session's
// opening and closing.
//
// # Endpoints
//
//	GET  /dashboard/               the page (401 and a sign-in hint when not signed in)
//	GET  /dashboard/login          the sign-in page (no data)
//	GET  /dashboard/assets/…       scripts, styles, uPlot (no data; embedded, no CDN)
//	POST /dashboard/api/session    opens a session for a bearer token; 204 and the cookie
//	POST /dashboard/api/logout     closes it
//	GET  /dashboard/api/overview   everything the page shows, as JSON (wire.go);
//	                               ?since=<snap>: only the workloads changed since
//	GET  /dashboard/api/buckets    issuances per minute, ?since=<Unix seconds>
//	GET  /dashboard/api/events     server-sent events: "changed" {"gen": n} after a
//	                               change (at most 1/MinInterval), "expired" when the
//	                               credentials end; keep-alive comments
//
// # Cost
//
// Whatever the number of viewers, the Source's Overview is read at most once
// per generation (a change, coalesced to at most one per MinInterval, or a
// Refresh), and only while someone looks. A page that opens gets the full
// overview; after that, each change costs it a delta: the workloads that
// changed, found by hashing each one. With 10,000 workloads on 100 agents
// (BenchmarkDashboard…): a full overview is 2.0 MB of JSON, 0.7 MB gzipped;
// a delta of 50 renewals 40 kB, 7 kB gzipped.
package dashboard

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/logkey"
)

// Prefix is the path the handler serves under.
const Prefix = "/dashboard/"

// Config configures New.
type Config struct {
	// Source is what the dashboard shows; Auth who may see it. Required.
	Source Source
	Auth   Authenticator
	// Clock (default: the real one) times the updates and expiries.
	Clock clock.WithTicker
	// Logger (default: discard) receives refused requests and failures;
	// never a token.
	Logger *slog.Logger
	// MinInterval is the least time between two updates pushed to the page
	// (default 500ms: at most 2 a second); changes in between are
	// coalesced into the next.
	MinInterval time.Duration
	// Refresh is how often an update is pushed without a change (default
	// 10s), for what passing time alone changes: time left, what falls at
	// risk.
	Refresh time.Duration
	// KeepAlive is how often an idle event stream gets a comment (default
	// 15s), so that proxies keep it open.
	KeepAlive time.Duration
	// ChartWindow is how far back the overview's buckets go (default 1h).
	ChartWindow time.Duration
	// MaxStreams bounds the event streams open at once (default 256; more
	// get 503); MaxSessions the browser sessions (default 1024; the one
	// that would end soonest is dropped).
	MaxStreams, MaxSessions int
}

// Handler serves the dashboard. Run must be running for the page to update
// live.
type Handler struct {
	cfg      Config
	mux      *http.ServeMux
	sessions *sessions
	assets   map[string]*asset

	running sync.Once
	stopped chan struct{} // closed when Run returns: the event streams end

	mu      sync.Mutex
	gen     uint64
	streams map[chan uint64]struct{}

	encMu    sync.Mutex
	snaps    []*snapshot // the last keepSnapshots, oldest first
	lastSnap uint64
}

// New returns the dashboard handler, for Prefix.
func New(cfg Config) (*Handler, error) {
	if cfg.Source == nil || cfg.Auth == nil {
		return nil, errors.New("dashboard: a Source and an Authenticator are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.MinInterval, 500*time.Millisecond)
	def(&cfg.Refresh, 10*time.Second)
	def(&cfg.KeepAlive, 15*time.Second)
	def(&cfg.ChartWindow, time.Hour)
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = 256
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 1024
	}
	assets, err := loadAssets()
	if err != nil {
		return nil, err
	}
	h := &Handler{
		cfg:      cfg,
		sessions: newSessions(cfg.MaxSessions),
		assets:   assets,
		stopped:  make(chan struct{}),
		streams:  map[chan uint64]struct{}{},
		// Generations and snapshots count from a random start, so that a
		// page that outlived a restart of the server never takes the new
		// process's numbers for its own.
		gen:      rand.Uint64() >> 16,
		lastSnap: rand.Uint64() >> 16,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Prefix+"{$}", h.page)
	mux.HandleFunc("GET "+Prefix+"login", func(w http.ResponseWriter, r *http.Request) {
		h.serveAsset(w, r, "login.html")
	})
	mux.HandleFunc("GET "+Prefix+"assets/{name...}", func(w http.ResponseWriter, r *http.Request) {
		h.serveAsset(w, r, r.PathValue("name"))
	})
	mux.HandleFunc("POST "+Prefix+"api/session", h.openSession)
	mux.HandleFunc("POST "+Prefix+"api/logout", h.logout)
	mux.HandleFunc("GET "+Prefix+"api/overview", h.authenticated(h.overview))
	mux.HandleFunc("GET "+Prefix+"api/buckets", h.authenticated(h.buckets))
	mux.HandleFunc("GET "+Prefix+"api/events", h.authenticated(h.events))
	h.mux = mux
	return h, nil
}

// contentSecurityPolicy lets the page run only its own embedded scripts and
// styles, and talk only to its own origin.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// ServeHTTP serves the dashboard's paths under Prefix.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", contentSecurityPolicy)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.mux.ServeHTTP(w, r)
}

// authenticated serves next to an authenticated caller, and 401 to others.
func (h *Handler) authenticated(next func(http.ResponseWriter, *http.Request, principal)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := h.authenticate(r)
		if err != nil {
			h.unauthorized(w, r, err)
			http.Error(w, "unauthenticated: open the URL `tallyctl dashboard token` prints, or send its token as a bearer token",
				http.StatusUnauthorized)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		next(w, r, p)
	}
}

// unauthorized logs a refused request and sets the 401's challenge; the
// caller writes the body. Only the refusal's reason is logged, never the
// credentials.
func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request, err error) {
	level := slog.LevelInfo
	if errors.Is(err, errUnauthenticated) {
		level = slog.LevelDebug
	}
	h.cfg.Logger.Log(r.Context(), level, "dashboard request refused", logkey.Peer, r.RemoteAddr, logkey.Path, r.URL.Path,
		logkey.Error, err)
	w.Header().Set("WWW-Authenticate", `Bearer realm="tally-dashboard"`)
}

// page serves the dashboard page, or 401 and a page that says how to sign
// in.
func (h *Handler) page(w http.ResponseWriter, r *http.Request) {
	if _, err := h.authenticate(r); err != nil {
		h.unauthorized(w, r, err)
		a := h.assets["signed-out.html"]
		w.Header().Set("Content-Type", a.contentType)
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write(a.raw)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	h.serveAsset(w, r, "index.html")
}

// openSession exchanges a bearer token for a session cookie.
func (h *Handler) openSession(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		h.cfg.Logger.Info("dashboard session refused: cross-site request", logkey.Peer, r.RemoteAddr)
		http.Error(w, "cross-site request", http.StatusForbidden)
		return
	}
	tok := bearer(r)
	if tok == "" {
		h.unauthorized(w, r, errUnauthenticated)
		http.Error(w, "a bearer token is required", http.StatusUnauthorized)
		return
	}
	now := h.cfg.Clock.Now()
	exp, err := h.cfg.Auth.VerifyToken(r.Context(), tok)
	if err == nil && !exp.After(now) {
		err = errors.New("dashboard: token expired")
	}
	if err != nil {
		h.unauthorized(w, r, err)
		http.Error(w, "token refused", http.StatusUnauthorized)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name:     SessionCookie,
		Value:    h.sessions.open(now, exp),
		Path:     "/",
		Expires:  exp,
		MaxAge:   int(exp.Sub(now).Seconds()),
		Secure:   true,
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
	})
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		http.Error(w, "cross-site request", http.StatusForbidden)
		return
	}
	if c, err := r.Cookie(SessionCookie); err == nil {
		h.sessions.close(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true,
		SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
}

// overview serves the overview JSON (wire.go): whole, or with ?since=<snap>
// only the workloads changed since that snapshot; gzipped for a client that
// takes it.
func (h *Handler) overview(w http.ResponseWriter, r *http.Request, _ principal) {
	var since uint64
	if v := r.URL.Query().Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			http.Error(w, "since: want a snapshot number", http.StatusBadRequest)
			return
		}
		since = n
	}
	cur := h.snapshot()
	var b *body
	var err error
	if base := h.kept(since); base != nil && since != 0 {
		b, err = cur.deltaBody(base)
	} else {
		b, err = cur.fullBody()
	}
	if err != nil {
		h.cfg.Logger.Error("dashboard overview", logkey.Error, err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Vary", "Accept-Encoding")
	data := b.raw
	if b.gz != nil && acceptsGzip(r) {
		w.Header().Set("Content-Encoding", "gzip")
		data = b.gz
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	_, _ = w.Write(data)
}

// buckets serves issuances per minute since ?since (Unix seconds; default
// ChartWindow ago, at most a day ago).
func (h *Handler) buckets(w http.ResponseWriter, r *http.Request, _ principal) {
	now := h.cfg.Clock.Now()
	since := now.Add(-h.cfg.ChartWindow)
	if s := r.URL.Query().Get("since"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			http.Error(w, "since: want Unix seconds", http.StatusBadRequest)
			return
		}
		since = time.Unix(n, 0)
	}
	if floor := now.Add(-24 * time.Hour); since.Before(floor) {
		since = floor
	}
	writeJSON(w, wireBuckets(h.cfg.Source.Buckets(since)))
}

func writeJSON(w http.ResponseWriter, v any) {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(buf.Bytes())
}
