// Package renew is Tally's one rule for when a certificate is renewed.
package renew

import (
	"math/rand/v2"
	"time"
)

// At is when a certificate valid from notBefore to notAfter is renewed: at
// half its lifetime, less up to a tenth of it at random, so that
// certificates issued together (a restart, a rollout) are not all renewed
// together, and never later than half way, so that a renewal that fails has
// the other half of the lifetime to be retried in.
func At(notBefore, notAfter time.Time) time.Time {
	life := notAfter.Sub(notBefore)
	return notBefore.Add(life/2 - time.Duration(rand.Float64()*float64(life/10)))
}
