package api

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/peer"
	clocktesting "k8s.io/utils/clock/testing"
)

func fromPeer(ip string) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}})
}

// TestAttestGate: one address cannot take every place, the total is bounded,
// a waiting call gets a place as soon as one is given back, and gives up
// with errBusy after the wait.
func TestAttestGate(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	g := newAttestGate(clk, 3, 2, 10*time.Second)

	a1, err := g.enter(fromPeer("10.0.0.1"))
	require.NoError(t, err)
	a2, err := g.enter(fromPeer("10.0.0.1"))
	require.NoError(t, err)

	// A third call from the same address waits, then gives up.
	got := make(chan error, 1)
	go func() {
		leave, err := g.enter(fromPeer("10.0.0.1"))
		if leave != nil {
			leave()
		}
		got <- err
	}()
	require.Eventually(t, clk.HasWaiters, 5*time.Second, time.Millisecond)
	clk.Step(10 * time.Second)
	require.ErrorIs(t, <-got, errBusy)

	// Another address still gets in, up to the total.
	b1, err := g.enter(fromPeer("10.0.0.2"))
	require.NoError(t, err)
	go func() {
		leave, err := g.enter(fromPeer("10.0.0.3"))
		if leave != nil {
			defer leave()
		}
		got <- err
	}()
	require.Eventually(t, clk.HasWaiters, 5*time.Second, time.Millisecond)
	select {
	case err := <-got:
		t.Fatalf("entered past the total: %v", err)
	default:
	}
	a1() // gives a place back: the waiter enters
	require.NoError(t, <-got)

	b2, err := g.enter(fromPeer("10.0.0.2")) // the total is taken again
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(fromPeer("10.0.0.4"))
	go func() {
		_, err := g.enter(ctx)
		got <- err
	}()
	require.Eventually(t, clk.HasWaiters, 5*time.Second, time.Millisecond)
	cancel()
	require.ErrorIs(t, <-got, context.Canceled)

	a2()
	b1()
	b2()
	require.Empty(t, g.peers, "no entry left for addresses with no call")
	require.Empty(t, g.total)
}
