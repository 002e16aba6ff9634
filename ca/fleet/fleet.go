// Package fleet keeps what each agent reports it serves — per identity its
// serial, validity, subscribers and last renewal error — and derives from
// it, the agents and the CA slots an Overview of what is at risk, for the
// dashboard and the metrics. State is in memory: after a restart each agent's
// next full report (the first of every connection) fills it again.
package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/notify"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Slots lists the CA's key slots (*ca.Authority).
type Slots interface {
	Slots() []ca.SlotInfo
}

// Agents lists the attested agents (the store).
type Agents interface {
	ListAgents(ctx context.Context) ([]store.Agent, error)
}

// Entries looks up a registration entry (the registry), for the namespace
// and pod its selectors name.
type Entries interface {
	GetEntry(ctx context.Context, id string) (store.Entry, error)
}

// Config configures a Fleet. Zero fields take the documented defaults.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Slots       Slots
	Agents      Agents
	// Entries, if set, is asked for the entry of each identity first
	// reported, for its k8s:ns: and k8s:pod-name: selectors.
	Entries Entries
	// IssuanceFailures, if set, is added to the rotation failures counted
	// from reports (records.Recorder.IssuanceFailures).
	IssuanceFailures func() uint64
	// Heartbeat is how often agents report at the least (1m); the agent
	// list is read as often.
	Heartbeat time.Duration
	// StaleAfter is how long an agent may go without a report before it is
	// at risk (3 × Heartbeat).
	StaleAfter time.Duration
	// TokenWarning is how long before its token expires an agent is at
	// risk (5m).
	TokenWarning time.Duration
	// MaxSVIDsPerAgent bounds what one agent may report it serves (20,000).
	MaxSVIDsPerAgent int
	Clock            clock.WithTicker
	Logger           *slog.Logger
}

// Fleet keeps the agents' reports. Its methods are safe for concurrent use.
type Fleet struct {
	cfg     Config
	started time.Time

	mu       sync.RWMutex
	reports  map[string]*agentState // by agent ID
	known    map[string]store.Agent // the agent list, as last read
	failures uint64                 // last_error transitions to an error

	notify notify.Hub
	kick   chan struct{} // a report from an agent not in the list: read it again now
}

type agentState struct {
	lastReport    time.Time
	svidNotAfter  time.Time
	tokenNotAfter time.Time
	lastRotation  time.Time
	svids         map[string]*served // by entry ID
}

type served struct {
	spiffeID, serial, lastError, signerID string
	namespace, pod                        string
	notBefore, notAfter                   time.Time
	subscribers                           int
	renewals                              int
}

// New returns a Fleet; Run keeps its agent list current.
func New(cfg Config) *Fleet {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = time.Minute
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 3 * cfg.Heartbeat
	}
	if cfg.TokenWarning <= 0 {
		cfg.TokenWarning = 5 * time.Minute
	}
	if cfg.MaxSVIDsPerAgent <= 0 {
		cfg.MaxSVIDsPerAgent = 20_000
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Fleet{
		cfg:     cfg,
		started: cfg.Clock.Now(),
		reports: map[string]*agentState{},
		known:   map[string]store.Agent{},
		kick:    make(chan struct{}, 1),
	}
}

// Run reads the agent list at once, every Heartbeat and when an agent not in
// it reports (one just attested), until ctx is done; forgets the reports of
// agents no longer in it (evicted), and tells subscribers each time, so that
// what time puts at risk shows. A failed read is logged and the previous
// list kept.
func (f *Fleet) Run(ctx context.Context) error {
	tick := f.cfg.Clock.NewTicker(f.cfg.Heartbeat)
	defer tick.Stop()
	for {
		if err := f.Refresh(ctx); err != nil && ctx.Err() == nil {
			f.cfg.Logger.Warn("list agents failed", logkey.Error, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
		case <-f.kick:
		}
	}
}

// Refresh reads the agent list now.
func (f *Fleet) Refresh(ctx context.Context) error {
	if f.cfg.Agents == nil {
		return nil
	}
	asOf := f.cfg.Clock.Now()
	agents, err := f.cfg.Agents.ListAgents(ctx)
	if err != nil {
		return fmt.Errorf("fleet: list agents: %w", err)
	}
	known := make(map[string]store.Agent, len(agents))
	for _, a := range agents {
		known[a.ID] = a
	}
	f.mu.Lock()
	f.known = known
	for id, st := range f.reports {
		if _, ok := known[id]; !ok && st.lastReport.Before(asOf) {
			delete(f.reports, id)
		}
	}
	f.mu.Unlock()
	f.notify.Send()
	return nil
}

// Field bounds of a report.
const (
	maxIDLen     = 2048 // entry IDs, SPIFFE IDs
	maxSerialLen = 64
	maxSignerLen = 256
	maxErrorLen  = 512 // longer errors are cut
)

// Report applies a report from the agent agentID, authenticated by the
// caller: a full report replaces what the agent reported before, any other
// adds or replaces the identities it names and forgets the removed ones. A
// zero agent_svid_not_after or agent_token_not_after of a partial report
// keeps the earlier value. A report refused (ErrInvalid) changes nothing.
func (f *Fleet) Report(ctx context.Context, agentID string, r *tallyv1.ReportSVIDsRequest) error {
	now := f.cfg.Clock.Now()
	in := make(map[string]*served, len(r.GetSvids()))
	for i, s := range r.GetSvids() {
		sv, err := servedFrom(s)
		if err != nil {
			return fmt.Errorf("%w: svid %d: %w", ErrInvalid, i, err)
		}
		in[s.GetEntryId()] = sv
	}
	f.place(ctx, agentID, in)

	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.known[agentID]; !ok {
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
	st := f.reports[agentID]
	if st == nil {
		st = &agentState{svids: map[string]*served{}}
	}
	old := st.svids
	if n := sizeAfter(old, r, in); n > f.cfg.MaxSVIDsPerAgent {
		return fmt.Errorf("%w: agent would serve %d identities, at most %d", ErrInvalid, n, f.cfg.MaxSVIDsPerAgent)
	}
	if r.GetFull() {
		st.svids = make(map[string]*served, len(in))
		st.svidNotAfter, st.tokenNotAfter = unix(r.GetAgentSvidNotAfter()), unix(r.GetAgentTokenNotAfter())
	} else {
		for _, id := range r.GetRemovedEntryIds() {
			delete(st.svids, id)
		}
		if t := r.GetAgentSvidNotAfter(); t != 0 {
			st.svidNotAfter = unix(t)
		}
		if t := r.GetAgentTokenNotAfter(); t != 0 {
			st.tokenNotAfter = unix(t)
		}
	}
	for id, s := range in {
		prev := old[id]
		if prev != nil {
			s.renewals = prev.renewals
			if s.serial != prev.serial {
				s.renewals++
			}
			if s.namespace == "" && s.pod == "" && s.spiffeID == prev.spiffeID {
				s.namespace, s.pod = prev.namespace, prev.pod
			}
		}
		if s.lastError != "" && (prev == nil || prev.lastError != s.lastError) {
			f.failures++
		}
		if s.notBefore.After(st.lastRotation) {
			st.lastRotation = s.notBefore
		}
		st.svids[id] = s
	}
	st.lastReport = now
	f.reports[agentID] = st
	f.notify.Send()
	return nil
}

// sizeAfter is how many identities an agent serving old serves after the
// report r of the identities in.
func sizeAfter(old map[string]*served, r *tallyv1.ReportSVIDsRequest, in map[string]*served) int {
	if r.GetFull() {
		return len(in)
	}
	n := len(old)
	var gone map[string]bool
	for _, id := range r.GetRemovedEntryIds() {
		if _, ok := old[id]; ok && !gone[id] {
			if gone == nil {
				gone = map[string]bool{}
			}
			gone[id] = true
			n--
		}
	}
	for id := range in {
		if _, ok := old[id]; !ok || gone[id] {
			n++
		}
	}
	return n
}

func servedFrom(s *tallyv1.ServedSVID) (*served, error) {
	switch {
	case s.GetEntryId() == "":
		return nil, fmt.Errorf("entry_id is empty")
	case len(s.GetEntryId()) > maxIDLen, len(s.GetSpiffeId()) > maxIDLen:
		return nil, fmt.Errorf("entry_id or spiffe_id longer than %d bytes", maxIDLen)
	case len(s.GetSerial()) > maxSerialLen:
		return nil, fmt.Errorf("serial longer than %d bytes", maxSerialLen)
	case len(s.GetSignerId()) > maxSignerLen:
		return nil, fmt.Errorf("signer_id longer than %d bytes", maxSignerLen)
	case s.GetSubscribers() < 0:
		return nil, fmt.Errorf("negative subscribers")
	}
	return &served{
		spiffeID:    strings.Clone(s.GetSpiffeId()),
		serial:      strings.Clone(s.GetSerial()),
		lastError:   truncate(s.GetLastError(), maxErrorLen),
		signerID:    strings.Clone(s.GetSignerId()),
		notBefore:   unix(s.GetNotBefore()),
		notAfter:    unix(s.GetNotAfter()),
		subscribers: int(s.GetSubscribers()),
		namespace:   namespaceOfID(s.GetSpiffeId()),
	}, nil
}

// place sets the namespace and pod of the identities agentID did not serve
// before, from their entries' selectors, asking Entries outside the lock.
func (f *Fleet) place(ctx context.Context, agentID string, in map[string]*served) {
	if f.cfg.Entries == nil {
		return
	}
	f.mu.RLock()
	var fresh []string
	old := f.reports[agentID]
	for id, s := range in {
		if old == nil || old.svids[id] == nil || old.svids[id].spiffeID != s.spiffeID {
			fresh = append(fresh, id)
		}
	}
	f.mu.RUnlock()
	for _, id := range fresh {
		e, err := f.cfg.Entries.GetEntry(ctx, id)
		if err != nil {
			continue // deleted meanwhile, or the store is down: no placement
		}
		s := in[id]
		for _, sel := range e.Selectors {
			if sel.Type != "k8s" {
				continue
			}
			if ns, ok := strings.CutPrefix(sel.Value, "ns:"); ok {
				s.namespace = ns
			}
			if pod, ok := strings.CutPrefix(sel.Value, "pod-name:"); ok {
				s.pod = pod
			}
		}
	}
}

// namespaceOfID returns <ns> of a SPIFFE ID with an /ns/<ns>/ path, the
// Kubernetes convention.
func namespaceOfID(id string) string {
	_, path, ok := strings.Cut(strings.TrimPrefix(id, "spiffe://"), "/")
	if !ok {
		return ""
	}
	segs := strings.Split(path, "/")
	for i := 0; i+1 < len(segs); i++ {
		if segs[i] == "ns" {
			return segs[i+1]
		}
	}
	return ""
}

// Subscribe returns a channel that receives a value (the latest wins) after
// each report and each agent list read, and a function that ends the
// subscription. Nothing waits for a subscriber.
func (f *Fleet) Subscribe() (<-chan struct{}, func()) { return f.notify.Subscribe() }

func unix(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

// truncate cuts s to at most n bytes at a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return strings.Clone(s)
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.Clone(s[:n])
}
