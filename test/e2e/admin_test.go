package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// The Admin API tests run against a server of trust domain example.org.
const (
	admParent = "spiffe://example.org/agent/node1"
	// admMaxTTL is ca_ttl/6 for the default ca_ttl of 24h.
	admMaxTTL = int64(4 * time.Hour / time.Second)
	// admOverflow is a number of seconds that, multiplied by time.Second,
	// wraps around int64 to exactly 0: admOverflow+n seconds read as
	// time.Duration(s)*time.Second look like n seconds.
	admOverflow = int64(1) << 55
)

// admEntry is a valid entry for spiffeID under admParent with selectors
// written "type:value".
func admEntry(spiffeID string, selectors ...string) *tallyv1.Entry {
	if len(selectors) == 0 {
		selectors = []string{"unix:uid:1000"}
	}
	e := &tallyv1.Entry{SpiffeId: spiffeID, ParentId: admParent}
	for _, s := range selectors {
		typ, value, _ := strings.Cut(s, ":")
		e.Selectors = append(e.Selectors, &tallyv1.Selector{Type: typ, Value: value})
	}
	return e
}

// admIDOfLen returns a SPIFFE ID of example.org exactly n (> 21) bytes long,
// its path made of segments of at most 60 bytes.
func admIDOfLen(n int) string {
	var b strings.Builder
	b.WriteString("spiffe://example.org")
	rest := n - b.Len()
	for rest > 62 {
		b.WriteString("/" + strings.Repeat("s", 60))
		rest -= 61
	}
	b.WriteString("/" + strings.Repeat("s", rest-1))
	return b.String()
}

// admRequireStatus requires err to be a gRPC status with code whose message
// contains each of parts.
func admRequireStatus(t *testing.T, err error, code codes.Code, parts ...string) {
	t.Helper()
	require.Error(t, err, "want %s", code)
	st, ok := status.FromError(err)
	require.True(t, ok, "not a gRPC status: %v", err)
	require.Equal(t, code, st.Code(), "message: %s", st.Message())
	for _, p := range parts {
		require.Contains(t, st.Message(), p)
	}
}

// admListAll pages through ListEntries with page size 1000.
func admListAll(t *testing.T, c tallyv1.AdminClient) []*tallyv1.Entry {
	t.Helper()
	var out []*tallyv1.Entry
	req := &tallyv1.ListEntriesRequest{PageSize: 1000}
	for {
		resp, err := c.ListEntries(context.Background(), req)
		require.NoError(t, err)
		out = append(out, resp.GetEntries()...)
		if resp.GetNextPageToken() == "" {
			return out
		}
		require.NotEqual(t, req.GetPageToken(), resp.GetNextPageToken(), "page token repeated")
		req.PageToken = resp.GetNextPageToken()
	}
}

// admMark is what a refused call must leave as it was: the number of entries
// and the newest store revision.
type admMark struct {
	entries  int
	revision uint64
}

var admProbes atomic.Int64

// admMarkStore counts the entries, then creates a fresh probe entry and
// returns the count (probe included) and the probe's revision, which is the
// store's newest.
func admMarkStore(t *testing.T, c tallyv1.AdminClient) admMark {
	t.Helper()
	n := len(admListAll(t, c))
	id := fmt.Sprintf("spiffe://example.org/probe/%d", admProbes.Add(1))
	resp, err := c.BatchCreateEntries(context.Background(), &tallyv1.BatchCreateEntriesRequest{
		Entries: []*tallyv1.Entry{admEntry(id, "unix:uid:4242")},
	})
	require.NoError(t, err)
	require.Len(t, resp.GetEntries(), 1)
	return admMark{entries: n + 1, revision: resp.GetEntries()[0].GetRevision()}
}

// admRequireUnchanged requires that nothing was written since before: a new
// probe is the only new entry and takes the very next revision.
func admRequireUnchanged(t *testing.T, c tallyv1.AdminClient, before admMark) {
	t.Helper()
	after := admMarkStore(t, c)
	require.Equal(t, before.entries+1, after.entries, "the entry count changed")
	require.Equal(t, before.revision+1, after.revision, "the store revision moved")
}

func TestAdminRejectsBadEntries(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	admin := srv.Admin(t)
	ctx := context.Background()

	sel := func(typ, value string) *tallyv1.Selector { return &tallyv1.Selector{Type: typ, Value: value} }
	withID := func(id string) func(*tallyv1.Entry) { return func(e *tallyv1.Entry) { e.SpiffeId = id } }
	withParent := func(id string) func(*tallyv1.Entry) { return func(e *tallyv1.Entry) { e.ParentId = id } }
	withSelectors := func(s ...*tallyv1.Selector) func(*tallyv1.Entry) {
		return func(e *tallyv1.Entry) { e.Selectors = s }
	}
	withDNS := func(names ...string) func(*tallyv1.Entry) { return func(e *tallyv1.Entry) { e.DnsNames = names } }
	manySelectors := make([]*tallyv1.Selector, 65)
	for i := range manySelectors {
		manySelectors[i] = sel("unix", fmt.Sprintf("uid:%d", i))
	}
	manyDNS := make([]string, 65)
	for i := range manyDNS {
		manyDNS[i] = fmt.Sprintf("n%d.example.org", i)
	}

	cases := []struct {
		name   string
		mutate func(*tallyv1.Entry)
		// parts must all appear in the status message.
		parts []string
	}{
		// SPIFFE IDs.
		{"spiffe_id missing", withID(""), []string{"spiffe_id"}},
		{"spiffe_id without scheme", withID("example.org/web"), []string{"spiffe_id"}},
		{"spiffe_id with https scheme", withID("https://example.org/web"), []string{"spiffe_id"}},
		{"spiffe_id with uppercase trust domain", withID("spiffe://Example.org/web"), []string{"spiffe_id"}},
		{"spiffe_id with percent-encoding", withID("spiffe://example.org/w%41b"), []string{"spiffe_id"}},
		{"spiffe_id with .. segment", withID("spiffe://example.org/a/../b"), []string{"spiffe_id"}},
		{"spiffe_id with . segment", withID("spiffe://example.org/a/./b"), []string{"spiffe_id"}},
		{"spiffe_id with empty segment", withID("spiffe://example.org/a//b"), []string{"spiffe_id"}},
		{"spiffe_id with trailing slash", withID("spiffe://example.org/web/"), []string{"spiffe_id"}},
		{"spiffe_id with root path only", withID("spiffe://example.org/"), []string{"spiffe_id"}},
		{"spiffe_id with empty path", withID("spiffe://example.org"), []string{"spiffe_id", "path"}},
		{"spiffe_id with query", withID("spiffe://example.org/web?x=1"), []string{"spiffe_id"}},
		{"spiffe_id with fragment", withID("spiffe://example.org/web#x"), []string{"spiffe_id"}},
		{"spiffe_id with port", withID("spiffe://example.org:8443/web"), []string{"spiffe_id"}},
		{"spiffe_id with userinfo", withID("spiffe://user@example.org/web"), []string{"spiffe_id"}},
		{"spiffe_id with space", withID("spiffe://example.org/we b"), []string{"spiffe_id"}},
		{"spiffe_id in another trust domain", withID("spiffe://example.com/web"), []string{"spiffe_id", "trust domain"}},
		{"spiffe_id under reserved /tally/", withID("spiffe://example.org/tally/agent/x"), []string{"spiffe_id", "reserved"}},
		{"spiffe_id of 2049 bytes", withID(admIDOfLen(2049)), []string{"spiffe_id", "2048"}},
		{"parent_id missing", withParent(""), []string{"parent_id"}},
		{"parent_id malformed", withParent("spiffe://example.org/a/../b"), []string{"parent_id"}},
		{"parent_id in another trust domain", withParent("spiffe://example.com/agent"), []string{"parent_id", "trust domain"}},
		{"parent_id of 2049 bytes", withParent(admIDOfLen(2049)), []string{"parent_id", "2048"}},

		// Selectors.
		{"no selectors", withSelectors(), []string{"selectors"}},
		{"selector value without colon", withSelectors(sel("unix", "uid1000")), []string{"selector", "unix:uid1000"}},
		{"selector without value", withSelectors(sel("unix", "")), []string{"selector"}},
		{"selector without type", withSelectors(sel("", "uid:0")), []string{"selector"}},
		{"selector of unknown type", withSelectors(sel("docker", "label:a")), []string{"selector", "docker"}},
		{"selector with unknown key", withSelectors(sel("unix", "foo:1")), []string{"selector", "unix:foo:1"}},
		{"selector with empty value", withSelectors(sel("unix", "uid:")), []string{"selector", "unix:uid:"}},
		{"selector with non-numeric uid", withSelectors(sel("unix", "uid:root")), []string{"selector", "unix:uid:root"}},
		{"selector with negative uid", withSelectors(sel("unix", "uid:-1")), []string{"selector", "unix:uid:-1"}},
		{"selector with non-numeric gid", withSelectors(sel("unix", "gid:wheel")), []string{"selector", "unix:gid:wheel"}},
		{"selector with relative path", withSelectors(sel("unix", "path:bin/sh")), []string{"selector", "unix:path:bin/sh"}},
		{"selector with padded value", withSelectors(sel("unix", "user: root")), []string{"selector"}},
		{"selector missing a part", withSelectors(sel("k8s", "pod-label:app")), []string{"selector", "k8s:pod-label:app"}},
		{"duplicate selector", withSelectors(sel("unix", "uid:0"), sel("unix", "gid:0"), sel("unix", "uid:0")),
			[]string{"selector", "unix:uid:0"}},
		{"65 selectors", withSelectors(manySelectors...), []string{"selectors"}},

		// TTLs (the API counts whole seconds, so sub-second TTLs cannot be
		// expressed here; tallyctl refuses them, see TestCtlEntryErrors).
		{"x509 ttl negative", func(e *tallyv1.Entry) { e.X509TtlSeconds = -1 }, []string{"x509_ttl"}},
		{"x509 ttl 1000h", func(e *tallyv1.Entry) { e.X509TtlSeconds = 1000 * 3600 }, []string{"x509_ttl"}},
		{"x509 ttl ca_ttl/6 + 1s", func(e *tallyv1.Entry) { e.X509TtlSeconds = admMaxTTL + 1 }, []string{"x509_ttl"}},
		{"x509 ttl overflowing a duration", func(e *tallyv1.Entry) { e.X509TtlSeconds = admOverflow + 3600 }, []string{"x509_ttl"}},
		{"jwt ttl negative", func(e *tallyv1.Entry) { e.JwtTtlSeconds = -1 }, []string{"jwt_ttl"}},
		{"jwt ttl 1000h", func(e *tallyv1.Entry) { e.JwtTtlSeconds = 1000 * 3600 }, []string{"jwt_ttl"}},
		{"jwt ttl ca_ttl/6 + 1s", func(e *tallyv1.Entry) { e.JwtTtlSeconds = admMaxTTL + 1 }, []string{"jwt_ttl"}},
		{"jwt ttl overflowing a duration", func(e *tallyv1.Entry) { e.JwtTtlSeconds = admOverflow + 60 }, []string{"jwt_ttl"}},

		// DNS names.
		{"dns name empty", withDNS(""), []string{"dns_names"}},
		{"dns name with leading hyphen", withDNS("-web.example.org"), []string{"dns_names", "-web.example.org"}},
		{"dns name with trailing hyphen", withDNS("web-.example.org"), []string{"dns_names"}},
		{"dns name with underscore", withDNS("web_1.example.org"), []string{"dns_names"}},
		{"dns name with empty label", withDNS("web..example.org"), []string{"dns_names"}},
		{"dns name with trailing dot", withDNS("web.example.org."), []string{"dns_names"}},
		{"dns name with space", withDNS("we b.example.org"), []string{"dns_names"}},
		{"dns name with inner wildcard", withDNS("web.*.example.org"), []string{"dns_names"}},
		{"dns name with partial wildcard", withDNS("w*.example.org"), []string{"dns_names"}},
		{"dns label of 64 bytes", withDNS(strings.Repeat("a", 64) + ".example.org"), []string{"dns_names"}},
		{"dns name of 254 bytes", withDNS(strings.Repeat(strings.Repeat("a", 49)+".", 5) + "abcd"), []string{"dns_names"}},
		{"65 dns names", withDNS(manyDNS...), []string{"dns_names"}},

		// Hint.
		{"hint of 1025 bytes", func(e *tallyv1.Entry) { e.Hint = strings.Repeat("h", 1025) }, []string{"hint"}},

		// Output-only fields.
		{"id set", func(e *tallyv1.Entry) { e.Id = "4f1c0000-0000-4000-8000-000000000000" }, []string{"id"}},
		{"revision set", func(e *tallyv1.Entry) { e.Revision = 7 }, []string{"revision"}},
		{"created_at set", func(e *tallyv1.Entry) { e.CreatedAt = 1 }, []string{"created_at"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := admEntry(fmt.Sprintf("spiffe://example.org/bad/%d", i))
			tc.mutate(e)
			before := admMarkStore(t, admin)
			resp, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{e}})
			if err == nil {
				t.Logf("accepted and stored as %v", resp.GetEntries())
			}
			admRequireStatus(t, err, codes.InvalidArgument, tc.parts...)
			admRequireUnchanged(t, admin, before)
		})
	}

	created, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{
		Entries: []*tallyv1.Entry{admEntry("spiffe://example.org/update/target")},
	})
	require.NoError(t, err)
	target := created.GetEntries()[0].GetId()
	for i, tc := range cases {
		if tc.name == "id set" || tc.name == "revision set" || tc.name == "created_at set" {
			continue // UpdateEntry takes the id, and ignores output-only fields
		}
		t.Run("update/"+tc.name, func(t *testing.T) {
			orig, err := admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: target})
			require.NoError(t, err)
			e := admEntry(fmt.Sprintf("spiffe://example.org/update/%d", i))
			tc.mutate(e)
			e.Id = target
			before := admMarkStore(t, admin)
			_, err = admin.UpdateEntry(ctx, &tallyv1.UpdateEntryRequest{Entry: e})
			admRequireStatus(t, err, codes.InvalidArgument, tc.parts...)
			admRequireUnchanged(t, admin, before)
			got, err := admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: target})
			require.NoError(t, err)
			require.Equal(t, orig.GetRevision(), got.GetRevision(), "the entry changed")
		})
	}
}

func TestAdminAcceptsEdgeEntries(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	admin := srv.Admin(t)
	ctx := context.Background()

	id2048 := admIDOfLen(2048)
	require.Len(t, id2048, 2048)
	cases := []struct {
		name   string
		entry  *tallyv1.Entry
		verify func(t *testing.T, got *tallyv1.Entry)
	}{
		{"spiffe_id of 2048 bytes", admEntry(id2048), func(t *testing.T, got *tallyv1.Entry) {
			require.Equal(t, id2048, got.GetSpiffeId())
		}},
		{"ttls zero mean the default", func() *tallyv1.Entry {
			e := admEntry("spiffe://example.org/ttl/zero")
			e.X509TtlSeconds, e.JwtTtlSeconds = 0, 0
			return e
		}(), func(t *testing.T, got *tallyv1.Entry) {
			require.Zero(t, got.GetX509TtlSeconds())
			require.Zero(t, got.GetJwtTtlSeconds())
		}},
		{"ttls of exactly ca_ttl/6", func() *tallyv1.Entry {
			e := admEntry("spiffe://example.org/ttl/max")
			e.X509TtlSeconds, e.JwtTtlSeconds = admMaxTTL, admMaxTTL
			return e
		}(), func(t *testing.T, got *tallyv1.Entry) {
			require.Equal(t, admMaxTTL, got.GetX509TtlSeconds())
			require.Equal(t, admMaxTTL, got.GetJwtTtlSeconds())
		}},
		{"ttls of one second", func() *tallyv1.Entry {
			e := admEntry("spiffe://example.org/ttl/min")
			e.X509TtlSeconds, e.JwtTtlSeconds = 1, 1
			return e
		}(), func(t *testing.T, got *tallyv1.Entry) {
			require.Equal(t, int64(1), got.GetX509TtlSeconds())
			require.Equal(t, int64(1), got.GetJwtTtlSeconds())
		}},
		{"hint of 1024 bytes", func() *tallyv1.Entry {
			e := admEntry("spiffe://example.org/hint/max")
			e.Hint = strings.Repeat("h", 1024)
			return e
		}(), func(t *testing.T, got *tallyv1.Entry) { require.Len(t, got.GetHint(), 1024) }},
		{"dns names: wildcard, mixed case lowercased", func() *tallyv1.Entry {
			e := admEntry("spiffe://example.org/dns/ok")
			e.DnsNames = []string{"*.example.org", "Web.Example.ORG", strings.Repeat("a", 63) + ".example.org"}
			return e
		}(), func(t *testing.T, got *tallyv1.Entry) {
			require.Equal(t, []string{"*.example.org", "web.example.org", strings.Repeat("a", 63) + ".example.org"}, got.GetDnsNames())
		}},
		{"selectors of every kind, sorted", admEntry("spiffe://example.org/sel/ok",
			"unix:uid:0", "k8s:pod-label:app:web", "unix:path:/usr/bin/x", "k8s:ns:default", "unix:user:root"),
			func(t *testing.T, got *tallyv1.Entry) {
				var s []string
				for _, x := range got.GetSelectors() {
					s = append(s, x.GetType()+":"+x.GetValue())
				}
				require.Equal(t, []string{"k8s:ns:default", "k8s:pod-label:app:web", "unix:path:/usr/bin/x", "unix:uid:0", "unix:user:root"}, s)
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{tc.entry}})
			require.NoError(t, err)
			require.Len(t, resp.GetEntries(), 1)
			created := resp.GetEntries()[0]
			require.NotEmpty(t, created.GetId())
			require.NotZero(t, created.GetRevision())
			tc.verify(t, created)
			got, err := admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: created.GetId()})
			require.NoError(t, err)
			tc.verify(t, got)
		})
	}

	t.Run("X509-SVID for a 2048-byte ID", func(t *testing.T) {
		key := harness.NewKey(t)
		resp, err := admin.MintX509SVID(ctx, &tallyv1.MintX509SVIDRequest{
			SpiffeId: id2048, Csr: harness.CSR(t, key, []string{id2048}, nil),
		})
		require.NoError(t, err)
		svid, err := x509svid.ParseRaw(slices.Concat(resp.GetCertChain()...), admPKCS8(t, key))
		require.NoError(t, err)
		id, _, err := x509svid.Verify(svid.Certificates, srv.Bundle(t))
		require.NoError(t, err)
		require.Equal(t, id2048, id.String())
	})
}

func TestAdminDuplicatesAndBatches(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	admin := srv.Admin(t)
	ctx := context.Background()

	existing, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{
		admEntry("spiffe://example.org/dup/a", "unix:uid:1", "unix:gid:1"),
		admEntry("spiffe://example.org/dup/b", "unix:uid:2"),
		admEntry("spiffe://example.org/dup/c", "unix:uid:3"),
	}})
	require.NoError(t, err)
	a, b, c := existing.GetEntries()[0], existing.GetEntries()[1], existing.GetEntries()[2]

	batch50 := func(prefix string) []*tallyv1.Entry {
		out := make([]*tallyv1.Entry, 50)
		for i := range out {
			out[i] = admEntry(fmt.Sprintf("spiffe://example.org/%s/%d", prefix, i))
		}
		return out
	}

	create := []struct {
		name    string
		entries []*tallyv1.Entry
		code    codes.Code
		parts   []string
	}{
		{"exact duplicate of a stored entry", []*tallyv1.Entry{admEntry("spiffe://example.org/dup/a", "unix:uid:1", "unix:gid:1")},
			codes.AlreadyExists, nil},
		{"duplicate with selectors reordered", []*tallyv1.Entry{admEntry("spiffe://example.org/dup/a", "unix:gid:1", "unix:uid:1")},
			codes.AlreadyExists, nil},
		{"duplicate inside one batch", []*tallyv1.Entry{
			admEntry("spiffe://example.org/dup/new", "unix:uid:9"),
			admEntry("spiffe://example.org/dup/other", "unix:uid:9"),
			admEntry("spiffe://example.org/dup/new", "unix:uid:9"),
		}, codes.AlreadyExists, nil},
		{"batch of 50 with one bad selector", func() []*tallyv1.Entry {
			es := batch50("batch-bad")
			es[37].Selectors[0].Value = "uid:x"
			return es
		}(), codes.InvalidArgument, []string{"entry 37", "unix:uid:x"}},
		{"batch of 50 with one bad id", func() []*tallyv1.Entry {
			es := batch50("batch-bad-id")
			es[49].SpiffeId = "spiffe://example.org/x/../y"
			return es
		}(), codes.InvalidArgument, []string{"entry 49", "spiffe_id"}},
		{"batch of 50 whose last duplicates a stored entry", func() []*tallyv1.Entry {
			es := batch50("batch-dup")
			es[49] = admEntry("spiffe://example.org/dup/b", "unix:uid:2")
			return es
		}(), codes.AlreadyExists, nil},
		{"empty batch", nil, codes.InvalidArgument, nil},
	}
	for _, tc := range create {
		t.Run("create/"+tc.name, func(t *testing.T) {
			before := admMarkStore(t, admin)
			_, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: tc.entries})
			admRequireStatus(t, err, tc.code, tc.parts...)
			admRequireUnchanged(t, admin, before)
		})
	}

	t.Run("create/batch of 50 valid entries", func(t *testing.T) {
		before := admMarkStore(t, admin)
		resp, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: batch50("batch-ok")})
		require.NoError(t, err)
		require.Len(t, resp.GetEntries(), 50)
		require.Len(t, admListAll(t, admin), before.entries+50)
	})

	update := []struct {
		name  string
		entry *tallyv1.Entry
		code  codes.Code
		parts []string
	}{
		{"missing id", func() *tallyv1.Entry {
			e := admEntry("spiffe://example.org/dup/missing")
			e.Id = "00000000-0000-4000-8000-000000000000"
			return e
		}(), codes.NotFound, nil},
		{"no id", admEntry("spiffe://example.org/dup/noid"), codes.InvalidArgument, []string{"id"}},
		{"no entry", nil, codes.InvalidArgument, nil},
		{"into a duplicate of another entry", func() *tallyv1.Entry {
			e := admEntry("spiffe://example.org/dup/b", "unix:uid:2")
			e.Id = c.GetId()
			return e
		}(), codes.AlreadyExists, nil},
	}
	for _, tc := range update {
		t.Run("update/"+tc.name, func(t *testing.T) {
			before := admMarkStore(t, admin)
			_, err := admin.UpdateEntry(ctx, &tallyv1.UpdateEntryRequest{Entry: tc.entry})
			admRequireStatus(t, err, tc.code, tc.parts...)
			admRequireUnchanged(t, admin, before)
			got, err := admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: c.GetId()})
			require.NoError(t, err)
			require.Equal(t, c.GetRevision(), got.GetRevision())
		})
	}

	del := []struct {
		name string
		ids  []string
		code codes.Code
	}{
		{"one id missing", []string{a.GetId(), "00000000-0000-4000-8000-000000000000", b.GetId()}, codes.NotFound},
		{"missing id first", []string{"00000000-0000-4000-8000-000000000000", a.GetId()}, codes.NotFound},
		{"no ids", nil, codes.InvalidArgument},
	}
	for _, tc := range del {
		t.Run("delete/"+tc.name, func(t *testing.T) {
			before := admMarkStore(t, admin)
			_, err := admin.BatchDeleteEntries(ctx, &tallyv1.BatchDeleteEntriesRequest{Ids: tc.ids})
			admRequireStatus(t, err, tc.code)
			admRequireUnchanged(t, admin, before)
			for _, e := range []*tallyv1.Entry{a, b} {
				_, err := admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: e.GetId()})
				require.NoError(t, err, "entry %s was deleted", e.GetSpiffeId())
			}
		})
	}

	t.Run("delete/the same id twice in one batch", func(t *testing.T) {
		resp, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{
			Entries: []*tallyv1.Entry{admEntry("spiffe://example.org/dup/twice", "unix:uid:77")},
		})
		require.NoError(t, err)
		id := resp.GetEntries()[0].GetId()
		_, err = admin.BatchDeleteEntries(ctx, &tallyv1.BatchDeleteEntriesRequest{Ids: []string{id, id}})
		if err == nil {
			_, err = admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: id})
			admRequireStatus(t, err, codes.NotFound)
			return
		}
		admRequireStatus(t, err, codes.InvalidArgument)
		_, err = admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: id})
		require.NoError(t, err)
	})

	t.Run("get missing id", func(t *testing.T) {
		_, err := admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: "00000000-0000-4000-8000-000000000000"})
		admRequireStatus(t, err, codes.NotFound)
	})

	list := []struct {
		name  string
		req   *tallyv1.ListEntriesRequest
		parts []string
	}{
		{"bad selector filter", &tallyv1.ListEntriesRequest{BySelectors: []*tallyv1.Selector{{Type: "unix", Value: "foo:1"}}},
			[]string{"selector", "unix:foo:1"}},
		{"negative page size", &tallyv1.ListEntriesRequest{PageSize: -1}, []string{"page_size"}},
	}
	for _, tc := range list {
		t.Run("list/"+tc.name, func(t *testing.T) {
			_, err := admin.ListEntries(ctx, tc.req)
			admRequireStatus(t, err, codes.InvalidArgument, tc.parts...)
		})
	}
}

func TestAdminRejectsBadJoinTokens(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	admin := srv.Admin(t)
	ctx := context.Background()

	cases := []struct {
		name  string
		req   *tallyv1.CreateJoinTokenRequest
		parts []string
	}{
		{"negative ttl", &tallyv1.CreateJoinTokenRequest{TtlSeconds: -1}, []string{"ttl"}},
		{"ttl above 24h", &tallyv1.CreateJoinTokenRequest{TtlSeconds: 24*3600 + 1}, []string{"ttl"}},
		{"ttl overflowing a duration", &tallyv1.CreateJoinTokenRequest{TtlSeconds: admOverflow + 60}, []string{"ttl"}},
		{"alias in another trust domain", &tallyv1.CreateJoinTokenRequest{SpiffeId: "spiffe://example.com/node"},
			[]string{"spiffe_id", "trust domain"}},
		{"alias under reserved /tally/", &tallyv1.CreateJoinTokenRequest{SpiffeId: "spiffe://example.org/tally/agent/x"},
			[]string{"spiffe_id", "reserved"}},
		{"alias without path", &tallyv1.CreateJoinTokenRequest{SpiffeId: "spiffe://example.org"}, []string{"spiffe_id"}},
		{"alias malformed", &tallyv1.CreateJoinTokenRequest{SpiffeId: "spiffe://example.org/a/../b"}, []string{"spiffe_id"}},
		{"alias without scheme", &tallyv1.CreateJoinTokenRequest{SpiffeId: "example.org/node"}, []string{"spiffe_id"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := admin.CreateJoinToken(ctx, tc.req)
			if err == nil {
				t.Logf("accepted: token expires at %s", time.Unix(resp.GetExpiresAt(), 0).UTC())
			}
			admRequireStatus(t, err, codes.InvalidArgument, tc.parts...)
			require.Nil(t, resp)
		})
	}

	ok := []struct {
		name string
		ttl  int64
		want time.Duration
	}{
		{"ttl 0 is the 10m default", 0, 10 * time.Minute},
		{"ttl of exactly 24h", 24 * 3600, 24 * time.Hour},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now()
			resp, err := admin.CreateJoinToken(ctx, &tallyv1.CreateJoinTokenRequest{TtlSeconds: tc.ttl, SpiffeId: "spiffe://example.org/node/a"})
			require.NoError(t, err)
			require.NotEmpty(t, resp.GetToken())
			require.Equal(t, "spiffe://example.org/node/a", resp.GetSpiffeId())
			exp := time.Unix(resp.GetExpiresAt(), 0)
			require.False(t, exp.Before(before.Add(tc.want).Add(-2*time.Second)), "expires %s, too early", exp)
			require.False(t, exp.After(time.Now().Add(tc.want)), "expires %s, too late", exp)
		})
	}
}

func TestAdminRejectsBadMints(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	admin := srv.Admin(t)
	ctx := context.Background()
	key := harness.NewKey(t)
	const id = "spiffe://example.org/mint/web"
	csr := harness.CSR(t, key, []string{id}, nil)

	x509Cases := []struct {
		name  string
		req   *tallyv1.MintX509SVIDRequest
		parts []string
	}{
		{"id in another trust domain", &tallyv1.MintX509SVIDRequest{SpiffeId: "spiffe://example.com/web",
			Csr: harness.CSR(t, key, []string{"spiffe://example.com/web"}, nil)}, []string{"spiffe_id"}},
		{"id under reserved /tally/", &tallyv1.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/tally/server",
			Csr: harness.CSR(t, key, []string{"spiffe://example.org/tally/server"}, nil)}, []string{"spiffe_id"}},
		{"id without path", &tallyv1.MintX509SVIDRequest{SpiffeId: "spiffe://example.org",
			Csr: harness.CSR(t, key, []string{"spiffe://example.org"}, nil)}, []string{"spiffe_id"}},
		{"negative ttl", &tallyv1.MintX509SVIDRequest{SpiffeId: id, Csr: csr, TtlSeconds: -1}, []string{"ttl"}},
		{"ttl above ca_ttl/6", &tallyv1.MintX509SVIDRequest{SpiffeId: id, Csr: csr, TtlSeconds: admMaxTTL + 1}, []string{"ttl"}},
		{"ttl overflowing a duration", &tallyv1.MintX509SVIDRequest{SpiffeId: id, Csr: csr, TtlSeconds: admOverflow + 60}, []string{"ttl"}},
		{"no csr", &tallyv1.MintX509SVIDRequest{SpiffeId: id}, []string{"csr"}},
		{"csr for another id", &tallyv1.MintX509SVIDRequest{SpiffeId: id,
			Csr: harness.CSR(t, key, []string{"spiffe://example.org/mint/other"}, nil)}, []string{"uri san"}},
		{"csr with an undeclared dns name", &tallyv1.MintX509SVIDRequest{SpiffeId: id,
			Csr: harness.CSR(t, key, []string{id}, []string{"evil.example.org"})}, nil},
	}
	for _, tc := range x509Cases {
		t.Run("x509/"+tc.name, func(t *testing.T) {
			resp, err := admin.MintX509SVID(ctx, tc.req)
			if err == nil {
				c, perr := x509.ParseCertificate(resp.GetCertChain()[0])
				require.NoError(t, perr)
				t.Logf("accepted: SVID valid %s to %s", c.NotBefore.UTC(), c.NotAfter.UTC())
			}
			admRequireStatus(t, err, codes.InvalidArgument, tc.parts...)
			require.Nil(t, resp)
		})
	}

	jwtCases := []struct {
		name  string
		req   *tallyv1.MintJWTSVIDRequest
		parts []string
	}{
		{"id in another trust domain", &tallyv1.MintJWTSVIDRequest{SpiffeId: "spiffe://example.com/web", Audience: []string{"a"}}, []string{"spiffe_id"}},
		{"malformed id", &tallyv1.MintJWTSVIDRequest{SpiffeId: "spiffe://example.org/web/", Audience: []string{"a"}}, []string{"spiffe_id"}},
		{"no audience", &tallyv1.MintJWTSVIDRequest{SpiffeId: id}, []string{"audience"}},
		{"empty audience", &tallyv1.MintJWTSVIDRequest{SpiffeId: id, Audience: []string{""}}, []string{"audience"}},
		{"negative ttl", &tallyv1.MintJWTSVIDRequest{SpiffeId: id, Audience: []string{"a"}, TtlSeconds: -1}, []string{"ttl"}},
		{"ttl above ca_ttl/6", &tallyv1.MintJWTSVIDRequest{SpiffeId: id, Audience: []string{"a"}, TtlSeconds: admMaxTTL + 1}, []string{"ttl"}},
		{"ttl overflowing a duration", &tallyv1.MintJWTSVIDRequest{SpiffeId: id, Audience: []string{"a"}, TtlSeconds: admOverflow + 60}, []string{"ttl"}},
	}
	for _, tc := range jwtCases {
		t.Run("jwt/"+tc.name, func(t *testing.T) {
			resp, err := admin.MintJWTSVID(ctx, tc.req)
			if err == nil {
				t.Logf("accepted: JWT-SVID expires at %s", time.Unix(resp.GetExpiresAt(), 0).UTC())
			}
			admRequireStatus(t, err, codes.InvalidArgument, tc.parts...)
			require.Nil(t, resp)
		})
	}
}

// admMintCert mints an X509-SVID for id through srv's Admin API and returns
// it as a TLS client certificate.
func admMintCert(t *testing.T, srv *harness.Server, id string) *tls.Certificate {
	t.Helper()
	key := harness.NewKey(t)
	resp, err := srv.Admin(t).MintX509SVID(context.Background(), &tallyv1.MintX509SVIDRequest{
		SpiffeId: id, Csr: harness.CSR(t, key, []string{id}, nil),
	})
	require.NoError(t, err)
	svid, err := x509svid.ParseRaw(slices.Concat(resp.GetCertChain()...), admPKCS8(t, key))
	require.NoError(t, err)
	return harness.TLSCert(svid)
}

func TestAdminAuthorization(t *testing.T) {
	t.Parallel()
	const (
		flagAdmin  = "spiffe://example.org/ops/flag-admin"
		entryAdmin = "spiffe://example.org/ops/entry-admin"
		plain      = "spiffe://example.org/ops/plain"
	)
	srv := harness.NewServer(t, "--admin-id", flagAdmin)
	srv.Start(t)
	other := harness.StartServer(t) // a second CA of the same trust domain name
	bundle := srv.Bundle(t)
	admin := srv.Admin(t)
	ctx := context.Background()

	overTLS := func(t *testing.T, cert *tls.Certificate) error {
		_, err := tallyv1.NewAdminClient(srv.Dial(t, bundle, cert)).ListEntries(ctx, &tallyv1.ListEntriesRequest{})
		return err
	}
	agent, err := srv.AttestJoinToken(t, srv.NewToken(t, ""))
	require.NoError(t, err)

	refused := []struct {
		name  string
		cert  *tls.Certificate
		code  codes.Code
		parts []string
	}{
		{"no client certificate", nil, codes.Unauthenticated, nil},
		{"non-admin workload", admMintCert(t, srv, plain), codes.PermissionDenied, []string{plain}},
		{"agent", harness.TLSCert(agent.SVID), codes.PermissionDenied, []string{agent.ID.String()}},
		{"admin id signed by another CA", admMintCert(t, other, flagAdmin), codes.Unauthenticated, nil},
		{"entry admin before its entry exists", admMintCert(t, srv, entryAdmin), codes.PermissionDenied, []string{entryAdmin}},
	}
	for _, tc := range refused {
		t.Run("refused/"+tc.name, func(t *testing.T) {
			admRequireStatus(t, overTLS(t, tc.cert), tc.code, tc.parts...)
			// Writes are refused as well, and leave nothing behind.
			before := admMarkStore(t, admin)
			_, err := tallyv1.NewAdminClient(srv.Dial(t, bundle, tc.cert)).BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{
				Entries: []*tallyv1.Entry{admEntry("spiffe://example.org/ops/sneaky")},
			})
			admRequireStatus(t, err, tc.code)
			admRequireUnchanged(t, admin, before)
		})
	}

	t.Run("--admin-id", func(t *testing.T) {
		cert := admMintCert(t, srv, flagAdmin)
		require.NoError(t, overTLS(t, cert))
		c := tallyv1.NewAdminClient(srv.Dial(t, bundle, cert))
		resp, err := c.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{
			Entries: []*tallyv1.Entry{admEntry("spiffe://example.org/ops/by-flag-admin")},
		})
		require.NoError(t, err)
		_, err = admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: resp.GetEntries()[0].GetId()})
		require.NoError(t, err)
	})

	t.Run("entry with admin false grants nothing", func(t *testing.T) {
		_, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{
			Entries: []*tallyv1.Entry{admEntry(plain, "unix:uid:5")},
		})
		require.NoError(t, err)
		admRequireStatus(t, overTLS(t, admMintCert(t, srv, plain)), codes.PermissionDenied, plain)
	})

	t.Run("entry with admin true", func(t *testing.T) {
		cert := admMintCert(t, srv, entryAdmin)
		e := admEntry(entryAdmin, "unix:uid:6")
		e.Admin = true
		resp, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{e}})
		require.NoError(t, err)
		require.True(t, resp.GetEntries()[0].GetAdmin())
		require.NoError(t, overTLS(t, cert))

		// Deleting the entry takes the right away again.
		_, err = admin.BatchDeleteEntries(ctx, &tallyv1.BatchDeleteEntriesRequest{Ids: []string{resp.GetEntries()[0].GetId()}})
		require.NoError(t, err)
		admRequireStatus(t, overTLS(t, cert), codes.PermissionDenied, entryAdmin)
	})

	t.Run("admin id without --admin-id on another server", func(t *testing.T) {
		// The same ID that is an admin of srv is nobody on other.
		cert := admMintCert(t, other, flagAdmin)
		_, err := tallyv1.NewAdminClient(other.Dial(t, other.Bundle(t), cert)).ListEntries(ctx, &tallyv1.ListEntriesRequest{})
		admRequireStatus(t, err, codes.PermissionDenied, flagAdmin)
	})
}

func TestAdminBatchOf10000Entries(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	admin := srv.Admin(t)
	ctx := context.Background()

	const n = 10_000
	entries := make([]*tallyv1.Entry, n)
	for i := range entries {
		entries[i] = admEntry(fmt.Sprintf("spiffe://example.org/bulk/w%05d", i), fmt.Sprintf("unix:uid:%d", i))
	}
	resp, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: entries})
	require.NoError(t, err)
	require.Len(t, resp.GetEntries(), n)
	created := make(map[string]string, n) // id -> spiffe id
	for _, e := range resp.GetEntries() {
		created[e.GetId()] = e.GetSpiffeId()
	}
	require.Len(t, created, n, "entry IDs are not unique")

	seen := make(map[string]bool, n)
	var order []string
	req := &tallyv1.ListEntriesRequest{PageSize: 1000}
	pages := 0
	for {
		page, err := admin.ListEntries(ctx, req)
		require.NoError(t, err)
		pages++
		require.LessOrEqual(t, len(page.GetEntries()), 1000)
		for _, e := range page.GetEntries() {
			require.False(t, seen[e.GetId()], "entry %s listed twice", e.GetId())
			seen[e.GetId()] = true
			order = append(order, e.GetId())
			require.Equal(t, created[e.GetId()], e.GetSpiffeId())
		}
		if page.GetNextPageToken() == "" {
			break
		}
		require.Less(t, pages, 20, "paging does not end")
		req.PageToken = page.GetNextPageToken()
	}
	require.Len(t, seen, n)
	require.True(t, slices.IsSorted(order), "entries are not listed in ID order")
	require.GreaterOrEqual(t, pages, 10)

	t.Run("selector filter finds one of them", func(t *testing.T) {
		page, err := admin.ListEntries(ctx, &tallyv1.ListEntriesRequest{
			BySelectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:4321"}},
		})
		require.NoError(t, err)
		require.Len(t, page.GetEntries(), 1)
		require.Equal(t, "spiffe://example.org/bulk/w04321", page.GetEntries()[0].GetSpiffeId())
	})
}

// admPKCS8 encodes key as PKCS#8 DER.
func admPKCS8(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return der
}
