package records

import (
	"encoding/hex"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// interner maps strings to small reference-counted IDs, so that the ring
// and the index hold each SPIFFE ID, agent ID or key ID once. A string is
// forgotten when its last reference goes: the table is bounded by what the
// ring and the index hold. ID 0 is "". Not safe for concurrent use.
type interner struct {
	ids  map[string]uint32
	strs []interned // by ID
	free []uint32
}

type interned struct {
	s    string
	refs uint32
}

func newInterner() *interner {
	return &interner{ids: map[string]uint32{}, strs: []interned{{}}}
}

// MaxField bounds every string of a recorded Event: longer ones are cut
// (at a character boundary) to this many bytes.
const MaxField = 2048

// ref returns the ID of s (cut to MaxField), taking a reference.
func (in *interner) ref(s string) uint32 {
	if s == "" {
		return 0
	}
	s = cut(s)
	if id, ok := in.ids[s]; ok {
		in.strs[id].refs++
		return id
	}
	s = strings.Clone(s) // never keep the caller's (larger) buffer alive
	var id uint32
	if n := len(in.free); n > 0 {
		id, in.free = in.free[n-1], in.free[:n-1]
		in.strs[id] = interned{s: s, refs: 1}
	} else {
		id = uint32(len(in.strs))
		in.strs = append(in.strs, interned{s: s, refs: 1})
	}
	in.ids[s] = id
	return id
}

// again takes one more reference to id.
func (in *interner) again(id uint32) {
	if id != 0 {
		in.strs[id].refs++
	}
}

// unref gives back a reference to id.
func (in *interner) unref(id uint32) {
	if id == 0 {
		return
	}
	e := &in.strs[id]
	if e.refs--; e.refs == 0 {
		delete(in.ids, e.s)
		e.s = ""
		in.free = append(in.free, id)
	}
}

// lookup returns the ID of s without taking a reference.
func (in *interner) lookup(s string) (uint32, bool) {
	if s == "" {
		return 0, true
	}
	id, ok := in.ids[cut(s)]
	return id, ok
}

// cut returns s cut to MaxField bytes at a character boundary.
func cut(s string) string {
	if len(s) <= MaxField {
		return s
	}
	n := MaxField
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func (in *interner) str(id uint32) string { return in.strs[id].s }

// len is how many strings are held.
func (in *interner) len() int { return len(in.ids) }

// packed is an Event as the ring stores it: 72 bytes and no pointers, the
// strings interned, the serial as bytes.
type packed struct {
	at                  int64 // Unix nanoseconds; zeroNano for the zero time
	notBefore, notAfter int64 // Unix seconds
	kind, spiffeID      uint32
	agentID, entryID    uint32
	keyID, detail       uint32
	serial              [maxSerialBytes]byte // right-aligned; or the serial's intern ID
	serialLen           uint8                // hex digits; serialInterned if not canonical hex
	flags               uint8
}

const (
	maxSerialBytes = 20 // RFC 5280
	serialInterned = 0xff
	flagRenewal    = 1 << 0
	flagFailed     = 1 << 1
	zeroNano       = math.MinInt64
)

// pack returns e packed, with a reference taken on each of its strings.
func (in *interner) pack(e *Event) packed {
	p := packed{
		at:        nanos(e.At),
		notBefore: e.NotBefore.Unix(),
		notAfter:  e.NotAfter.Unix(),
		kind:      in.ref(string(e.Kind)),
		spiffeID:  in.ref(e.SPIFFEID),
		agentID:   in.ref(e.AgentID),
		entryID:   in.ref(e.EntryID),
		keyID:     in.ref(e.KeyID),
		detail:    in.ref(e.Detail),
	}
	if e.Renewal {
		p.flags |= flagRenewal
	}
	if e.Failed {
		p.flags |= flagFailed
	}
	if !packSerial(&p, e.Serial) {
		p.serialLen = serialInterned
		id := in.ref(e.Serial)
		p.serial[0], p.serial[1], p.serial[2], p.serial[3] = byte(id), byte(id>>8), byte(id>>16), byte(id>>24)
	}
	return p
}

// packSerial stores s, lowercase hex of at most 40 digits, in p.
func packSerial(p *packed, s string) bool {
	if len(s) > 2*maxSerialBytes {
		return false
	}
	var b [maxSerialBytes]byte
	for i := range len(s) {
		c := s[len(s)-1-i] // the i-th digit from the right
		var v byte
		switch {
		case '0' <= c && c <= '9':
			v = c - '0'
		case 'a' <= c && c <= 'f':
			v = c - 'a' + 10
		default:
			return false
		}
		b[maxSerialBytes-1-i/2] |= v << (4 * (i % 2))
	}
	p.serial, p.serialLen = b, uint8(len(s))
	return true
}

func (p *packed) serialID() uint32 {
	return uint32(p.serial[0]) | uint32(p.serial[1])<<8 | uint32(p.serial[2])<<16 | uint32(p.serial[3])<<24
}

// retain takes one more reference on each string of p.
func (in *interner) retain(p *packed) {
	for _, id := range [...]uint32{p.kind, p.spiffeID, p.agentID, p.entryID, p.keyID, p.detail} {
		in.again(id)
	}
	if p.serialLen == serialInterned {
		in.again(p.serialID())
	}
}

// release gives back the references of p.
func (in *interner) release(p *packed) {
	for _, id := range [...]uint32{p.kind, p.spiffeID, p.agentID, p.entryID, p.keyID, p.detail} {
		in.unref(id)
	}
	if p.serialLen == serialInterned {
		in.unref(p.serialID())
	}
}

// unpack returns the Event p stores.
func (in *interner) unpack(p *packed) Event {
	e := Event{
		Kind:      Kind(in.str(p.kind)),
		SPIFFEID:  in.str(p.spiffeID),
		AgentID:   in.str(p.agentID),
		EntryID:   in.str(p.entryID),
		At:        fromNanos(p.at),
		NotBefore: fromSeconds(p.notBefore),
		NotAfter:  fromSeconds(p.notAfter),
		KeyID:     in.str(p.keyID),
		Renewal:   p.flags&flagRenewal != 0,
		Failed:    p.flags&flagFailed != 0,
		Detail:    in.str(p.detail),
	}
	switch {
	case p.serialLen == serialInterned:
		e.Serial = in.str(p.serialID())
	case p.serialLen > 0:
		s := hex.EncodeToString(p.serial[:])
		e.Serial = s[len(s)-int(p.serialLen):]
	}
	return e
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return zeroNano
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == zeroNano {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func fromSeconds(s int64) time.Time {
	t := time.Unix(s, 0).UTC()
	if t.IsZero() {
		return time.Time{}
	}
	return t
}
