package ca

import (
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBundleConformance checks the Bundles lines of SPIFFE.md on the bundle
// the authority serves and the one it stores.
func TestBundleConformance(t *testing.T) {
	e := newTestEnv(t, nil)
	b := e.a.Bundle()

	stored := e.journal.storedBundle()
	parsed, err := spiffebundle.Parse(testTD, stored)
	require.NoError(t, err)
	assert.True(t, parsed.Equal(b), "stored bundle equals the served one")

	var doc struct {
		Keys        []map[string]any `json:"keys"`
		Sequence    *uint64          `json:"spiffe_sequence"`
		RefreshHint *int64           `json:"spiffe_refresh_hint"`
	}
	require.NoError(t, json.Unmarshal(stored, &doc))
	require.NotNil(t, doc.Keys, "keys present")
	require.NotNil(t, doc.Sequence)
	assert.Equal(t, uint64(1), *doc.Sequence)
	require.NotNil(t, doc.RefreshHint)
	assert.Equal(t, int64(300), *doc.RefreshHint, "default min(CATTL/10, 5m)")

	ca := caOf(t, e.a)
	var x509Keys, jwtKeys int
	for _, k := range doc.Keys {
		switch k["use"] {
		case "x509-svid":
			x509Keys++
			assert.NotContains(t, k, "kid", "x509 authorities have no kid")
			x5c, ok := k["x5c"].([]any)
			require.True(t, ok)
			require.Len(t, x5c, 1, "exactly one CA certificate")
			der, err := base64.StdEncoding.DecodeString(x5c[0].(string))
			require.NoError(t, err)
			assert.Equal(t, ca.Raw, der)
		case "jwt-svid":
			jwtKeys++
			assert.Equal(t, activeID(t, e.a, KindJWT), k["kid"])
			assert.Equal(t, "EC", k["kty"])
			assert.Equal(t, "P-256", k["crv"])
			assert.NotContains(t, k, "d", "no private part")
		default:
			t.Errorf("unexpected use %v", k["use"])
		}
	}
	assert.Equal(t, 1, x509Keys)
	assert.Equal(t, 1, jwtKeys)

	// Bundle returns a copy: changing it does not change the authority's.
	b.SetSequenceNumber(99)
	seq, _ := e.a.Bundle().SequenceNumber()
	assert.Equal(t, uint64(1), seq)
}

func TestSubscribeBundleLatestWins(t *testing.T) {
	e := newTestEnv(t, nil)
	ch, cancel := e.a.SubscribeBundle()

	first := <-ch
	seq, _ := first.SequenceNumber()
	assert.Equal(t, uint64(1), seq)

	// Two bundle changes (prepare, then drop of the old key after the
	// activation) while the subscriber does not read: it gets only the latest.
	e.clock.Step(12 * time.Hour)
	e.tick(t) // prepare: seq 2
	e.clock.Step(8 * time.Hour)
	e.tick(t) // activate: bundle unchanged
	e.clock.Step(4 * time.Hour)
	e.tick(t) // first key expires: seq 3
	latest, _ := e.a.Bundle().SequenceNumber()
	require.Equal(t, uint64(3), latest)

	got := <-ch
	seq, _ = got.SequenceNumber()
	assert.Equal(t, latest, seq)
	select {
	case b := <-ch:
		t.Fatalf("unexpected extra bundle %v", b)
	default:
	}

	cancel()
	_, open := <-ch
	assert.False(t, open, "cancel closes the channel")
	cancel() // idempotent
}
