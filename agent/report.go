package agent

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/backoff"
	"github.com/tallyid/tally/internal/logkey"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// ReporterConfig's defaults.
const (
	DefaultReportInterval  = 5 * time.Second
	DefaultReportHeartbeat = time.Minute
)

// reportTimeout bounds one ReportSVIDs call.
const reportTimeout = 10 * time.Second

// maxReportedError bounds the bytes of a last_error reported.
const maxReportedError = 512

// ReporterConfig configures a Reporter.
type ReporterConfig struct {
	// Session's connection carries the reports; its sync streams start
	// them over. Cache is what they are of.
	Session *Session
	Cache   *Cache
	// TokenNotAfter, if set, is when the token the agent attests with
	// expires, zero if unknown (TokenExpiry.NotAfter).
	TokenNotAfter func() time.Time
	// Interval is the least time between two reports: changes within it go
	// in one. Default DefaultReportInterval.
	Interval time.Duration
	// Heartbeat is the longest silence: a report with no change is sent
	// after it. Default DefaultReportHeartbeat; at least Interval.
	Heartbeat time.Duration
	Metrics   *Metrics
	// Clock default: real. Logger default: discard.
	Clock  clock.WithTicker
	Logger *slog.Logger
}

// Reporter tells the server what the agent serves (Node.ReportSVIDs): per
// identity, the SVID's serial, validity and signer, the Workload API
// streams subscribed to it and its last mint error; and when the agent's
// own SVID and token expire. Every sync stream gets a full report once it
// applied its first step (a new connection, or a server that restarted and
// so forgot); after that only changes go, at most one report per Interval,
// and one with no change after Heartbeat of silence, so that the server can
// tell a live agent from one that stopped. A failed report is retried with
// backoff (Interval doubling up to Heartbeat) as a full one. A server
// without ReportSVIDs (Unimplemented) is logged once, at debug, and asked
// again on the next stream only.
type Reporter struct {
	cfg      ReporterConfig
	log      *slog.Logger
	noReport sync.Once // logs the first Unimplemented
}

// NewReporter returns a Reporter; Run drives it.
func NewReporter(cfg ReporterConfig) *Reporter {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultReportInterval
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultReportHeartbeat
	}
	cfg.Heartbeat = max(cfg.Heartbeat, cfg.Interval)
	if cfg.TokenNotAfter == nil {
		cfg.TokenNotAfter = func() time.Time { return time.Time{} }
	}
	return &Reporter{cfg: cfg, log: cfg.Logger}
}

// servedSVID is what the agent serves for one entry (tallyv1.ServedSVID);
// comparable, to find changes.
type servedSVID struct {
	spiffeID, serial, signer string
	notBefore, notAfter      int64
	subscribers              int32
	lastError                string
}

func (s servedSVID) proto(entryID string) *tallyv1.ServedSVID {
	return &tallyv1.ServedSVID{EntryId: entryID, SpiffeId: s.spiffeID, Serial: s.serial, NotBefore: s.notBefore,
		NotAfter: s.notAfter, Subscribers: s.subscribers, LastError: s.lastError, SignerId: s.signer}
}

// served is what the cache serves, by entry ID: every entry with an SVID
// held (subscribed to or kept in the LRU), and every entry a workload is
// subscribed to without an SVID (its mint pending or failing). Safe for
// concurrent use.
func (c *Cache) served() map[string]servedSVID {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]servedSVID, c.svids.len())
	for id, s := range c.svids.all() {
		out[id] = servedSVID{spiffeID: s.svid.ID.String(), serial: s.serial, signer: s.signer,
			notBefore: s.notBefore.Unix(), notAfter: s.svid.ExpiresAt.Unix(),
			subscribers: int32(c.svids.subscribers(id)), lastError: truncate(c.lastErr[id], maxReportedError)}
	}
	for id := range c.svids.neededIDs() {
		if _, ok := out[id]; ok {
			continue
		}
		if e := c.entries.get(id); e != nil {
			out[id] = servedSVID{spiffeID: e.SPIFFEID.String(), subscribers: int32(c.svids.subscribers(id)),
				lastError: truncate(c.lastErr[id], maxReportedError)}
		}
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// reportState is the server's view of this agent, as far as the reporter
// knows.
type reportState struct {
	stream        uint64 // the sync stream it is of; 0: none, the next report is full
	unimplemented bool   // stream's server has no ReportSVIDs
	sent          map[string]servedSVID
	agentNotAfter int64
	tokenNotAfter int64
	at            time.Time // of the last call
	notBefore     time.Time // of the next call: Interval, or backoff after a failure
}

// Run reports until ctx is done, then returns nil.
func (r *Reporter) Run(ctx context.Context) error {
	var st reportState
	bo := backoff.New(r.cfg.Interval, r.cfg.Heartbeat)
	for {
		stream, up := r.cfg.Session.syncStreams()
		if stream == 0 || (st.unimplemented && stream == st.stream) {
			select { // no stream yet, or its server does not take reports
			case <-ctx.Done():
				return nil
			case <-up:
				continue
			}
		}
		if d := st.notBefore.Sub(r.cfg.Clock.Now()); d > 0 {
			if !r.sleep(ctx, d, nil) {
				return nil
			}
			continue
		}
		select { // the snapshot next sees every change until now
		case <-r.cfg.Cache.changes:
		default:
		}
		req, served, kind := r.next(&st, stream)
		if req == nil {
			// Nothing to say: wait for a change, a new stream or the heartbeat.
			if !r.sleep(ctx, st.at.Add(r.cfg.Heartbeat).Sub(r.cfg.Clock.Now()), up) {
				return nil
			}
			continue
		}
		if !r.send(ctx, &st, bo, stream, req, served, kind) {
			return nil
		}
	}
}

// sleep waits d on the clock, a change of the cache or until up is
// closed; false if ctx ended.
func (r *Reporter) sleep(ctx context.Context, d time.Duration, up <-chan struct{}) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := r.cfg.Clock.NewTimer(d)
	defer t.Stop()
	var changes <-chan struct{}
	if up != nil {
		changes = r.cfg.Cache.changes
	}
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
	case <-up:
	case <-changes:
	}
	return true
}

// next is the report due for stream, with the view it gives the server and
// its kind (full, delta or heartbeat); nil if none is due.
func (r *Reporter) next(st *reportState, stream uint64) (*tallyv1.ReportSVIDsRequest, map[string]servedSVID, string) {
	served := r.cfg.Cache.served()
	req := &tallyv1.ReportSVIDsRequest{
		AgentSvidNotAfter:  unixOrZero(r.cfg.Session.SVIDNotAfter()),
		AgentTokenNotAfter: unixOrZero(r.cfg.TokenNotAfter()),
	}
	if stream != st.stream {
		req.Full = true
		for id, s := range served {
			req.Svids = append(req.Svids, s.proto(id))
		}
		sort.Slice(req.Svids, func(i, j int) bool { return req.Svids[i].EntryId < req.Svids[j].EntryId })
		return req, served, "full"
	}
	for id, s := range served {
		if old, ok := st.sent[id]; !ok || old != s {
			req.Svids = append(req.Svids, s.proto(id))
		}
	}
	for id := range st.sent {
		if _, ok := served[id]; !ok {
			req.RemovedEntryIds = append(req.RemovedEntryIds, id)
		}
	}
	sort.Slice(req.Svids, func(i, j int) bool { return req.Svids[i].EntryId < req.Svids[j].EntryId })
	sort.Strings(req.RemovedEntryIds)
	switch {
	case len(req.Svids) > 0 || len(req.RemovedEntryIds) > 0 ||
		req.AgentSvidNotAfter != st.agentNotAfter || req.AgentTokenNotAfter != st.tokenNotAfter:
		return req, served, "delta"
	case !r.cfg.Clock.Now().Before(st.at.Add(r.cfg.Heartbeat)):
		return req, served, "heartbeat"
	}
	return nil, nil, ""
}

// send makes one ReportSVIDs call and updates st by its outcome; false if
// ctx ended.
func (r *Reporter) send(ctx context.Context, st *reportState, bo *backoff.Backoff, stream uint64, req *tallyv1.ReportSVIDsRequest, served map[string]servedSVID, kind string) bool {
	node, _ := r.cfg.Session.conn.Node()
	cctx, cancel := context.WithTimeout(ctx, reportTimeout)
	_, err := node.ReportSVIDs(cctx, req)
	cancel()
	if ctx.Err() != nil {
		return false
	}
	now := r.cfg.Clock.Now()
	st.at = now
	switch {
	case err == nil:
		r.cfg.Metrics.reports.WithLabelValues(kind, "ok").Inc()
		st.stream, st.unimplemented, st.sent = stream, false, served
		st.agentNotAfter, st.tokenNotAfter = req.AgentSvidNotAfter, req.AgentTokenNotAfter
		st.notBefore = now.Add(r.cfg.Interval)
		bo.Reset()
	case status.Code(err) == codes.Unimplemented:
		r.cfg.Metrics.reports.WithLabelValues(kind, "unimplemented").Inc()
		r.noReport.Do(func() {
			r.log.Debug("the server does not take SVID reports (ReportSVIDs); asking again on the next sync stream", logkey.Error, err)
		})
		st.stream, st.unimplemented, st.sent = stream, true, nil
		st.notBefore = now.Add(r.cfg.Interval)
	default:
		r.cfg.Metrics.reports.WithLabelValues(kind, "error").Inc()
		d := bo.Next()
		r.log.Warn("reporting served SVIDs", logkey.Error, err, logkey.RetryIn, d)
		st.stream, st.unimplemented, st.sent = 0, false, nil // the server's view is unknown: full next
		st.notBefore = now.Add(d)
	}
	return true
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}
