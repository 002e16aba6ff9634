package serverapp

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/store/badgerstore"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer lis.Close()
	return lis.Addr().String()
}

// TestBuildClosesWhatItOpenedOnFailure: when the last address cannot be
// listened on, everything build opened before is closed again: the store
// (badger's directory lock), the admin socket file and the other listeners.
func TestBuildClosesWhatItOpenedOnFailure(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.TrustDomain = "example.org"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.BindAddress, cfg.HTTPAddress = freeAddr(t), freeAddr(t)
	cfg.HealthAddress = busy.Addr().String()
	s, err := New(cfg)
	require.NoError(t, err)

	err = s.Run(context.Background())
	require.ErrorContains(t, err, "health_address")

	_, err = os.Stat(cfg.AdminSocket)
	require.ErrorIs(t, err, os.ErrNotExist, "the admin socket is removed")
	for _, addr := range []string{cfg.BindAddress, cfg.HTTPAddress} {
		lis, err := net.Listen("tcp", addr)
		require.NoError(t, err, "%s is free again", addr)
		lis.Close()
	}
	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(cfg.DataDir, "store")})
	require.NoError(t, err, "the store was closed (badger locks its directory)")
	require.NoError(t, st.Close())
}

func TestNewRefusesABadConfig(t *testing.T) {
	cfg := DefaultConfig()
	_, err := New(cfg)
	require.ErrorContains(t, err, "trust_domain")
}
