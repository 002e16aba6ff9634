package renew

import (
	"testing"
	"time"
)

func TestAt(t *testing.T) {
	nb := time.Unix(1_000_000, 0)
	na := nb.Add(time.Hour)
	seen := map[time.Time]bool{}
	for range 200 {
		at := At(nb, na)
		if at.After(nb.Add(30*time.Minute)) || at.Before(nb.Add(24*time.Minute)) {
			t.Fatalf("At = %s after notBefore, want within [24m, 30m]", at.Sub(nb))
		}
		seen[at] = true
	}
	if len(seen) < 100 {
		t.Fatalf("only %d distinct times in 200: no jitter", len(seen))
	}
}
