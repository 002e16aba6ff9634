// Package browsertest drives a real headless Chromium for tests. Its user
// trusts a local CA the way a person would: in the NSS database of their
// home directory (~/.pki/nssdb), where Chromium on Linux reads the
// certificates its user added. Certificate errors are never ignored, so a
// page that loads was served a certificate the browser verified.
//
// It needs Debian's chromium and libnss3-tools (certutil) on PATH; a test
// without them fails, and says to run .ci/run, which installs them. For
// tests only.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

// Config configures New.
type Config struct {
	// TrustCA is a PEM CA certificate that the browser's user trusts to
	// identify websites. Empty: none is added, and a page served under a
	// private CA fails to load (ERR_CERT_AUTHORITY_INVALID).
	TrustCA string
	// Width and Height are the window's size (default 1440×1000).
	Width, Height int
}

// Browser is a headless Chromium with a home directory and profile of its
// own, which the test's end stops and removes. It collects what its page
// logs to the console. Its methods may be called from one goroutine at a
// time; Problems is safe concurrently.
type Browser struct {
	ctx      context.Context
	mu       sync.Mutex
	messages []chromedp.ConsoleMessage
}

// New starts a browser for the test. It fails the test if Chromium or, with
// cfg.TrustCA, certutil is not on PATH.
func New(t testing.TB, cfg Config) *Browser {
	t.Helper()
	if cfg.Width <= 0 || cfg.Height <= 0 {
		cfg.Width, cfg.Height = 1440, 1000
	}
	exe := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			exe = p
			break
		}
	}
	if exe == "" {
		t.Fatal("browsertest: no Chromium on PATH: browser tests need Debian's chromium and libnss3-tools; run .ci/run, which installs them")
	}
	home := t.TempDir()
	if cfg.TrustCA != "" {
		trust(t, home, cfg.TrustCA)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(filepath.Join(home, "profile")),
		chromedp.Env("HOME="+home),
		chromedp.WindowSize(cfg.Width, cfg.Height),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium's sandbox refuses root
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &Browser{ctx: ctx}
	messages := chromedp.Console(ctx) // starts the browser
	done := make(chan struct{})
	go func() { // ends when the browser does
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.messages = append(b.messages, m)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return b
}

// trust adds caFile to a new NSS database in home, trusted to identify
// websites.
func trust(t testing.TB, home, caFile string) {
	t.Helper()
	certutil, err := exec.LookPath("certutil")
	if err != nil {
		t.Fatal("browsertest: no certutil on PATH: browser tests need libnss3-tools to trust a local CA; run .ci/run, which installs it")
	}
	dir := filepath.Join(home, ".pki", "nssdb")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	db := "sql:" + dir
	for _, args := range [][]string{
		{"-d", db, "-N", "--empty-password"},
		{"-d", db, "-A", "-t", "C,,", "-n", "local CA for tests", "-i", caFile},
	} {
		out, err := exec.Command(certutil, args...).CombinedOutput()
		require.NoError(t, err, "certutil %s: %s", strings.Join(args, " "), out)
	}
}

// Context is the browser's tab, for chromedp actions this package does not
// wrap. It is cancelled when the test ends.
func (b *Browser) Context() context.Context { return b.ctx }

// Navigate loads url and waits for its load event. A page that cannot load
// (a certificate refused, no server) is a *chromedp.LoadError.
func (b *Browser) Navigate(url string) error { return chromedp.Do(b.ctx, chromedp.Navigate(url)) }

// Problems returns the console's errors and warnings and the uncaught
// exceptions since the last call, each with where it came from. A failed
// load of a resource (a 401) is an error of the browser's log.
func (b *Browser) Problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.messages {
		// Chromium aborts open requests when the host's network changes
		// (netlink), and a test that starts a real node creates and
		// deletes a bridge meanwhile: the machine's doing, not the page's.
		// The page's EventSource reconnects by itself.
		if strings.Contains(m.String(), "net::ERR_NETWORK_CHANGED") {
			continue
		}
		if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException() {
			out = append(out, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
		}
	}
	b.messages = nil
	return out
}

// Eval evaluates js in the page, awaiting a promise it returns, and fails
// the test if it throws or its value does not decode into T
// (chromedp.Void: no value).
func Eval[T any](t testing.TB, b *Browser, js string) T {
	t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	require.NoError(t, err, js)
	return v
}

// WaitJS waits until js is truthy, polling every 10 ms, and fails the test
// if it is not within that long. A page navigating meanwhile is no error.
func (b *Browser) WaitJS(t testing.TB, js string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var lastErr error
	for {
		ok, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool]("Boolean("+js+")"))
		if err == nil && ok {
			return
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s (last error: %v)", within, js, lastErr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Screenshot returns a PNG of the whole page, beyond the window.
func (b *Browser) Screenshot(t testing.TB) []byte {
	t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100)) // quality 100: PNG
	require.NoError(t, err)
	return png
}

// WriteArtifact writes data to name in $TALLY_ARTIFACTS, if set (CI keeps
// that directory), else in a temp dir of the test's, logs the path and
// returns it.
func WriteArtifact(t testing.TB, name string, data []byte) string {
	t.Helper()
	dir := os.Getenv("TALLY_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, data, 0o644))
	t.Logf("%s: %s", name, path)
	return path
}
