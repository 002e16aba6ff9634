package ca

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type recordingMetrics struct {
	mu     sync.Mutex
	signed map[Kind][2]int // ok, failed
	slots  []SlotInfo
}

func (m *recordingMetrics) SVIDSigned(k Kind, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.signed[k]
	if err == nil {
		c[0]++
	} else {
		c[1]++
	}
	m.signed[k] = c
}

func (m *recordingMetrics) SlotChanged(s SlotInfo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.slots = append(m.slots, s)
}

func TestMetricsAndLogs(t *testing.T) {
	m := &recordingMetrics{signed: map[Kind][2]int{}}
	var logs bytes.Buffer
	e := newTestEnv(t, func(c *Config) {
		c.Metrics = m
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
	assert.Equal(t, [2]int{1, 1}, m.signed[KindX509])
	assert.Equal(t, [2]int{1, 0}, m.signed[KindJWT])

	var statuses []SlotStatus
	for _, s := range m.slots {
		statuses = append(statuses, s.Status)
	}
	assert.Equal(t, []SlotStatus{StatusPrepared, StatusActive, StatusPrepared, StatusActive}, statuses)

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
