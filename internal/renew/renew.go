// Package renew is Tally's one rule for when a certificate is renewed.
package renew

import (
	"math/rand/v2"
	"time"
)

// At is when a certificate valid until notAfter, obtained (or first looked
// at) at now, is renewed: half way through the rest of its life, less up to
// a tenth of that at random, so that certificates issued together (a
// restart, a rollout) are not all renewed together, and never later than
// half way, so that a renewal that fails has the other half to be retried
// in. The life counts from now, or from notBefore if that is later: CAs
// backdate notBefore for clock skew (Tally's by 10 s), and counting from it
// would put the half way point of a short certificate in the past.
func At(now, notBefore, notAfter time.Time) time.Time {
	from := now
	if notBefore.After(from) {
		from = notBefore
	}
	life := notAfter.Sub(from)
	if life <= 0 {
		return from
	}
	return from.Add(life/2 - time.Duration(rand.Float64()*float64(life/10)))
}
