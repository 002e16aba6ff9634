package dashboard

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// The JSON of GET /dashboard/api/overview. Times are Unix seconds, 0 for
// none. Workloads, which may be tens of thousands, are rows: arrays in the
// order of Columns, in the page's order (at risk first, then failing
// renewals, then by SPIFFE ID). In a full overview (Base 0) the repeated
// strings of a row (the columns marked "#": agent ID, node, namespace,
// signer) are indices into Strings, whose entry 0 is ""; in a delta they
// are the strings themselves. A workload is identified by its agent ID,
// entry ID and SPIFFE ID.
//
// ?since=<snap> asks for a delta: Base is that snapshot, Workloads holds
// only the rows added or changed since, and Removed the [agent, entry,
// SPIFFE ID] of those gone. A snapshot the server no longer keeps gets the
// full overview instead. Everything else is always whole.
type wireOverview struct {
	// Snap identifies this snapshot; Gen is the event generation it
	// reflects ("changed" events carry it).
	Snap        uint64      `json:"snap"`
	Base        uint64      `json:"base"`
	Gen         uint64      `json:"gen"`
	Now         int64       `json:"now"`
	TrustDomain string      `json:"trustDomain"`
	Slots       []wireSlot  `json:"slots"`
	Agents      []wireAgent `json:"agents"`
	AtRisk      []wireRisk  `json:"atRisk"`
	Buckets     [][4]int64  `json:"buckets"`
	Strings     []string    `json:"strings"`
	Columns     []string    `json:"columns"`
	// Workloads and Removed are appended to the encoded head by hand.
	Workloads json.RawMessage `json:"-"`
	Removed   [][3]string     `json:"-"`
}

type wireSlot struct {
	Kind        string   `json:"kind"`
	ID          string   `json:"id"`
	Status      string   `json:"status"`
	NotBefore   int64    `json:"notBefore"`
	NotAfter    int64    `json:"notAfter"`
	ActivatedAt int64    `json:"activatedAt"`
	Tainted     bool     `json:"tainted"`
	AtRisk      []string `json:"atRisk"`
}

type wireAgent struct {
	ID            string   `json:"id"`
	Node          string   `json:"node"`
	Attestation   string   `json:"attestation"`
	Banned        bool     `json:"banned"`
	LastReport    int64    `json:"lastReport"`
	SVIDNotAfter  int64    `json:"svidNotAfter"`
	TokenNotAfter int64    `json:"tokenNotAfter"`
	Workloads     int      `json:"workloads"`
	AtRisk        []string `json:"atRisk"`
}

type wireRisk struct {
	Kind    string `json:"kind"`
	Subject string `json:"subject"`
	Reason  string `json:"reason"`
	Since   int64  `json:"since"`
}

// workloadColumns names the fields of a workload row; "#" marks an index
// into Strings. The last is the list of risk reasons, 0 for none.
var workloadColumns = []string{
	"spiffeID", "entryID", "agent#", "node#", "namespace#", "pod", "serial", "signer#",
	"notBefore", "notAfter", "renewals", "subscribers", "lastError", "atRisk",
}

// wireBuckets encodes buckets as [minute, first, renewals, failures] rows.
func wireBuckets(bs []Bucket) [][4]int64 {
	out := make([][4]int64, len(bs))
	for i, b := range bs {
		out[i] = [4]int64{unix(b.Minute), int64(b.First), int64(b.Renewals), int64(b.Failures)}
	}
	return out
}

// head returns the overview's parts other than the workloads.
func head(snap, base, gen uint64, now time.Time, o *Overview, buckets []Bucket) wireOverview {
	w := wireOverview{
		Snap:        snap,
		Base:        base,
		Gen:         gen,
		Now:         now.Unix(),
		TrustDomain: o.TrustDomain,
		Slots:       make([]wireSlot, len(o.Slots)),
		Agents:      make([]wireAgent, len(o.Agents)),
		AtRisk:      make([]wireRisk, len(o.AtRisk)),
		Buckets:     wireBuckets(buckets),
		Columns:     workloadColumns,
		Strings:     []string{""},
	}
	for i, s := range o.Slots {
		w.Slots[i] = wireSlot{s.Kind, s.ID, s.Status, unix(s.NotBefore), unix(s.NotAfter), unix(s.ActivatedAt), s.Tainted, nonNil(s.AtRisk)}
	}
	for i, a := range o.Agents {
		w.Agents[i] = wireAgent{a.ID, a.Node, a.AttestationType, a.Banned, unix(a.LastReport), unix(a.SVIDNotAfter),
			unix(a.TokenNotAfter), a.Workloads, nonNil(a.AtRisk)}
	}
	for i, r := range o.AtRisk {
		w.AtRisk[i] = wireRisk{r.Kind, r.Subject, r.Reason, unix(r.Since)}
	}
	return w
}

// encodeFull renders the whole overview, the workloads in order (indices
// into o.Workloads).
func encodeFull(snap, gen uint64, now time.Time, o *Overview, order []int32, buckets []Bucket) ([]byte, error) {
	w := head(snap, 0, gen, now, o, buckets)
	strs := stringTable{index: map[string]int{"": 0}, list: []string{""}}
	b := make([]byte, 0, 64+len(o.Workloads)*200)
	b = append(b, '[')
	for n, i := range order {
		if n > 0 {
			b = append(b, ',')
		}
		b = appendRow(b, &o.Workloads[i], &strs)
	}
	w.Workloads = append(b, ']')
	w.Strings = strs.list
	return w.encode()
}

// encodeDelta renders the overview with only the workloads given, and those
// removed.
func encodeDelta(snap, base, gen uint64, now time.Time, o *Overview, buckets []Bucket, changed []*Workload, removed [][3]string) ([]byte, error) {
	w := head(snap, base, gen, now, o, buckets)
	b := []byte{'['}
	for i, wl := range changed {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendRow(b, wl, nil)
	}
	w.Workloads = append(b, ']')
	w.Removed = removed
	if w.Removed == nil {
		w.Removed = [][3]string{}
	}
	return w.encode()
}

// encode marshals the head and splices in the rows, which are valid JSON
// already (json.RawMessage would have them parsed and compacted again).
func (w *wireOverview) encode() ([]byte, error) {
	h, err := json.Marshal(w)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, len(h)+len(w.Workloads)+64)
	b = append(b, h[:len(h)-1]...)
	b = append(b, `,"workloads":`...)
	b = append(b, w.Workloads...)
	if w.Removed != nil {
		rm, err := json.Marshal(w.Removed)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"removed":`...)
		b = append(b, rm...)
	}
	return append(b, '}'), nil
}

// appendRow appends a workload row: the "#" columns as indices into strs,
// or as strings when strs is nil.
func appendRow(b []byte, wl *Workload, strs *stringTable) []byte {
	ref := func(b []byte, s string) []byte {
		if strs == nil {
			return appendString(b, s)
		}
		return strconv.AppendInt(b, int64(strs.of(s)), 10)
	}
	b = append(b, '[')
	b = appendString(b, wl.SPIFFEID)
	b = append(b, ',')
	b = appendString(b, wl.EntryID)
	for _, s := range [...]string{wl.AgentID, wl.Node, wl.Namespace} {
		b = append(b, ',')
		b = ref(b, s)
	}
	b = append(b, ',')
	b = appendString(b, wl.Pod)
	b = append(b, ',')
	b = appendString(b, wl.Serial)
	b = append(b, ',')
	b = ref(b, wl.SignerID)
	for _, n := range [...]int64{unix(wl.NotBefore), unix(wl.NotAfter), int64(wl.Renewals), int64(wl.Subscribers)} {
		b = append(b, ',')
		b = strconv.AppendInt(b, n, 10)
	}
	b = append(b, ',')
	b = appendString(b, wl.LastError)
	b = append(b, ',')
	if len(wl.AtRisk) == 0 {
		b = append(b, '0')
	} else {
		b = append(b, '[')
		for j, r := range wl.AtRisk {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendString(b, r)
		}
		b = append(b, ']')
	}
	return append(b, ']')
}

type stringTable struct {
	index map[string]int
	list  []string
}

func (t *stringTable) of(s string) int {
	i, ok := t.index[s]
	if !ok {
		i = len(t.list)
		t.index[s] = i
		t.list = append(t.list, s)
	}
	return i
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string: quotes, backslashes and control
// characters escaped, and <, > and & too, as encoding/json does; invalid
// UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
