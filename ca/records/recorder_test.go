package records

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 0, 0, time.UTC)

func issuance(id string, i int) Event {
	return Event{Kind: KindX509, SPIFFEID: id, Serial: fmt.Sprintf("%x", 1000+i), AgentID: "spiffe://example.org/tally/agent/a",
		EntryID: "entry-" + id, NotBefore: t0, NotAfter: t0.Add(time.Hour), KeyID: "ab12"}
}

func TestRecordList(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	r := New(Config{Size: 4, Clock: clk})
	for i := range 6 {
		id := "spiffe://example.org/a"
		if i%2 == 1 {
			id = "spiffe://example.org/b"
		}
		r.Record(issuance(id, i))
		clk.Step(time.Second)
	}

	t.Run("newest first, the ring keeps the last Size", func(t *testing.T) {
		all := r.List("", 0)
		require.Len(t, all, 4)
		var serials []string
		for _, e := range all {
			serials = append(serials, e.Serial)
		}
		require.Equal(t, []string{"3ed", "3ec", "3eb", "3ea"}, serials)
		require.True(t, all[0].At.Equal(t0.Add(5*time.Second)), "At set from the clock: %v", all[0].At)
	})
	t.Run("by SPIFFE ID", func(t *testing.T) {
		b := r.List("spiffe://example.org/b", 0)
		require.Len(t, b, 2)
		require.Equal(t, "3ed", b[0].Serial)
		require.Equal(t, "3eb", b[1].Serial)
	})
	t.Run("limit", func(t *testing.T) {
		require.Len(t, r.List("", 3), 3)
		require.Len(t, r.List("spiffe://example.org/a", 1), 1)
	})
	t.Run("an ID never recorded", func(t *testing.T) {
		require.Empty(t, r.List("spiffe://example.org/nobody", 10))
	})
}

// TestPackRoundTrip: every field comes back as recorded, times to the
// second (At to the nanosecond), whatever the serial looks like.
func TestPackRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		e    Event
	}{
		{"x509", Event{Kind: KindX509, SPIFFEID: "spiffe://example.org/web", Serial: "f00dbabe1234567890abcdef0123456789abcdef",
			AgentID: "spiffe://example.org/tally/agent/x", EntryID: "e1", At: t0.Add(123 * time.Nanosecond),
			NotBefore: t0.Add(-10 * time.Second), NotAfter: t0.Add(time.Hour), KeyID: "0a0b", Renewal: true}},
		{"odd serial", Event{Kind: KindX509, Serial: "abc", At: t0}},
		{"leading zero nibbles", Event{Kind: KindX509, Serial: "0001", At: t0}},
		{"uppercase serial is kept as is", Event{Kind: KindX509, Serial: "ABC", At: t0}},
		{"long serial is kept as is", Event{Kind: KindX509, Serial: "1234567890123456789012345678901234567890ff", At: t0}},
		{"jwt, no serial", Event{Kind: KindJWT, SPIFFEID: "spiffe://example.org/web", At: t0, NotBefore: t0, NotAfter: t0.Add(5 * time.Minute), KeyID: "kid1"}},
		{"failed attestation", Event{Kind: KindAttestation, At: t0, Failed: true, Detail: "join_token: attest: denied"}},
		{"before 1970", Event{Kind: KindRotation, At: time.Unix(-5, 7).UTC(), NotBefore: time.Unix(-100, 0).UTC()}},
		{"an unknown kind", Event{Kind: "other", At: t0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(Config{Size: 2})
			r.Record(tc.e)
			got := r.List("", 0)
			require.Len(t, got, 1)
			require.Equal(t, tc.e, got[0])
		})
	}
	t.Run("zero times stay zero", func(t *testing.T) {
		clk := clocktesting.NewFakeClock(t0)
		r := New(Config{Clock: clk})
		r.Record(Event{Kind: KindAttestation})
		got := r.List("", 0)[0]
		require.True(t, got.NotBefore.IsZero())
		require.True(t, got.NotAfter.IsZero())
		require.True(t, got.At.Equal(t0))
	})
}

// TestStringsBounded: strings are forgotten once no event or index entry
// holds them, however many distinct ones were recorded.
func TestStringsBounded(t *testing.T) {
	r := New(Config{Size: 10, MaxIdentities: 5})
	for i := range 1000 {
		e := issuance(fmt.Sprintf("spiffe://example.org/w%d", i), i)
		e.Detail = fmt.Sprintf("detail %d", i)
		e.Serial = fmt.Sprintf("SERIAL-%d", i) // not hex: interned
		r.Record(e)
	}
	st := r.Stats()
	require.Equal(t, 10, st.Events)
	require.Equal(t, 5, st.Identities)
	// Per event in the ring: SPIFFE ID, entry ID, detail, serial; the index's
	// are among them. Plus the kind, agent and key shared by all.
	require.LessOrEqual(t, st.Strings, 10*4+3)
	last := r.List("", 1)[0]
	require.Equal(t, "SERIAL-999", last.Serial)
	require.Equal(t, "detail 999", last.Detail)
}

func TestLast(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	r := New(Config{Size: 3, MaxIdentities: 2, Clock: clk})
	a, b, c := issuance("spiffe://example.org/a", 1), issuance("spiffe://example.org/b", 2), issuance("spiffe://example.org/c", 3)

	r.Record(a)
	got, ok := r.Last(a.Identity())
	require.True(t, ok)
	require.Equal(t, "3e9", got.Serial)

	t.Run("per agent, entry and kind", func(t *testing.T) {
		for _, id := range []Identity{
			{Kind: KindJWT, AgentID: a.AgentID, EntryID: a.EntryID, SPIFFEID: a.SPIFFEID},
			{Kind: KindX509, AgentID: "spiffe://example.org/tally/agent/other", EntryID: a.EntryID, SPIFFEID: a.SPIFFEID},
			{Kind: KindX509, AgentID: a.AgentID, EntryID: "other", SPIFFEID: a.SPIFFEID},
			{Kind: KindX509, SPIFFEID: a.SPIFFEID},
		} {
			_, ok := r.Last(id)
			require.False(t, ok, "%+v", id)
		}
	})
	t.Run("a later issuance replaces it", func(t *testing.T) {
		clk.Step(time.Minute)
		a2 := a
		a2.Serial, a2.Renewal = "beef", true
		r.Record(a2)
		got, ok := r.Last(a.Identity())
		require.True(t, ok)
		require.Equal(t, "beef", got.Serial)
		require.True(t, got.At.Equal(t0.Add(time.Minute)))
	})
	t.Run("failures and other kinds are not issuances", func(t *testing.T) {
		f := b
		f.Failed = true
		r.Record(f)
		r.Record(Event{Kind: KindAttestation, SPIFFEID: b.SPIFFEID, AgentID: b.AgentID})
		_, ok := r.Last(b.Identity())
		require.False(t, ok)
	})
	t.Run("the index outlives the ring", func(t *testing.T) {
		r.Record(Event{Kind: KindRotation})
		r.Record(Event{Kind: KindRotation})
		r.Record(Event{Kind: KindRotation})
		require.Empty(t, r.List(a.SPIFFEID, 0))
		got, ok := r.Last(a.Identity())
		require.True(t, ok)
		require.Equal(t, "beef", got.Serial)
	})
	t.Run("the least recently issued identity is evicted", func(t *testing.T) {
		r.Record(b)
		r.Record(c)
		_, ok := r.Last(a.Identity())
		require.False(t, ok)
		latest := r.Latest(0)
		require.Len(t, latest, 2)
		require.Equal(t, c.SPIFFEID, latest[0].SPIFFEID)
		require.Equal(t, b.SPIFFEID, latest[1].SPIFFEID)
		require.Len(t, r.Latest(1), 1)
		// b issued again moves to the front: c is evicted next.
		r.Record(b)
		r.Record(a)
		_, ok = r.Last(c.Identity())
		require.False(t, ok)
		_, ok = r.Last(b.Identity())
		require.True(t, ok)
	})
}

func TestBuckets(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0.Add(30 * time.Second))
	r := New(Config{Minutes: 5, Clock: clk})
	rec := func(k Kind, renewal, failed bool) {
		r.Record(Event{Kind: k, Renewal: renewal, Failed: failed})
	}
	rec(KindX509, false, false)
	rec(KindX509, true, false)
	rec(KindX509, true, false)
	rec(KindJWT, false, true)
	clk.Step(2 * time.Minute)
	rec(KindAttestation, false, false)
	rec(KindAttestation, false, true)
	rec(KindRotation, false, false)
	rec("other", false, false)

	got := r.Buckets(t0)
	require.Len(t, got, 3)
	require.Equal(t, Bucket{Start: t0, X509: Counts{First: 1, Renewals: 2}, JWT: Counts{Failures: 1}}, got[0])
	require.Equal(t, Bucket{Start: t0.Add(time.Minute)}, got[1])
	require.Equal(t, Bucket{Start: t0.Add(2 * time.Minute), Attestation: Counts{First: 1, Failures: 1}, Rotation: Counts{First: 1}}, got[2])
	require.Equal(t, 3, got[0].X509.Total())

	t.Run("since is truncated to its minute", func(t *testing.T) {
		got := r.Buckets(t0.Add(90 * time.Second))
		require.Len(t, got, 2)
		require.True(t, got[0].Start.Equal(t0.Add(time.Minute)))
	})
	t.Run("no further back than Minutes", func(t *testing.T) {
		clk.Step(3 * time.Minute) // now t0+5m30s: t0 is 6 minutes back
		got := r.Buckets(time.Time{})
		require.Len(t, got, 5)
		require.True(t, got[0].Start.Equal(t0.Add(time.Minute)), "%v", got[0].Start)
		require.Equal(t, Counts{First: 1, Failures: 1}, got[1].Attestation)
		require.Len(t, r.Buckets(t0.Add(-time.Hour)), 5)
	})
	t.Run("a minute's slot is reused afresh", func(t *testing.T) {
		rec(KindX509, false, false) // t0+5m: the slot of t0
		got := r.Buckets(t0.Add(5 * time.Minute))
		require.Len(t, got, 1)
		require.Equal(t, Counts{First: 1}, got[0].X509)
		// An event of a minute the ring has moved past is not counted.
		r.Record(Event{Kind: KindX509, At: t0})
		require.Equal(t, Counts{First: 1}, r.Buckets(t0.Add(5 * time.Minute))[0].X509)
	})
	t.Run("since in the future", func(t *testing.T) {
		require.Empty(t, r.Buckets(clk.Now().Add(time.Hour)))
	})
	t.Run("totals count everything", func(t *testing.T) {
		tot := r.Totals()
		require.Equal(t, Counts{First: 3, Renewals: 2}, tot.X509)
		require.Equal(t, Counts{Failures: 1}, tot.JWT)
		require.Equal(t, uint64(1), r.IssuanceFailures())
	})
}

func TestSubscribe(t *testing.T) {
	r := New(Config{})
	ch, stop := r.Subscribe()
	select {
	case <-ch:
		t.Fatal("a value before any Record")
	default:
	}
	for range 100 { // a subscriber that does not read blocks nothing
		r.Record(Event{Kind: KindJWT})
	}
	<-ch
	select {
	case <-ch:
		t.Fatal("values are coalesced")
	default:
	}
	stop()
	r.Record(Event{Kind: KindJWT})
	select {
	case <-ch:
		t.Fatal("a value after unsubscribing")
	default:
	}
}

func TestConcurrent(t *testing.T) {
	r := New(Config{Size: 100, MaxIdentities: 10})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 500 {
				e := issuance(fmt.Sprintf("spiffe://example.org/w%d", i%20), i)
				e.AgentID = fmt.Sprintf("agent-%d", w)
				r.Record(e)
				_ = r.List(e.SPIFFEID, 5)
				_, _ = r.Last(e.Identity())
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			_ = r.Buckets(time.Time{})
			_ = r.Latest(0)
		}
	})
	wg.Wait()
	require.Equal(t, 100, r.Stats().Events)
	require.Equal(t, 10, r.Stats().Identities)
	require.Equal(t, 2000, r.Totals().X509.First)
}

func TestLongFieldsCut(t *testing.T) {
	r := New(Config{})
	long := strings.Repeat("é", MaxField) // 2 bytes each
	r.Record(Event{Kind: KindX509, SPIFFEID: long, Detail: long, Serial: long})
	e := r.List("", 1)[0]
	for _, s := range []string{e.SPIFFEID, e.Detail, e.Serial} {
		require.Len(t, s, MaxField)
		require.True(t, utf8.ValidString(s))
	}
	require.Len(t, r.List(long, 0), 1, "listed by the ID as given")
}
