package records

import "time"

// Counts are the events of one kind.
type Counts struct {
	// First are the first issuances (attestation: first attestations;
	// rotation: slot changes), Renewals the renewals (re-attestations),
	// Failures those that failed, whichever their flags.
	First    int `json:"first"`
	Renewals int `json:"renewals"`
	Failures int `json:"failures"`
}

// Total is every event counted.
func (c Counts) Total() int { return c.First + c.Renewals + c.Failures }

// Bucket is the events of one minute (or, from Totals, of all time), by
// kind. Events of another Kind are not counted.
type Bucket struct {
	Start       time.Time `json:"start"`
	X509        Counts    `json:"x509"`
	JWT         Counts    `json:"jwt"`
	Attestation Counts    `json:"attestation"`
	Rotation    Counts    `json:"rotation"`
}

const (
	kindX509 = iota
	kindJWT
	kindAttestation
	kindRotation
	kindOther
	numKinds
)

func kindIndex(k Kind) int {
	switch k {
	case KindX509:
		return kindX509
	case KindJWT:
		return kindJWT
	case KindAttestation:
		return kindAttestation
	case KindRotation:
		return kindRotation
	}
	return kindOther
}

// counts is Counts as a bucket stores it.
type counts struct{ first, renewals, failures uint32 }

func (c *counts) add(flags uint8) {
	switch {
	case flags&flagFailed != 0:
		c.failures++
	case flags&flagRenewal != 0:
		c.renewals++
	default:
		c.first++
	}
}

func (c counts) public() Counts {
	return Counts{First: int(c.first), Renewals: int(c.renewals), Failures: int(c.failures)}
}

func toBucket(start time.Time, c *[numKinds]counts) Bucket {
	return Bucket{Start: start, X509: c[kindX509].public(), JWT: c[kindJWT].public(),
		Attestation: c[kindAttestation].public(), Rotation: c[kindRotation].public()}
}

// buckets is a ring of per-minute counts: the minute m is in slot m % len,
// which holds it if its minute says so.
type buckets struct {
	slots []minuteCounts
}

type minuteCounts struct {
	minute int64 // Unix minutes; the slot is empty unless it is the one asked for
	counts [numKinds]counts
}

func newBuckets(n int) *buckets {
	b := &buckets{slots: make([]minuteCounts, n)}
	for i := range b.slots {
		b.slots[i].minute = -1
	}
	return b
}

func unixMinute(nanos int64) int64 {
	m := nanos / int64(time.Minute)
	if nanos < 0 && nanos%int64(time.Minute) != 0 {
		m--
	}
	return m
}

// add counts an event at (Unix nanoseconds) of kind k, unless its minute is
// older than the one its slot now holds.
func (b *buckets) add(at int64, k int, flags uint8) {
	if at == zeroNano {
		return
	}
	m := unixMinute(at)
	s := &b.slots[mod(m, len(b.slots))]
	switch {
	case s.minute == m:
	case s.minute < m:
		*s = minuteCounts{minute: m}
	default:
		return
	}
	s.counts[k].add(flags)
}

func (b *buckets) since(since, now time.Time) []Bucket {
	if since.After(now) {
		return nil
	}
	last := unixMinute(now.UnixNano())
	first := last - int64(len(b.slots)) + 1
	if since.After(time.Unix(first*60, 0)) { // also keeps UnixNano in range
		first = unixMinute(since.UnixNano())
	}
	if first > last {
		return nil
	}
	out := make([]Bucket, 0, last-first+1)
	for m := first; m <= last; m++ {
		start := time.Unix(m*60, 0).UTC()
		if s := &b.slots[mod(m, len(b.slots))]; s.minute == m {
			out = append(out, toBucket(start, &s.counts))
		} else {
			out = append(out, Bucket{Start: start})
		}
	}
	return out
}

func mod(m int64, n int) int {
	r := int(m % int64(n))
	if r < 0 {
		r += n
	}
	return r
}
