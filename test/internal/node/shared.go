package node

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/tallyid/tally/test/internal/k8s"
)

// Shared is one node for a whole test package, so that its tests do not each pay for starting
// one: the first test that asks starts it, and TestMain stops it after the last, before the
// cluster it belongs to:
//
//	var (
//		cluster = k8s.Shared{Options: k8s.Options{Kubelet: true}}
//		nodes   = node.Shared{Options: node.Options{Images: ...}}
//	)
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		nodes.Stop()
//		cluster.Stop()
//		os.Exit(code)
//	}
//
// Tests share it by taking a namespace each. The zero value is ready; safe for concurrent use.
type Shared struct {
	// Options are the node's options.
	Options Options

	once sync.Once
	n    *Node
	err  error
}

// Get returns the shared node of c, starting it on first use; it fails t if the node could
// not start, and skips t when not root.
func (s *Shared) Get(t testing.TB, c *k8s.Cluster) *Node {
	t.Helper()
	requireRoot(t)
	s.once.Do(func() { s.n, s.err = start(c, s.Options, t.Logf) })
	if s.err != nil {
		t.Fatalf("node: shared node: %v", s.err)
	}
	if s.n.cluster != c {
		t.Fatalf("node: the shared node belongs to another cluster (%s, not %s)", s.n.cluster.URL, c.URL)
	}
	return s.n
}

// Stop stops the shared node if it was started; a failure to clean up is printed on stderr.
func (s *Shared) Stop() {
	if s.n == nil {
		return
	}
	if err := s.n.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "node: stop shared node: %v\n", err)
	}
}
