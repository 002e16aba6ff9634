package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"
)

// writeToken writes a service-account-like JWT expiring at exp to path,
// signed by a key nobody checks.
func writeToken(t *testing.T, path string, exp time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	require.NoError(t, err)
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: "system:serviceaccount:tally:tally-agent",
		Audience: jwt.Audience{"tally-server"}, Expiry: jwt.NewNumericDate(exp)}).Serialize()
	require.NoError(t, err)
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, []byte(tok+"\n"), 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

func TestTokenExpiryFollowsTheFile(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	path := filepath.Join(t.TempDir(), "token")
	exp := clk.Now().Add(time.Hour).Truncate(time.Second)
	writeToken(t, path, exp)
	m := NewMetrics(nil)
	var logs logBuffer
	te := NewTokenExpiry(TokenExpiryConfig{Path: path, Interval: 30 * time.Second, Metrics: m, Clock: clk,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.True(t, te.NotAfter().IsZero(), "nothing read yet")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- te.Run(ctx) }()
	require.Eventually(t, func() bool { return te.NotAfter().Equal(exp) }, 10*time.Second, time.Millisecond)
	require.Equal(t, float64(exp.Unix()), value(t, m.agentTokenExpiry))

	// The kubelet rotates the token: read again within Interval.
	later := exp.Add(time.Hour)
	writeToken(t, path, later)
	require.Eventually(t, clk.HasWaiters, 10*time.Second, time.Millisecond)
	clk.Step(30 * time.Second)
	require.Eventually(t, func() bool { return te.NotAfter().Equal(later) }, 10*time.Second, time.Millisecond)

	// Unreadable: the token last read still expires when it said.
	require.NoError(t, os.WriteFile(path, []byte("not a jwt"), 0o600))
	clk.Step(30 * time.Second)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "not a signed JWT") }, 10*time.Second, time.Millisecond)
	require.Equal(t, later, te.NotAfter())
	require.Equal(t, float64(later.Unix()), value(t, m.agentTokenExpiry))
	cancel()
	require.NoError(t, <-done)
}

func TestReadTokenExpiryErrorsHideTheToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(path, []byte("secret.secret.secret"), 0o600))
	_, err := readTokenExpiry(path)
	require.Error(t, err)
	require.NotContains(t, err.Error(), "secret")
	_, err = readTokenExpiry(filepath.Join(t.TempDir(), "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// logBuffer is a strings.Builder safe for a logger and a test at once.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
