package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/internal/browsertest"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// -update writes docs/dashboard.png, for the README, from TestDashboard's
// screenshot of a real server: go test ./test/e2e -run TestDashboard -update
var update = flag.Bool("update", false, "write docs/dashboard.png from TestDashboard's screenshot")

// TestDashboard opens the dashboard of a real server in a real Chromium
// that trusts the server's local serving CA (no certificate error is
// ignored), with a real agent serving a workload that holds a 12 s
// X509-SVID, and watches the page follow the fleet live, without a reload:
// a CA key prepared by hand shows in the CA keys, and the workload's SVID
// falls at risk once its agent is stopped and nothing renews it.
//
// The CA keys live 30 minutes, so that nothing prepares a key of its own
// during the test (automatic rotation prepares at 1/2 of the active key's
// life), and so that a dashboard token may live 5 minutes (at most
// ca_ttl/6, as every JWT-SVID).
func TestDashboard(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t, "--ca-ttl", "30m", "--x509-svid-ttl", "12s")
	a := harness.StartAgent(t, s, "", "--report-interval", "1s")
	const workloadID = "spiffe://example.org/dashboard/e2e"
	createEntries(t, s, &tallyv1.Entry{SpiffeId: workloadID, ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(a.Addr())))
	require.NoError(t, err)
	defer source.Close()
	svid, err := source.GetX509SVID()
	require.NoError(t, err)
	require.Equal(t, workloadID, svid.ID.String())

	stdout, stderr, err := s.Ctl("-o", "json", "dashboard", "token", "--ttl", "5m")
	require.NoError(t, err, stderr)
	var tok struct {
		Token string `json:"token"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &tok), stdout)
	require.NotEmpty(t, tok.Token)

	caFile := filepath.Join(s.Dir, "data", "web", "ca.pem")
	_, port, err := net.SplitHostPort(s.WebAddr)
	require.NoError(t, err)
	base := "https://localhost:" + port + "/dashboard/"
	client := webClient(t, caFile)

	t.Run("the API: 401 and no data without a token", func(t *testing.T) {
		overview := func(token string) (int, string) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"api/overview", nil)
			require.NoError(t, err)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := client.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			return resp.StatusCode, string(body)
		}
		var code int
		var body string
		require.Eventually(t, func() bool { // the agent has reported the workload
			code, body = overview(tok.Token)
			return code == http.StatusOK && json.Valid([]byte(body)) && strings.Contains(body, workloadID)
		}, 30*time.Second, 100*time.Millisecond, "with the token: %d %s", code, body)

		code, body = overview("")
		require.Equal(t, http.StatusUnauthorized, code)
		require.NotContains(t, body, workloadID)
		require.NotContains(t, body, s.TrustDomain.Name())
	})

	b := browsertest.New(t, browsertest.Config{TrustCA: caFile})
	t.Run("signs in through the login URL and shows the workload", func(t *testing.T) {
		require.NoError(t, b.Navigate(base+"login#token="+tok.Token))
		b.WaitJS(t, `location.pathname === "/dashboard/" && document.body.dataset.gen`, 30*time.Second)
		require.NotContains(t, browsertest.Eval[string](t, b, `location.href`), tok.Token, "the token is gone from the address bar")
		require.Equal(t, s.TrustDomain.Name(), browsertest.Eval[string](t, b, `document.getElementById("trust-domain").textContent`))
		b.WaitJS(t, `document.getElementById("live").dataset.state === "live"`, 10*time.Second)
		b.WaitJS(t, workloadRow(workloadID), 10*time.Second)
		require.Equal(t, a.ID(t).String(), browsertest.Eval[string](t, b,
			`document.querySelector("#agent-table tbody tr").dataset.key`), "the agent that serves it")
		require.Empty(t, b.Problems(), "console errors on load")
	})

	// How fast is a benchmark's figure (rotation → page, docs/benchmarks.md), not this
	// test's: here the deadline only bounds a wait, since a loaded machine (or a real
	// node's bridge, which makes Chromium drop the event stream until it reconnects) can
	// take seconds.
	t.Run("a CA key prepared by hand shows live, without a reload", func(t *testing.T) {
		browsertest.Eval[chromedp.Void](t, b, `window.sameDocument = true`)
		require.False(t, browsertest.Eval[bool](t, b, preparedX509), "no x509 key is prepared yet")
		stdout, stderr, err := s.Ctl("-o", "json", "authority", "x509", "prepare")
		require.NoError(t, err, stderr)
		returned := time.Now()
		var slot struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		}
		require.NoError(t, json.Unmarshal([]byte(stdout), &slot), stdout)
		require.Equal(t, "prepared", slot.Status)
		b.WaitJS(t, fmt.Sprintf(`document.querySelector('#slot-table tr.slot-prepared[data-id=%q]') && document.querySelector(".tl-bar.prepared")`,
			slot.ID), 30*time.Second)
		t.Logf("prepared key %s on the page %s after tallyctl returned", slot.ID, time.Since(returned).Round(time.Millisecond))
		require.Equal(t, "x509", browsertest.Eval[string](t, b,
			fmt.Sprintf(`document.querySelector('#slot-table tr[data-id=%q]').cells[0].textContent`, slot.ID)))
		require.True(t, browsertest.Eval[bool](t, b, `window.sameDocument === true`), "the page was not reloaded")
		require.Empty(t, b.Problems(), "console errors after the update")
	})

	t.Run("the SVID of a stopped agent is listed at risk", func(t *testing.T) {
		require.False(t, browsertest.Eval[bool](t, b, riskListed(workloadID)), "not at risk while its agent renews it")
		a.Stop(t)
		stopped := time.Now()
		// Past 3/4 of its 12 s life (9 s at most) the SVID is at risk; the
		// page hears of it at the dashboard's next refresh (10 s) at the
		// latest.
		b.WaitJS(t, riskListed(workloadID), 30*time.Second)
		t.Logf("at risk on the page %s after the agent stopped", time.Since(stopped).Round(time.Millisecond))
		require.True(t, browsertest.Eval[bool](t, b,
			fmt.Sprintf(`document.querySelector('#wl-rows .vt-row[data-id=%q]').classList.contains("at-risk")`, workloadID)))
		require.True(t, browsertest.Eval[bool](t, b, `window.sameDocument === true`), "the page was not reloaded")
		require.Empty(t, b.Problems(), "console errors after the updates")
	})

	t.Run("screenshot", func(t *testing.T) {
		b.WaitJS(t, `document.querySelector("#chart canvas")`, 30*time.Second)
		png := b.Screenshot(t)
		browsertest.WriteArtifact(t, "dashboard-e2e.png", png)
		if *update {
			require.NoError(t, os.WriteFile(filepath.Join("..", "..", "docs", "dashboard.png"), png, 0o644))
		}
	})
}

// preparedX509 is true when the CA keys table shows a prepared x509 key.
const preparedX509 = `[...document.querySelectorAll("#slot-table tr.slot-prepared")].some(tr => tr.cells[0].textContent === "x509")`

// workloadRow is true when the workload table shows id.
func workloadRow(id string) string {
	return fmt.Sprintf(`document.querySelector('#wl-rows .vt-row[data-id=%q]')`, id)
}

// riskListed is true when the at-risk list shows the SVID of id.
func riskListed(id string) string {
	return fmt.Sprintf(`[...document.querySelectorAll("#risk-list li.risk-svid .subject")].some(e => e.textContent === %q)`, id)
}

// webClient is an HTTPS client that trusts the CA in caFile, and no other.
func webClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(pem), "no certificate in %s", caFile)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
}
