package badgerstore

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"slices"

	"github.com/tallyid/tally/ca/store"
)

// Key layout. Variable-length parts inside index keys are length-prefixed
// (uvarint), so a prefix scan for one value never matches a longer value that
// happens to start with it; the entry ID is always the rest of the key.
//
//	e/<id>                                 entry JSON
//	ix/dup/<sha256 of spiffe, parent, selector set>  → entry ID
//	ix/parent/<len><parent id><id>         (empty value)
//	ix/spiffe/<len><spiffe id><id>         (empty value)
//	ix/sel/<len><type><len><value><id>     (empty value)
//	ev/<revision, 8 bytes big-endian>      event JSON
//	a/<agent id>                           agent JSON
//	jt/<sha256 of token>                   join token JSON, without the token
//	m/rev                                  newest revision, 8 bytes big-endian
//	m/pruned                               newest pruned revision, 8 bytes big-endian
//	m/journal, m/bundle                    opaque bytes
const (
	prefixEntry    = "e/"
	prefixDup      = "ix/dup/"
	prefixParent   = "ix/parent/"
	prefixSPIFFE   = "ix/spiffe/"
	prefixSelector = "ix/sel/"
	prefixEvent    = "ev/"
	prefixAgent    = "a/"
	prefixToken    = "jt/"

	keyRevision = "m/rev"
	keyPruned   = "m/pruned"
	keyJournal  = "m/journal"
	keyBundle   = "m/bundle"
)

func entryKey(id string) []byte { return append([]byte(prefixEntry), id...) }
func agentKey(id string) []byte { return append([]byte(prefixAgent), id...) }

// tokenKey holds a hash of the token, so that neither the database files
// nor a key in a log line give a usable token away.
func tokenKey(t string) []byte {
	h := sha256.Sum256([]byte(t))
	return append([]byte(prefixToken), h[:]...)
}

func eventKey(rev uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(prefixEvent), rev)
}

func revisionOf(eventKey []byte) uint64 {
	return binary.BigEndian.Uint64(eventKey[len(prefixEvent):])
}

func appendLenPrefixed(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// parentPrefix is the prefix of all index keys of entries with parent ID p;
// the entry ID follows it.
func parentPrefix(p string) []byte { return appendLenPrefixed([]byte(prefixParent), p) }

func spiffePrefix(id string) []byte { return appendLenPrefixed([]byte(prefixSPIFFE), id) }

func selectorPrefix(s store.Selector) []byte {
	return appendLenPrefixed(appendLenPrefixed([]byte(prefixSelector), s.Type), s.Value)
}

func indexKey(prefix []byte, id string) []byte {
	return append(slices.Clip(prefix), id...)
}

// dupKey identifies the entries that count as equal: same SPIFFE ID, parent
// ID and set of selectors, in any order.
func dupKey(e store.Entry) []byte {
	h := sha256.New()
	var b []byte
	b = appendLenPrefixed(b, e.SPIFFEID)
	b = appendLenPrefixed(b, e.ParentID)
	for _, s := range selectorSet(e.Selectors) {
		b = appendLenPrefixed(b, s.Type)
		b = appendLenPrefixed(b, s.Value)
	}
	h.Write(b)
	return h.Sum([]byte(prefixDup))
}

// selectorSet returns the selectors sorted and without repeats.
func selectorSet(sels []store.Selector) []store.Selector {
	set := slices.Clone(sels)
	slices.SortFunc(set, compareSelectors)
	return slices.Compact(set)
}

func compareSelectors(a, b store.Selector) int {
	return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Value, b.Value))
}

func encodeUint64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
