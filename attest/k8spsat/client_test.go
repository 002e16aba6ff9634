package k8spsat

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeProjected publishes token the way the kubelet's atomic writer does:
// a fresh timestamped directory, then an atomic swap of the ..data symlink
// that dir/token points through.
func writeProjected(t *testing.T, dir, version, token string) {
	t.Helper()
	ts := "..2026_01_01_00_00_00." + version
	require.NoError(t, os.Mkdir(filepath.Join(dir, ts), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ts, "token"), []byte(token), 0o600))
	require.NoError(t, os.Symlink(ts, filepath.Join(dir, "..data_tmp")))
	require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	if _, err := os.Lstat(filepath.Join(dir, "token")); err != nil {
		require.NoError(t, os.Symlink(filepath.Join("..data", "token"), filepath.Join(dir, "token")))
	}
}

func TestClientReadsRotatedToken(t *testing.T) {
	dir := t.TempDir()
	c := Client{TokenPath: filepath.Join(dir, "token")}
	assert.Equal(t, Type, c.Type())

	writeProjected(t, dir, "1", "first.token.sig")
	got, err := c.Data(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "first.token.sig", string(got))

	writeProjected(t, dir, "2", "second.token.sig\n")
	got, err = c.Data(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "second.token.sig", string(got), "rotated token, trailing newline dropped")
}

func TestClientErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, []byte(" \n"), 0o600))

	_, err := Client{}.Data(context.Background())
	assert.ErrorContains(t, err, "no token path configured")

	_, err = Client{TokenPath: filepath.Join(dir, "missing")}.Data(context.Background())
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.ErrorContains(t, err, "k8spsat: read service account token")

	_, err = Client{TokenPath: empty}.Data(context.Background())
	assert.ErrorContains(t, err, "token file "+empty+" is empty")
}
