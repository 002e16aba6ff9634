package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "s.sock")

	lis, err := Listen(path, 0o600)
	require.NoError(t, err)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	_, err = Listen(path, 0o600)
	require.ErrorContains(t, err, "in use by another server", "a live socket is never taken over")

	// A stale socket (its server gone without removing it) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "stale.sock"), Net: "unix"})
	require.NoError(t, err)
	stale.SetUnlinkOnClose(false)
	stale.Close()
	again, err := Listen(filepath.Join(dir, "stale.sock"), 0o777)
	require.NoError(t, err)
	again.Close()

	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, []byte("keep me"), 0o600))
	_, err = Listen(file, 0o600)
	require.ErrorContains(t, err, "exists and is not a socket")
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Equal(t, "keep me", string(b))

	lis.Close()
	_, err = os.Stat(path)
	require.ErrorIs(t, err, os.ErrNotExist, "closing removes the socket")
}
