package ca

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLogs: every rotation step is logged, and no key or token ever is.
func TestLogs(t *testing.T) {
	var logs bytes.Buffer
	e := newTestEnv(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	ctx := context.Background()
	id := mustID(t, "spiffe://example.org/w")
	_, err := e.a.SignX509SVID(ctx, X509SVIDParams{PublicKey: newKey(t).Public(), ID: id})
	require.NoError(t, err)
	_, err = e.a.SignX509SVID(ctx, X509SVIDParams{ID: id})
	require.Error(t, err)
	token, _, err := e.a.SignJWTSVID(ctx, JWTSVIDParams{ID: id, Audience: []string{"x"}})
	require.NoError(t, err)

	t0 := e.clock.Now()
	for _, h := range []time.Duration{12, 20, 24} {
		e.clock.SetTime(t0.Add(h * time.Hour))
		e.tick(t)
	}
	assert.Contains(t, logs.String(), `"msg":"ca key prepared"`)
	assert.Contains(t, logs.String(), `"msg":"ca key activated"`)
	assert.Contains(t, logs.String(), `"msg":"ca key retired; kept in bundle until it expires"`)
	assert.Contains(t, logs.String(), `"msg":"ca key expired; dropped from bundle"`)
	assert.Contains(t, logs.String(), `"msg":"ca bundle updated"`)

	// No key material or token in the logs.
	assert.NotContains(t, logs.String(), "PRIVATE KEY")
	assert.NotContains(t, logs.String(), token)
	entries, err := os.ReadDir(e.cfg.KeyDir)
	require.NoError(t, err)
	for _, ent := range entries {
		pemBytes, err := os.ReadFile(filepath.Join(e.cfg.KeyDir, ent.Name()))
		require.NoError(t, err)
		body := bytes.Split(pemBytes, []byte("\n"))[1] // first base64 line of the key
		assert.NotContains(t, logs.String(), string(body))
		_, err = base64.StdEncoding.DecodeString(string(body))
		require.NoError(t, err)
	}
}
