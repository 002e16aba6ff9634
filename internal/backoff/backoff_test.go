package backoff

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBackoff(t *testing.T) {
	b := &Backoff{Min: time.Second, Max: 30 * time.Second}
	var got []time.Duration
	for range 7 {
		got = append(got, b.Next())
	}
	require.Equal(t, []time.Duration{1 * time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
		16 * time.Second, 30 * time.Second, 30 * time.Second}, got)
	require.Equal(t, 7, b.Failures())
	b.Reset()
	require.Equal(t, time.Second, b.Next(), "a success starts over")
}

func TestBackoffJitter(t *testing.T) {
	b := New(time.Second, time.Minute)
	b.Rand = func() float64 { return 0.5 }
	require.Equal(t, 900*time.Millisecond, b.Next(), "shortened by half of 20 %")
	b.Rand = func() float64 { return 0.999999 }
	require.InDelta(t, float64(1600*time.Millisecond), float64(b.Next()), float64(time.Millisecond))
	b.Rand = nil
	for range 100 {
		d := b.Next()
		require.LessOrEqual(t, d, time.Minute)
		require.GreaterOrEqual(t, d, time.Duration(0.8*float64(min(time.Minute, 4*time.Second))))
	}
}

func TestBackoffHugeFailureCount(t *testing.T) {
	b := &Backoff{Min: time.Nanosecond, Max: time.Hour}
	for range 200 { // no overflow past Max
		require.LessOrEqual(t, b.Next(), time.Hour)
	}
}
