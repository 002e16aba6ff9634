package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/peer"
	"k8s.io/utils/clock"
)

// errBusy: too many attestations are in progress, from the caller's address
// or in all; the caller should retry with backoff.
var errBusy = errors.New("too many agent attestations in progress; retry later")

// attestGate bounds the AttestAgent calls in progress, in total and per peer
// address: they are the only calls anyone may make without a credential, and
// each can cost the server an apiserver round trip (k8s_psat) or a store
// write. A call waits for a place up to maxWait (or its deadline), so an
// agent rollout queues rather than fails, while one address cannot take all
// places from the others.
type attestGate struct {
	clock   clock.Clock
	maxWait time.Duration
	perPeer int
	total   chan struct{}

	mu    sync.Mutex
	peers map[string]*peerPlaces
}

type peerPlaces struct {
	sem   chan struct{}
	users int // calls holding or waiting for a place; 0 removes the entry
}

func newAttestGate(clk clock.Clock, total, perPeer int, maxWait time.Duration) *attestGate {
	return &attestGate{clock: clk, maxWait: maxWait, perPeer: perPeer, total: make(chan struct{}, total), peers: map[string]*peerPlaces{}}
}

// enter waits for a place for a call from ctx's peer and returns the
// function that gives it back. It fails with an error wrapping errBusy after
// maxWait, or with ctx's error.
func (g *attestGate) enter(ctx context.Context) (leave func(), err error) {
	key := peerHost(ctx)
	g.mu.Lock()
	p := g.peers[key]
	if p == nil {
		p = &peerPlaces{sem: make(chan struct{}, g.perPeer)}
		g.peers[key] = p
	}
	p.users++
	g.mu.Unlock()
	done := func() {
		g.mu.Lock()
		if p.users--; p.users == 0 {
			delete(g.peers, key)
		}
		g.mu.Unlock()
	}
	timer := g.clock.NewTimer(g.maxWait)
	defer timer.Stop()
	wait := func(sem chan struct{}, what string) error {
		select {
		case sem <- struct{}{}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C():
			return fmt.Errorf("%w (%s)", errBusy, what)
		}
	}
	if err := wait(p.sem, "from this address"); err != nil {
		done()
		return nil, err
	}
	if err := wait(g.total, "in all"); err != nil {
		<-p.sem
		done()
		return nil, err
	}
	return func() {
		<-g.total
		<-p.sem
		done()
	}, nil
}

// peerHost is the caller's IP address, "" if unknown.
func peerHost(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return p.Addr.String()
	}
	return host
}
