package dashboard

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	"k8s.io/utils/clock"
)

// -update writes the screenshot the browser test takes to docs/dashboard.png,
// for the README: go test ./ca/dashboard -run TestBrowser -update
var update = flag.Bool("update", false, "write docs/dashboard.png from the browser test's screenshot")

// browser is headless Chromium whose user trusts the local serving CA the
// way a person would: in the NSS database of their home directory
// (~/.pki/nssdb), where Chromium on Linux reads the certificates its user
// added. Certificate errors are not ignored. Without trust, the CA is not
// added.
type browser struct {
	ctx      context.Context
	mu       sync.Mutex
	messages []chromedp.ConsoleMessage
}

func newBrowser(t testing.TB, caFile string, trust bool) *browser {
	t.Helper()
	exe := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			exe = p
			break
		}
	}
	if exe == "" {
		t.Fatal("no Chromium on PATH: the dashboard's browser tests need Debian's chromium and libnss3-tools; run .ci/run, which installs them")
	}
	home := t.TempDir()
	if trust {
		certutil, err := exec.LookPath("certutil")
		if err != nil {
			t.Fatal("no certutil on PATH: the dashboard's browser tests need libnss3-tools to trust the local serving CA; run .ci/run, which installs it")
		}
		db := "sql:" + filepath.Join(home, ".pki", "nssdb")
		require.NoError(t, os.MkdirAll(filepath.Join(home, ".pki", "nssdb"), 0o700))
		for _, args := range [][]string{
			{"-d", db, "-N", "--empty-password"},
			{"-d", db, "-A", "-t", "C,,", "-n", "Tally local serving CA", "-i", caFile},
		} {
			out, err := exec.Command(certutil, args...).CombinedOutput()
			require.NoError(t, err, "certutil %s: %s", strings.Join(args, " "), out)
		}
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(filepath.Join(home, "profile")),
		chromedp.Env("HOME="+home),
		chromedp.WindowSize(1440, 1000),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium's sandbox refuses root
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{ctx: ctx}
	messages := chromedp.Console(ctx) // starts the browser
	done := make(chan struct{})
	go func() {
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

// problems returns the console's errors and warnings and the uncaught
// exceptions since the last call.
func (b *browser) problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.messages {
		if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException() {
			out = append(out, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
		}
	}
	b.messages = nil
	return out
}

func (b *browser) navigate(url string) error { return chromedp.Do(b.ctx, chromedp.Navigate(url)) }

func eval[T any](t testing.TB, b *browser, js string) T {
	t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	require.NoError(t, err, js)
	return v
}

// waitJS waits until js is true, for at most within; a page navigating
// meanwhile is no error.
func (b *browser) waitJS(t testing.TB, js string, within time.Duration) {
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

// signIn opens the URL `tallyctl dashboard token` prints and waits for the
// page to show the data.
func (b *browser) signIn(t testing.TB, base string) {
	t.Helper()
	require.NoError(t, b.navigate(base+Prefix+"login#token="+testToken))
	b.waitJS(t, `location.pathname === "/dashboard/" && document.body.dataset.gen`, 30*time.Second)
}

func TestBrowser(t *testing.T) {
	now := time.Now()
	o, buckets := fleet(now, 2400, 24)
	s := startServer(t, newFakeSource(o, buckets), clock.RealClock{}, now.Add(time.Hour), nil)
	b := newBrowser(t, s.Web.CAFile(), true)

	t.Run("not signed in: 401 and no data", func(t *testing.T) {
		require.NoError(t, b.navigate(s.URL+Prefix))
		require.Contains(t, eval[string](t, b, `document.body.innerText`), "Not signed in")
		res := eval[[]any](t, b, `fetch("api/overview").then(async r => [r.status, await r.text()])`)
		require.Equal(t, float64(401), res[0])
		require.NotContains(t, res[1], testTD)
		b.problems() // the 401s are logged as failed loads, as they should be
	})

	t.Run("signs in with the token in the fragment", func(t *testing.T) {
		b.signIn(t, s.URL)
		require.NotContains(t, eval[string](t, b, `location.href`), "token", "the token is gone from the address bar")
		require.NotContains(t, eval[string](t, b, `document.cookie`), "tally", "the session cookie is HttpOnly")
		require.Equal(t, testTD, eval[string](t, b, `document.getElementById("trust-domain").textContent`))
		require.Equal(t, "live", eval[string](t, b, `document.getElementById("live").dataset.state`))
		require.Empty(t, b.problems(), "console errors on load")
	})

	risky := o.Workloads[0].SPIFFEID
	t.Run("the at-risk SVID is listed first", func(t *testing.T) {
		require.Equal(t, "1", eval[string](t, b, `document.getElementById("risk-count").textContent`))
		first := eval[string](t, b, `document.querySelector("#risk-list li .subject").textContent`)
		require.Equal(t, risky, first)
		require.Equal(t, risky, eval[string](t, b, `document.querySelector("#wl-rows .vt-row").dataset.id`), "at risk first in the table too")
		require.True(t, eval[bool](t, b, `document.querySelector("#wl-rows .vt-row").classList.contains("at-risk")`))
		rows := eval[int](t, b, `document.querySelectorAll("#wl-rows .vt-row").length`)
		require.Less(t, rows, 100, "only the visible workload rows are in the DOM")
	})

	t.Run("filters", func(t *testing.T) {
		want := 0
		for _, w := range o.Workloads {
			if w.Namespace == "ledger" && strings.Contains(w.SPIFFEID, "worker") {
				want++
			}
		}
		require.NotZero(t, want)
		eval[chromedp.Void](t, b, `(() => {
			const q = document.getElementById("q");
			q.value = "worker";
			q.dispatchEvent(new Event("input"));
			const ns = document.getElementById("f-ns");
			ns.value = "ledger";
			ns.dispatchEvent(new Event("change"));
		})()`)
		b.waitJS(t, fmt.Sprintf(`document.getElementById("wl-count").textContent === "%d of %d"`, want, len(o.Workloads)), 5*time.Second)
		ids := eval[[]string](t, b, `[...document.querySelectorAll("#wl-rows .vt-row")].map(r => r.dataset.id)`)
		for _, id := range ids {
			require.Contains(t, id, "/ns/ledger/")
			require.Contains(t, id, "worker")
		}
		eval[chromedp.Void](t, b, `(() => {
			document.getElementById("q").value = "";
			const ns = document.getElementById("f-ns");
			ns.value = "";
			ns.dispatchEvent(new Event("change"));
		})()`)
		b.waitJS(t, fmt.Sprintf(`document.getElementById("wl-count").textContent === "%d"`, len(o.Workloads)), 5*time.Second)
	})

	t.Run("a rotation appears live, without a reload", func(t *testing.T) {
		eval[chromedp.Void](t, b, `window.sameDocument = true`)
		prepared := o.Slots[2].ID
		gen := eval[string](t, b, `document.body.dataset.gen`)
		s.Source.update(func(o *Overview, bs *[]Bucket) {
			for i := range o.Slots {
				switch sl := &o.Slots[i]; {
				case sl.Kind == "x509" && sl.Status == "active":
					sl.Status = "old"
				case sl.ID == prepared:
					sl.Status, sl.ActivatedAt = "active", time.Now()
				}
			}
			o.AtRisk = append(o.AtRisk, Risk{Kind: "slot", Subject: o.Slots[0].ID, Reason: "tainted: agents re-mint what it signed", Since: time.Now()})
			o.Slots[0].Tainted = true
			// And the at-risk SVID renewed at last, by the new key; another workload gone.
			o.Workloads[0].Serial, o.Workloads[0].SignerID, o.Workloads[0].Renewals = "0123456789abcdef0123456789abcdef", prepared, 39
			o.Workloads = slices.Delete(o.Workloads, 5, 6)
		})
		b.waitJS(t, fmt.Sprintf(`document.querySelector('#slot-table tr.slot-active[data-id="%s"]')`, prepared), 2*time.Second)
		require.True(t, eval[bool](t, b, `window.sameDocument === true`), "the page was not reloaded")
		require.True(t, eval[bool](t, b, `tallyStats.delta`), "only what changed was fetched")
		require.Equal(t, fmt.Sprint(len(o.Workloads)-1), eval[string](t, b, `document.getElementById("wl-count").textContent`))
		require.Contains(t, eval[string](t, b, `document.querySelector("#wl-rows .vt-row .mono + span + span + .mono").title`),
			"0123456789abcdef0123456789abcdef")
		require.NotEqual(t, gen, eval[string](t, b, `document.body.dataset.gen`))
		require.Equal(t, "2", eval[string](t, b, `document.getElementById("risk-count").textContent`))
		require.True(t, eval[bool](t, b, `!!document.querySelector(".tl-bar.tainted")`))
		require.Empty(t, b.problems(), "console errors after the update")
	})

	t.Run("screenshot", func(t *testing.T) {
		b.waitJS(t, `document.querySelector("#chart canvas")`, 5*time.Second)
		png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
		require.NoError(t, err)
		dir := os.Getenv("TALLY_ARTIFACTS")
		if dir == "" {
			dir = t.TempDir()
		}
		require.NoError(t, os.MkdirAll(dir, 0o755))
		path := filepath.Join(dir, "dashboard.png")
		require.NoError(t, os.WriteFile(path, png, 0o644))
		t.Logf("screenshot: %s", path)
		if *update {
			require.NoError(t, os.WriteFile(filepath.Join("..", "..", "docs", "dashboard.png"), png, 0o644))
		}
	})

	t.Run("sign out", func(t *testing.T) {
		eval[chromedp.Void](t, b, `document.getElementById("logout").click()`)
		b.waitJS(t, `location.pathname === "/dashboard/login"`, 5*time.Second)
		res := eval[float64](t, b, `fetch("api/overview").then(r => r.status)`)
		require.Equal(t, float64(401), res)
	})
}

// TestBrowserRefusesAnUntrustedCA: the same browser that has not been told
// to trust the local serving CA refuses the page, so the test above passes
// by that trust and not by certificate errors being ignored.
func TestBrowserRefusesAnUntrustedCA(t *testing.T) {
	o, buckets := fleet(time.Now(), 10, 2)
	s := startServer(t, newFakeSource(o, buckets), clock.RealClock{}, time.Now().Add(time.Hour), nil)
	b := newBrowser(t, s.Web.CAFile(), false)
	err := b.navigate(s.URL + Prefix + "login")
	var loadErr *chromedp.LoadError
	require.ErrorAs(t, err, &loadErr)
	require.Contains(t, loadErr.ErrorText, "ERR_CERT_AUTHORITY_INVALID")
}
