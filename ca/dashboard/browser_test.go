package dashboard

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/browsertest"
)

// signIn opens the URL `tallyctl dashboard token` prints and waits for the
// page to show the data.
func signIn(t testing.TB, b *browsertest.Browser, base string) {
	t.Helper()
	require.NoError(t, b.Navigate(base+Prefix+"login#token="+testToken))
	b.WaitJS(t, `location.pathname === "/dashboard/" && document.body.dataset.gen`, 30*time.Second)
}

func TestBrowser(t *testing.T) {
	now := time.Now()
	o, buckets := fleet(now, 2400, 24)
	s := startServer(t, newFakeSource(o, buckets), clock.RealClock{}, now.Add(time.Hour), nil)
	b := browsertest.New(t, browsertest.Config{TrustCA: s.Web.CAFile()})

	t.Run("not signed in: 401 and no data", func(t *testing.T) {
		require.NoError(t, b.Navigate(s.URL+Prefix))
		require.Contains(t, browsertest.Eval[string](t, b, `document.body.innerText`), "Not signed in")
		res := browsertest.Eval[[]any](t, b, `fetch("api/overview").then(async r => [r.status, await r.text()])`)
		require.Equal(t, float64(401), res[0])
		require.NotContains(t, res[1], testTD)
		// The 401s are logged as failed loads, as they should be; the
		// console reports them asynchronously: wait for the explicit one,
		// then for quiet, before the next step looks for errors.
		var seen []string
		require.Eventually(t, func() bool {
			seen = append(seen, b.Problems()...)
			return slices.ContainsFunc(seen, func(p string) bool { return strings.Contains(p, "401") })
		}, 10*time.Second, 20*time.Millisecond, "the 401 reaches the console")
		for quiet := 0; quiet < 5; {
			time.Sleep(50 * time.Millisecond)
			if len(b.Problems()) == 0 {
				quiet++
			} else {
				quiet = 0
			}
		}
	})

	t.Run("signs in with the token in the fragment", func(t *testing.T) {
		signIn(t, b, s.URL)
		require.NotContains(t, browsertest.Eval[string](t, b, `location.href`), "token", "the token is gone from the address bar")
		require.NotContains(t, browsertest.Eval[string](t, b, `document.cookie`), "tally", "the session cookie is HttpOnly")
		require.Equal(t, testTD, browsertest.Eval[string](t, b, `document.getElementById("trust-domain").textContent`))
		require.Equal(t, "live", browsertest.Eval[string](t, b, `document.getElementById("live").dataset.state`))
		require.Empty(t, b.Problems(), "console errors on load")
	})

	risky := o.Workloads[0].SPIFFEID
	t.Run("the at-risk SVID is listed first", func(t *testing.T) {
		require.Equal(t, "1", browsertest.Eval[string](t, b, `document.getElementById("risk-count").textContent`))
		first := browsertest.Eval[string](t, b, `document.querySelector("#risk-list li .subject").textContent`)
		require.Equal(t, risky, first)
		require.Equal(t, risky, browsertest.Eval[string](t, b, `document.querySelector("#wl-rows .vt-row").dataset.id`), "at risk first in the table too")
		require.True(t, browsertest.Eval[bool](t, b, `document.querySelector("#wl-rows .vt-row").classList.contains("at-risk")`))
		rows := browsertest.Eval[int](t, b, `document.querySelectorAll("#wl-rows .vt-row").length`)
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
		browsertest.Eval[chromedp.Void](t, b, `(() => {
			const q = document.getElementById("q");
			q.value = "worker";
			q.dispatchEvent(new Event("input"));
			const ns = document.getElementById("f-ns");
			ns.value = "ledger";
			ns.dispatchEvent(new Event("change"));
		})()`)
		b.WaitJS(t, fmt.Sprintf(`document.getElementById("wl-count").textContent === "%d of %d"`, want, len(o.Workloads)), 30*time.Second)
		ids := browsertest.Eval[[]string](t, b, `[...document.querySelectorAll("#wl-rows .vt-row")].map(r => r.dataset.id)`)
		for _, id := range ids {
			require.Contains(t, id, "/ns/ledger/")
			require.Contains(t, id, "worker")
		}
		browsertest.Eval[chromedp.Void](t, b, `(() => {
			document.getElementById("q").value = "";
			const ns = document.getElementById("f-ns");
			ns.value = "";
			ns.dispatchEvent(new Event("change"));
		})()`)
		b.WaitJS(t, fmt.Sprintf(`document.getElementById("wl-count").textContent === "%d"`, len(o.Workloads)), 30*time.Second)
	})

	t.Run("a rotation appears live, without a reload", func(t *testing.T) {
		browsertest.Eval[chromedp.Void](t, b, `window.sameDocument = true`)
		prepared := o.Slots[2].ID
		gen := browsertest.Eval[string](t, b, `document.body.dataset.gen`)
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
		b.WaitJS(t, fmt.Sprintf(`document.querySelector('#slot-table tr.slot-active[data-id="%s"]')`, prepared), 30*time.Second)
		require.True(t, browsertest.Eval[bool](t, b, `window.sameDocument === true`), "the page was not reloaded")
		require.True(t, browsertest.Eval[bool](t, b, `tallyStats.delta`), "only what changed was fetched")
		require.Equal(t, fmt.Sprint(len(o.Workloads)-1), browsertest.Eval[string](t, b, `document.getElementById("wl-count").textContent`))
		require.Contains(t, browsertest.Eval[string](t, b, `document.querySelector("#wl-rows .vt-row .mono + span + span + .mono").title`),
			"0123456789abcdef0123456789abcdef")
		require.NotEqual(t, gen, browsertest.Eval[string](t, b, `document.body.dataset.gen`))
		require.Equal(t, "2", browsertest.Eval[string](t, b, `document.getElementById("risk-count").textContent`))
		require.True(t, browsertest.Eval[bool](t, b, `!!document.querySelector(".tl-bar.tainted")`))
		require.Empty(t, b.Problems(), "console errors after the update")
	})

	t.Run("screenshot", func(t *testing.T) {
		b.WaitJS(t, `document.querySelector("#chart canvas")`, 30*time.Second)
		// docs/dashboard.png is taken of a real server: test/e2e's
		// TestDashboard -update.
		browsertest.WriteArtifact(t, "dashboard.png", b.Screenshot(t))
	})

	t.Run("sign out", func(t *testing.T) {
		browsertest.Eval[chromedp.Void](t, b, `document.getElementById("logout").click()`)
		b.WaitJS(t, `location.pathname === "/dashboard/login"`, 30*time.Second)
		res := browsertest.Eval[float64](t, b, `fetch("api/overview").then(r => r.status)`)
		require.Equal(t, float64(401), res)
	})
}

// TestBrowserRefusesAnUntrustedCA: the same browser that has not been told
// to trust the local serving CA refuses the page, so the test above passes
// by that trust and not by certificate errors being ignored.
func TestBrowserRefusesAnUntrustedCA(t *testing.T) {
	o, buckets := fleet(time.Now(), 10, 2)
	s := startServer(t, newFakeSource(o, buckets), clock.RealClock{}, time.Now().Add(time.Hour), nil)
	b := browsertest.New(t, browsertest.Config{}) // trusts no local CA
	err := b.Navigate(s.URL + Prefix + "login")
	var loadErr *chromedp.LoadError
	require.ErrorAs(t, err, &loadErr)
	require.Contains(t, loadErr.ErrorText, "ERR_CERT_AUTHORITY_INVALID")
}
