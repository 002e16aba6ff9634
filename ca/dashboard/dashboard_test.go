package dashboard

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

func get(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(body)
}

func post(t *testing.T, c *http.Client, url string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp
}

func newFleetServer(t *testing.T, clk clock.WithTicker, tokenExpiry time.Time) *testServer {
	o, b := fleet(clk.Now(), 50, 5)
	return startServer(t, newFakeSource(o, b), clk, tokenExpiry, nil)
}

// TestUnauthenticated: without valid credentials every data endpoint and
// the page answer 401, and nothing of the trust domain.
func TestUnauthenticated(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	s := newFleetServer(t, clk, clk.Now().Add(time.Hour))
	s.Auth.tokens["expired-token"] = clk.Now().Add(-time.Second)
	stranger := s.svid(t, "spiffe://example.org/ns/web/sa/frontend")

	for _, cred := range []struct {
		name   string
		client *http.Client
		hdr    []string
	}{
		{"no credentials", s.client(), nil},
		{"an unknown token", s.client(), []string{"Authorization", "Bearer not-a-token"}},
		{"an expired token", s.client(), []string{"Authorization", "Bearer expired-token"}},
		{"an unknown session", s.client(), []string{"Cookie", SessionCookie + "=forged"}},
		{"a workload's SVID, not an admin's", s.client(stranger), nil},
	} {
		for _, path := range []string{"", "api/overview", "api/buckets", "api/events"} {
			t.Run(cred.name+"/"+path, func(t *testing.T) {
				resp, body := get(t, cred.client, s.URL+Prefix+path, cred.hdr...)
				require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
				require.Contains(t, resp.Header.Get("WWW-Authenticate"), "Bearer")
				require.NotContains(t, body, testTD)
				require.NotContains(t, body, "spiffe://")
				if path == "" {
					require.Contains(t, body, "tallyctl dashboard token", "the page says how to sign in")
				}
			})
		}
	}
}

// TestPublic: the sign-in page and the assets need no credentials, and hold
// no data.
func TestPublic(t *testing.T) {
	s := newFleetServer(t, clock.RealClock{}, time.Now().Add(time.Hour))
	c := s.client()
	for _, path := range []string{"login", "assets/app.js", "assets/login.js", "assets/style.css", "assets/vendor/uPlot.iife.min.js"} {
		resp, body := get(t, c, s.URL+Prefix+path)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.NotContains(t, body, testTD, path)
		require.NotEmpty(t, resp.Header.Get("ETag"), path)
		require.Equal(t, contentSecurityPolicy, resp.Header.Get("Content-Security-Policy"), path)
		require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), path)

		again, _ := get(t, c, s.URL+Prefix+path, "If-None-Match", resp.Header.Get("ETag"))
		require.Equal(t, http.StatusNotModified, again.StatusCode, path)
	}
	resp, _ := get(t, c, s.URL+Prefix+"assets/index.html")
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "the page is served only at /dashboard/, behind authentication")
	resp, _ = get(t, c, s.URL+"/dashboard")
	require.Contains(t, []int{http.StatusMovedPermanently, http.StatusTemporaryRedirect}, resp.StatusCode)
	require.Equal(t, Prefix, resp.Header.Get("Location"))
}

func TestSession(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	expiry := clk.Now().Add(time.Hour)
	s := newFleetServer(t, clk, expiry)
	c := s.client()
	bearer := []string{"Authorization", "Bearer " + testToken}

	for _, tc := range []struct {
		name string
		hdr  []string
		want int
	}{
		{"no token", nil, http.StatusUnauthorized},
		{"a wrong token", []string{"Authorization", "Bearer wrong"}, http.StatusUnauthorized},
		{"from another site", append([]string{"Origin", "https://evil.example"}, bearer...), http.StatusForbidden},
		{"from another site, by Sec-Fetch-Site", append([]string{"Sec-Fetch-Site", "cross-site"}, bearer...), http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, c, s.URL+Prefix+"api/session", tc.hdr...)
			require.Equal(t, tc.want, resp.StatusCode)
			require.Empty(t, resp.Cookies())
		})
	}

	resp := post(t, c, s.URL+Prefix+"api/session", append([]string{"Origin", s.URL}, bearer...)...)
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	require.Len(t, resp.Cookies(), 1)
	cookie := resp.Cookies()[0]
	require.Equal(t, SessionCookie, cookie.Name)
	require.True(t, cookie.Secure)
	require.True(t, cookie.HttpOnly)
	require.Equal(t, http.SameSiteStrictMode, cookie.SameSite)
	require.Equal(t, "/", cookie.Path)
	require.Equal(t, expiry.Unix(), cookie.Expires.Unix(), "the session ends with the token")
	require.NotContains(t, cookie.Value, testToken, "the cookie is no copy of the token")
	withCookie := []string{"Cookie", SessionCookie + "=" + cookie.Value}

	page, body := get(t, c, s.URL+Prefix, withCookie...)
	require.Equal(t, http.StatusOK, page.StatusCode)
	require.Contains(t, body, "assets/app.js")
	require.Equal(t, "no-store", page.Header.Get("Cache-Control"))
	ov, body := get(t, c, s.URL+Prefix+"api/overview", withCookie...)
	require.Equal(t, http.StatusOK, ov.StatusCode)
	require.Contains(t, body, testTD)
	require.NotContains(t, body, testToken)

	t.Run("logout", func(t *testing.T) {
		resp := post(t, c, s.URL+Prefix+"api/logout", withCookie...)
		require.Equal(t, http.StatusNoContent, resp.StatusCode)
		require.Len(t, resp.Cookies(), 1)
		require.Negative(t, resp.Cookies()[0].MaxAge)
		ov, _ := get(t, c, s.URL+Prefix+"api/overview", withCookie...)
		require.Equal(t, http.StatusUnauthorized, ov.StatusCode)
	})

	t.Run("the session ends with the token", func(t *testing.T) {
		resp := post(t, c, s.URL+Prefix+"api/session", bearer...)
		require.Equal(t, http.StatusNoContent, resp.StatusCode)
		withCookie := []string{"Cookie", SessionCookie + "=" + resp.Cookies()[0].Value}
		clk.SetTime(expiry.Add(time.Second))
		ov, _ := get(t, c, s.URL+Prefix+"api/overview", withCookie...)
		require.Equal(t, http.StatusUnauthorized, ov.StatusCode)
	})
}

func TestBearerAndAdmin(t *testing.T) {
	s := newFleetServer(t, clock.RealClock{}, time.Now().Add(time.Hour))
	resp, body := get(t, s.client(), s.URL+Prefix+"api/overview", "Authorization", "Bearer "+testToken)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, testTD)

	stranger := s.client(s.svid(t, "spiffe://example.org/ns/web/sa/frontend"))
	resp, _ = get(t, stranger, s.URL+Prefix+"api/overview", "Authorization", "Bearer "+testToken)
	require.Equal(t, http.StatusOK, resp.StatusCode, "a client certificate that is no admin's leaves the token to decide")

	admin := s.client(s.svid(t, adminID))
	for _, path := range []string{"", "api/overview", "api/buckets"} {
		resp, body := get(t, admin, s.URL+Prefix+path)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.NotEmpty(t, body)
	}
}

// wireWorkload is a workload row read back as the page reads it.
type wireWorkload struct {
	SPIFFEID, Agent, Node, Namespace, Pod, Serial, LastError string
	NotAfter                                                 int64
	Renewals                                                 int
	AtRisk                                                   []string
}

// overviewJSON is the overview as the page reads it.
type overviewJSON struct {
	wireOverview
	Workloads json.RawMessage `json:"workloads"`
	Removed   [][3]string     `json:"removed"`
}

func decodeOverview(t testing.TB, body []byte) (overviewJSON, []wireWorkload) {
	t.Helper()
	var w overviewJSON
	require.NoError(t, json.Unmarshal(body, &w))
	col := map[string]int{}
	for i, c := range w.Columns {
		col[c] = i
	}
	var rows [][]any
	require.NoError(t, json.Unmarshal(w.Workloads, &rows))
	str := func(r []any, c string) string {
		v := r[col[c]]
		if f, ok := v.(float64); ok {
			require.Zero(t, w.Base, "a delta has strings, not indices")
			return w.Strings[int(f)]
		}
		return v.(string)
	}
	var out []wireWorkload
	for _, r := range rows {
		require.Len(t, r, len(w.Columns))
		wl := wireWorkload{
			SPIFFEID: str(r, "spiffeID"), Agent: str(r, "agent#"), Node: str(r, "node#"), Namespace: str(r, "namespace#"),
			Pod: str(r, "pod"), Serial: str(r, "serial"), LastError: str(r, "lastError"),
			NotAfter: int64(r[col["notAfter"]].(float64)), Renewals: int(r[col["renewals"]].(float64)),
		}
		if reasons, ok := r[col["atRisk"]].([]any); ok {
			for _, reason := range reasons {
				wl.AtRisk = append(wl.AtRisk, reason.(string))
			}
		}
		out = append(out, wl)
	}
	return w, out
}

func wireOf(w Workload) wireWorkload {
	return wireWorkload{
		SPIFFEID: w.SPIFFEID, Agent: w.AgentID, Node: w.Node, Namespace: w.Namespace,
		Pod: strings.ToValidUTF8(w.Pod, "\uFFFD"), Serial: w.Serial, LastError: w.LastError,
		NotAfter: w.NotAfter.Unix(), Renewals: w.Renewals, AtRisk: w.AtRisk,
	}
}

func TestOverview(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	o, b := fleet(clk.Now(), 300, 7)
	o.Workloads[1].Pod = "odd \"pod\" <name> \u2028 \x01 \xff"
	s := startServer(t, newFakeSource(o, b), clk, clk.Now().Add(time.Hour), nil)
	c := s.client()

	resp, body := get(t, c, s.URL+Prefix+"api/overview", "Authorization", "Bearer "+testToken)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, resp.Uncompressed, "served gzipped")
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	w, wls := decodeOverview(t, []byte(body))
	require.Equal(t, testTD, w.TrustDomain)
	require.Equal(t, clk.Now().Unix(), w.Now)
	require.Len(t, w.Slots, len(o.Slots))
	require.Equal(t, o.Slots[2].ID, w.Slots[2].ID)
	require.Equal(t, "prepared", w.Slots[2].Status)
	require.Len(t, w.Agents, 7)
	require.Equal(t, o.Agents[3].Workloads, w.Agents[3].Workloads)
	require.Len(t, w.AtRisk, 1)
	require.Equal(t, o.AtRisk[0].Subject, w.AtRisk[0].Subject)
	require.Len(t, w.Buckets, 60)
	require.Len(t, wls, 300)
	require.Zero(t, w.Base)
	byID := map[string]Workload{}
	for _, wl := range o.Workloads {
		byID[wl.SPIFFEID] = wl
	}
	for i, wl := range wls {
		require.Equal(t, wireOf(byID[wl.SPIFFEID]), wl, "workload %d", i)
	}
	// The page's order: at risk, then failing renewals, then by SPIFFE ID.
	require.Equal(t, o.Workloads[0].SPIFFEID, wls[0].SPIFFEID)
	require.NotEmpty(t, wls[1].LastError)
	require.Empty(t, wls[2].LastError)
	require.Less(t, wls[2].SPIFFEID, wls[3].SPIFFEID)

	t.Run("computed once per generation", func(t *testing.T) {
		before := s.Source.overviews.Load()
		for range 3 {
			resp, _ := get(t, c, s.URL+Prefix+"api/overview", "Authorization", "Bearer "+testToken)
			require.Equal(t, http.StatusOK, resp.StatusCode)
		}
		require.Equal(t, before, s.Source.overviews.Load())
	})

	t.Run("a delta: what changed since a snapshot", func(t *testing.T) {
		gen := s.Handler.generation()
		s.Source.update(func(o *Overview, _ *[]Bucket) {
			o.Workloads[7].Serial, o.Workloads[7].Renewals = "feedface", o.Workloads[7].Renewals+1
			added := o.Workloads[8]
			added.SPIFFEID, added.EntryID = "spiffe://example.org/ns/new/sa/added", "new-entry"
			o.Workloads = append(slices.Delete(o.Workloads, 9, 10), added)
		})
		waitFor(t, "a new generation", func() bool { return s.Handler.generation() > gen })
		_, body := get(t, c, s.URL+Prefix+"api/overview?since="+strconv.FormatUint(w.Snap, 10), "Authorization", "Bearer "+testToken)
		d, rows := decodeOverview(t, []byte(body))
		require.Equal(t, w.Snap, d.Base)
		require.Greater(t, d.Snap, w.Snap)
		now := s.Source.Overview(clk.Now())
		require.ElementsMatch(t, []wireWorkload{wireOf(now.Workloads[7]), wireOf(now.Workloads[len(now.Workloads)-1])}, rows)
		require.Equal(t, [][3]string{{o.Workloads[9].AgentID, o.Workloads[9].EntryID, o.Workloads[9].SPIFFEID}}, d.Removed)
		require.Len(t, d.Agents, 7, "everything else is whole")

		_, body = get(t, c, s.URL+Prefix+"api/overview?since=12345", "Authorization", "Bearer "+testToken)
		f, rows := decodeOverview(t, []byte(body))
		require.Zero(t, f.Base, "a snapshot not kept: the full overview")
		require.Len(t, rows, 300)
	})

	t.Run("buckets", func(t *testing.T) {
		since := clk.Now().Add(-10 * time.Minute).Unix()
		resp, body := get(t, c, s.URL+Prefix+"api/buckets?since="+strconv.FormatInt(since, 10), "Authorization", "Bearer "+testToken)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var rows [][4]int64
		require.NoError(t, json.Unmarshal([]byte(body), &rows))
		require.Len(t, rows, 11)
		require.Equal(t, b[49].Minute.Unix(), rows[0][0])
		require.Equal(t, int64(b[49].Renewals), rows[0][2])

		resp, _ = get(t, c, s.URL+Prefix+"api/buckets?since=yesterday", "Authorization", "Bearer "+testToken)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	})
}

// sse reads server-sent events into a channel: "comment" for a comment, and
// a closed channel at the end of the stream.
type sseEvent struct{ name, data string }

func openEvents(t *testing.T, c *http.Client, url string, hdr ...string) <-chan sseEvent {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	ch := make(chan sseEvent, 16)
	t.Cleanup(func() { resp.Body.Close() })
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.name != "" {
					ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				ch <- sseEvent{name: "comment", data: strings.TrimSpace(line[1:])}
			case strings.HasPrefix(line, "event: "):
				ev.name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[len("data: "):]
			}
		}
	}()
	return ch
}

// next returns the next event; the deadline only keeps a broken test from
// hanging.
func next(t *testing.T, ch <-chan sseEvent) (sseEvent, bool) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		return ev, ok
	case <-time.After(10 * time.Second):
		t.Fatal("no event in 10 s")
		return sseEvent{}, false
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestEvents(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	s := newFleetServer(t, clk, clk.Now().Add(time.Hour))
	c := s.client()
	events := openEvents(t, c, s.URL+Prefix+"api/events", "Authorization", "Bearer "+testToken)
	gen := func(ev sseEvent) uint64 {
		require.Equal(t, "changed", ev.name)
		var d struct{ Gen uint64 }
		require.NoError(t, json.Unmarshal([]byte(ev.data), &d))
		return d.Gen
	}
	ev, _ := next(t, events)
	start := gen(ev)
	require.Equal(t, s.Handler.generation(), start, "the current generation, at once")

	touch := func() {
		s.Source.update(func(o *Overview, _ *[]Bucket) { o.Workloads[3].Renewals++ })
		waitFor(t, "Run to take the change", func() bool { return s.Source.undelivered() == 0 })
	}
	touch()
	ev, _ = next(t, events)
	require.Equal(t, start+1, gen(ev), "a change, at once after a quiet spell")

	for range 5 {
		touch()
	}
	require.Equal(t, start+1, s.Handler.generation(), "changes within MinInterval of the last update wait")
	clk.Step(500 * time.Millisecond)
	ev, _ = next(t, events)
	require.Equal(t, start+2, gen(ev), "five changes, one update")

	clk.Step(10 * time.Second)
	ev, _ = next(t, events)
	require.Equal(t, start+3, gen(ev), "Refresh, without a change")

	clk.Step(5 * time.Second)
	ev, _ = next(t, events)
	require.Equal(t, sseEvent{name: "comment", data: "keep-alive"}, ev)

	t.Run("the stream ends with Run", func(t *testing.T) {
		s.StopRun()
		_, open := next(t, events)
		require.False(t, open)
	})
}

func TestEventsEndWithTheCredentials(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	s := newFleetServer(t, clk, clk.Now().Add(time.Minute))
	c := s.client()
	resp := post(t, c, s.URL+Prefix+"api/session", "Authorization", "Bearer "+testToken)
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	withCookie := []string{"Cookie", SessionCookie + "=" + resp.Cookies()[0].Value}

	for _, tc := range []struct {
		name string
		end  func()
	}{
		{"logout", func() {
			require.Equal(t, http.StatusNoContent, post(t, c, s.URL+Prefix+"api/logout", withCookie...).StatusCode)
		}},
		{"expiry", func() { clk.Step(time.Minute) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := withCookie
			if tc.name == "expiry" {
				hdr = []string{"Authorization", "Bearer " + testToken}
			}
			events := openEvents(t, c, s.URL+Prefix+"api/events", hdr...)
			ev, _ := next(t, events)
			require.Equal(t, "changed", ev.name)
			tc.end()
			if tc.name == "logout" {
				clk.Step(15 * time.Second) // the next keep-alive finds the session closed
			}
			for {
				ev, open := next(t, events)
				require.True(t, open, "an expired event before the end")
				if ev.name == "expired" {
					break
				}
			}
			_, open := next(t, events)
			require.False(t, open)
		})
	}
}

func TestAppendString(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uo\te`, "line\nfeed\r\t", "\x00\x01\x1f\b\f", "<script>&amp;",
		"naïve ☃ 🚀", "\u2028\u2029", "bad \xff\xfe utf-8", "\xe2\x82"} {
		var got, want string
		require.NoError(t, json.Unmarshal(appendString(nil, s), &got), "%q", s)
		std, err := json.Marshal(s)
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(std, &want))
		require.Equal(t, want, got, "%q", s)
		require.NotContains(t, string(appendString(nil, s)), "<", "%q", s)
	}
}

// TestVendoredUPlot: the uPlot embedded is the one package.json pins
// (scripts/dashboard/build-assets.sh copies it).
func TestVendoredUPlot(t *testing.T) {
	raw, err := os.ReadFile("web/package.json")
	require.NoError(t, err)
	var pkg struct{ Dependencies map[string]string }
	require.NoError(t, json.Unmarshal(raw, &pkg))
	want := pkg.Dependencies["uplot"]
	require.NotEmpty(t, want)
	version, err := assetFS.ReadFile("assets/vendor/uPlot.version")
	require.NoError(t, err)
	require.Equal(t, want, strings.TrimSpace(string(version)), "run scripts/dashboard/build-assets.sh")
	js, err := assetFS.ReadFile("assets/vendor/uPlot.iife.min.js")
	require.NoError(t, err)
	require.Contains(t, string(js[:80]), "(v"+want+")", "run scripts/dashboard/build-assets.sh")
}
