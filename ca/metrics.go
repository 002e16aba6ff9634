package ca

// Metrics receives events from the authority, for Prometheus counters and the
// dashboard. Methods are called synchronously, possibly concurrently, and must
// be fast; they must not call back into the Authority.
type Metrics interface {
	// SVIDSigned is called after every signing attempt; err is nil on success.
	SVIDSigned(kind Kind, err error)
	// SlotChanged is called after a slot change has been persisted: a key
	// was prepared, activated, moved to old, or dropped (StatusDropped).
	SlotChanged(slot SlotInfo)
}

type nopMetrics struct{}

func (nopMetrics) SVIDSigned(Kind, error) {}
func (nopMetrics) SlotChanged(SlotInfo)   {}
