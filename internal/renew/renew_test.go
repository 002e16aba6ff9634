package renew

import (
	"testing"
	"time"
)

func TestAt(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		name             string
		notBefore        time.Time
		notAfter         time.Time
		earliest, latest time.Duration // after now
	}{
		{"fresh", now, now.Add(time.Hour), 24 * time.Minute, 30 * time.Minute},
		{"backdated 10 s: the half way point is still ahead", now.Add(-10 * time.Second), now.Add(10 * time.Second), 4 * time.Second, 5 * time.Second},
		{"looked at late (a restart): half of what is left", now.Add(-50 * time.Minute), now.Add(10 * time.Minute), 4 * time.Minute, 5 * time.Minute},
		{"not valid yet: counts from notBefore", now.Add(time.Minute), now.Add(61 * time.Minute), 25 * time.Minute, 31 * time.Minute},
		{"expired: now", now.Add(-time.Hour), now.Add(-time.Minute), 0, 0},
	} {
		seen := map[time.Time]bool{}
		for range 200 {
			at := At(now, tc.notBefore, tc.notAfter)
			if d := at.Sub(now); d < tc.earliest || d > tc.latest {
				t.Fatalf("%s: At = now%+v, want within [%s, %s]", tc.name, d, tc.earliest, tc.latest)
			}
			seen[at] = true
		}
		if tc.latest > tc.earliest && len(seen) < 100 {
			t.Errorf("%s: only %d distinct times in 200: no jitter", tc.name, len(seen))
		}
	}
}
