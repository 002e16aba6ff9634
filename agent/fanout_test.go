package agent

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/workloadapi"
)

func TestFanoutLatestWins(t *testing.T) {
	f := newFanout()
	closed := 0
	sub := newSubscription([]attest.Selector{{Type: "unix", Value: "uid:1"}}, time.Now(), func(*subscription) { closed++ })
	sub.ids = map[string]*entry{"a": nil}
	f.addX509(sub)
	for i := range 3 { // nobody reads: the sender never blocks
		f.sendX509(sub, workloadapi.X509Update{SVIDs: make([]workloadapi.X509SVID, i+1)})
	}
	require.Len(t, (<-sub.Updates()).SVIDs, 3, "only the latest is kept")
	select {
	case u := <-sub.Updates():
		t.Fatalf("a second update: %v", u)
	default:
	}
	require.Equal(t, []*subscription{sub}, f.holding(map[string]bool{"a": true}))
	require.Empty(t, f.holding(map[string]bool{"b": true}))
	sub.Close()
	sub.Close()
	require.Equal(t, 1, closed)
	f.removeX509(sub)
	require.Empty(t, f.holding(map[string]bool{"a": true}))
}

func TestFanoutBundle(t *testing.T) {
	f := newFanout()
	b1 := spiffebundle.New(td)
	b1.SetSequenceNumber(1)
	none := f.addBundle(nil)
	now := f.addBundle(b1)
	got := <-now
	require.True(t, got.Equal(b1), "the current bundle at once")
	require.NotSame(t, b1, got, "a copy")
	select {
	case <-none:
		t.Fatal("no bundle before the first")
	default:
	}
	for seq := uint64(2); seq <= 3; seq++ {
		b := spiffebundle.New(td)
		b.SetSequenceNumber(seq)
		f.sendBundle(b)
	}
	for _, ch := range []chan *spiffebundle.Bundle{none, now} {
		seq, _ := (<-ch).SequenceNumber()
		require.EqualValues(t, 3, seq, "latest wins")
	}
	f.removeBundle(none)
	f.sendBundle(b1)
	require.Len(t, none, 0)
	require.Len(t, now, 1)
}
