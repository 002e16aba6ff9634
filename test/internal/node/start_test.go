package node

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/test/internal/k8s"
)

// TestStartRefuses checks that Start fails clearly, and leaves nothing behind, when the node
// cannot start.
func TestStartRefuses(t *testing.T) {
	requireRoot(t)
	c := k8s.StartWith(t, k8s.Options{Kubelet: true})

	t.Run("a cluster without Options.Kubelet", func(t *testing.T) {
		_, err := start(&k8s.Cluster{}, Options{}, t.Logf)
		require.ErrorContains(t, err, "k8s.Options{Kubelet: true}")
	})

	t.Run("a busy kubelet port", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:10250")
		require.NoError(t, err, "the test needs the default kubelet port free")
		defer ln.Close()
		n, err := start(c, Options{}, t.Logf)
		require.ErrorContains(t, err, "port 10250 on 127.0.0.1 is in use (KUBELET_PORT)")
		assert.Nil(t, n)
		assertReleased(t)
	})

	t.Run("an image that cannot be imported", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "missing.tar")
		_, err := start(c, Options{Images: []string{missing}}, t.Logf)
		require.ErrorContains(t, err, "ctr images import "+missing)
		assertReleased(t)
	})
}

// assertReleased checks that a failed start left no run dir, no bridge and no lock behind.
func assertReleased(t *testing.T) {
	t.Helper()
	runs, err := filepath.Glob(filepath.Join(os.TempDir(), "tally-node-*"))
	require.NoError(t, err)
	assert.Empty(t, runs, "run dirs left behind")
	_, err = net.InterfaceByName("tally-node0")
	assert.Error(t, err, "bridge left behind")
	l, err := acquireLock(t.Logf, func(string) error { return nil })
	require.NoError(t, err, "lock still held")
	l.release()
}
