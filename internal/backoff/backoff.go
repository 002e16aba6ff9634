// Package backoff is Tally's one retry schedule: waits that double from Min
// up to Max after each failure, each shortened by a random jitter so that
// many callers failing together do not retry together, and back to Min on
// success.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff is the state of one retry loop. The zero value is not usable;
// set Min and Max (and Jitter) or use New. Not safe for concurrent use:
// each loop keeps its own.
type Backoff struct {
	// Min is the first wait, Max the longest.
	Min, Max time.Duration
	// Jitter is the fraction (0..1) by which a wait may be shortened at
	// random: a wait of d is uniform in [d×(1−Jitter), d].
	Jitter float64
	// Rand returns a float in [0, 1); default math/rand/v2.Float64.
	// Tests set it to make waits exact.
	Rand func() float64

	failures int
}

// New returns a Backoff from min to max with 20 % jitter.
func New(min, max time.Duration) *Backoff { return &Backoff{Min: min, Max: max, Jitter: 0.2} }

// Next records a failure and returns how long to wait before retrying.
func (b *Backoff) Next() time.Duration {
	d := b.Min
	for range b.failures {
		if d >= b.Max/2 {
			d = b.Max
			break
		}
		d *= 2
	}
	d = min(d, b.Max)
	b.failures++
	if b.Jitter > 0 {
		r := rand.Float64
		if b.Rand != nil {
			r = b.Rand
		}
		d -= time.Duration(float64(d) * b.Jitter * r())
	}
	return d
}

// Failures is how many failures in a row Next has counted since the last
// Reset.
func (b *Backoff) Failures() int { return b.failures }

// Reset records a success: the next wait is Min again.
func (b *Backoff) Reset() { b.failures = 0 }
