package e2e

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.step.sm/crypto/pemutil"

	"github.com/tallyid/tally/test/internal/harness"
	"github.com/tallyid/tally/test/internal/stepca"
)

// A real step-ca as the upstream CA: it signs the X.509 intermediates, its
// root is the bundle's anchor, and while it is down the server keeps
// serving: only the next key waits for it.
func TestUpstreamStepCA(t *testing.T) {
	t.Parallel()
	up := stepca.Start(t, 24*time.Hour)
	s := harness.StartServer(t,
		"--upstream-step-ca-url", up.URL,
		"--upstream-step-ca-fingerprint", up.Fingerprint,
		"--upstream-step-ca-provisioner", stepca.Provisioner,
		"--upstream-step-ca-password-file", up.PasswordFile)

	anchors := s.Bundle(t).X509Authorities()
	require.Len(t, anchors, 1)
	assert.True(t, anchors[0].Equal(up.Root), "the bundle's anchor is step-ca's root")

	mint := func() {
		t.Helper()
		dir := t.TempDir()
		_, stderr, err := s.Ctl("x509", "mint", "--spiffe-id", "spiffe://example.org/web", "--out-dir", dir)
		require.NoError(t, err, stderr)
		chain, err := pemutil.ReadCertificateBundle(filepath.Join(dir, "svid.pem"))
		require.NoError(t, err)
		require.GreaterOrEqual(t, len(chain), 3, "leaf, Tally's intermediate, step-ca's intermediate")
		assert.Equal(t, "Test step-ca intermediate", chain[len(chain)-1].Subject.CommonName)
	}
	mint()

	// step-ca down: a new key cannot be made, SVIDs still can.
	up.Stop(t)
	_, stderr, err := s.Ctl("authority", "x509", "prepare")
	require.Error(t, err)
	assert.Contains(t, stderr, "step-ca")
	mint()

	// Back up: the next key is signed by it.
	up.Restart(t)
	out, stderr, err := s.Ctl("-o", "json", "authority", "x509", "prepare")
	require.NoError(t, err, stderr)
	var slot map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &slot))
	assert.Equal(t, "prepared", slot["status"])
	require.Len(t, s.Bundle(t).X509Authorities(), 1, "still one anchor: step-ca's root")
}
