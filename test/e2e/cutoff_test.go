package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// cutProxy forwards TCP to a target until cut: then it closes every
// connection and refuses new ones, as a network partition would; mend
// lets connections through again.
type cutProxy struct {
	lis    net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{lis: lis, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { _ = lis.Close(); p.setCut(true) })
	go p.serve() // ends when the listener closes at cleanup
	return p
}

func (p *cutProxy) addr() string { return p.lis.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
		go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
	}
}

func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			_ = c.Close()
		}
		p.conns = map[net.Conn]struct{}{}
	}
}

// An agent cut off from the server for longer than half the SVID TTL
// shows at risk, on the dashboard's data and in the metrics, and recovers
// once it is back.
func TestAgentCutOffIsAtRisk(t *testing.T) {
	t.Parallel()
	// The agent's own SVID outlives the cut (a join-token agent whose SVID
	// expired could not attest again); the workload's 12 s SVID does not.
	s := harness.StartServer(t, "--ca-ttl", "30m", "--x509-svid-ttl", "12s", "--agent-svid-ttl", "5m")
	p := startCutProxy(t, s.BindAddr)
	a := harness.StartAgent(t, s, "", "--server-address", p.addr(), "--report-interval", "1s")
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/cutoff", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(a.Addr())))
	require.NoError(t, err)
	defer src.Close()

	atRisk := func() int {
		resp, err := http.Get("http://" + s.HealthAddr + "/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		n := 0
		for _, m := range regexp.MustCompile(`(?m)^tally_server_svids_at_risk\{reason="svid_(?:expiring|expired)"\} (\d+)`).FindAllStringSubmatch(string(raw), -1) {
			v, _ := strconv.Atoi(m[1])
			n += v
		}
		return n
	}
	d := newDashboard(t, s)
	id := "spiffe://example.org/cutoff"
	require.Eventually(t, func() bool { return atRisk() == 0 && strings.Contains(d.body(), id) }, 30*time.Second, 200*time.Millisecond,
		"the agent reports its SVID, not at risk")

	p.setCut(true) // longer than half the 12 s TTL: no renewal, no report
	require.Eventually(t, func() bool { return atRisk() > 0 }, 30*time.Second, 200*time.Millisecond, "at risk in the metrics")
	require.Contains(t, d.atRisk(), id, "and on the dashboard")

	p.setCut(false)
	require.Eventually(t, func() bool { return atRisk() == 0 && !slices.Contains(d.atRisk(), id) }, 60*time.Second, 200*time.Millisecond,
		"recovers once reconnected")

	// The history has the first issuance and the renewals, newest first.
	out, stderr, err := s.Ctl("-o", "json", "svid", "history", "--spiffe-id", id)
	require.NoError(t, err, stderr)
	var h struct {
		Issuances []struct {
			SPIFFEID string `json:"spiffe_id"`
			Renewal  bool   `json:"renewal"`
		} `json:"issuances"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &h), out)
	require.GreaterOrEqual(t, len(h.Issuances), 2, out)
	require.True(t, h.Issuances[0].Renewal, "the newest is a renewal: %s", out)
	require.False(t, h.Issuances[len(h.Issuances)-1].Renewal, "the oldest, the first issuance: %s", out)
}

// dashboard reads the dashboard's data with a token from tallyctl, as an
// operator's script would.
type dashboard struct {
	t      *testing.T
	client *http.Client
	url    string
	token  string
}

func newDashboard(t *testing.T, s *harness.Server) *dashboard {
	t.Helper()
	stdout, stderr, err := s.Ctl("-o", "json", "dashboard", "token")
	require.NoError(t, err, stderr)
	var tok struct {
		Token string `json:"token"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &tok), stdout)
	_, port, err := net.SplitHostPort(s.WebAddr)
	require.NoError(t, err)
	return &dashboard{t: t, client: webClient(t, filepath.Join(s.Dir, "data", "web", "ca.pem")),
		url: "https://localhost:" + port + "/dashboard/api/overview", token: tok.Token}
}

// body returns the overview's JSON.
func (d *dashboard) body() string {
	d.t.Helper()
	req, err := http.NewRequest(http.MethodGet, d.url, nil)
	require.NoError(d.t, err)
	req.Header.Set("Authorization", "Bearer "+d.token)
	resp, err := d.client.Do(req)
	require.NoError(d.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(d.t, err)
	require.Equal(d.t, http.StatusOK, resp.StatusCode, "%s", raw)
	return string(raw)
}

// atRisk returns the subjects of the at-risk list.
func (d *dashboard) atRisk() []string {
	d.t.Helper()
	var ov struct {
		AtRisk []struct {
			Subject string `json:"subject"`
		} `json:"atRisk"`
	}
	require.NoError(d.t, json.Unmarshal([]byte(d.body()), &ov))
	var out []string
	for _, r := range ov.AtRisk {
		out = append(out, r.Subject)
	}
	return out
}

// tallyctl dashboard token refuses a lifetime the server cannot give, and
// a malformed one, with the reason; nothing is signed.
func TestDashboardTokenRefusesBadTTL(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t, "--ca-ttl", "30m") // tokens live at most 5m
	for ttl, want := range map[string]string{
		"1h":   "exceeds the longest a token may live on this server, 5m0s (ca_ttl/6)",
		"-1s":  "must not be negative",
		"1.5s": "whole number of seconds",
	} {
		stdout, stderr, err := s.Ctl("dashboard", "token", "--ttl", ttl)
		require.Error(t, err, ttl)
		require.Contains(t, stderr, want, ttl)
		require.Empty(t, stdout, ttl)
	}
	stdout, stderr, err := s.Ctl("-o", "json", "dashboard", "token")
	require.NoError(t, err, stderr)
	require.Contains(t, stdout, `"login_url": "https://127.0.0.1:`, "the default (min(1h, ca_ttl/6)) works")
}
