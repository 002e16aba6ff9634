package dashboard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"k8s.io/utils/clock"
)

// Run follows the Source until ctx is done: each change (coalesced, at most
// one per MinInterval) and each Refresh starts a new generation, which every
// open event stream is told of. When Run returns, the event streams end, so
// that the web server's shutdown does not wait for them. It returns nil
// once ctx is done; it may be called once.
func (h *Handler) Run(ctx context.Context) error {
	first := false
	h.running.Do(func() { first = true })
	if !first {
		return errors.New("dashboard: Run called twice")
	}
	defer close(h.stopped)
	changed, cancel := h.cfg.Source.Subscribe()
	defer cancel()
	refresh := h.cfg.Clock.NewTicker(h.cfg.Refresh)
	defer refresh.Stop()

	var last time.Time
	var pending clock.Timer // a coalesced change waiting for MinInterval
	var pendingC <-chan time.Time
	publish := func() {
		if pending != nil {
			pending.Stop()
			pending, pendingC = nil, nil
		}
		last = h.cfg.Clock.Now()
		h.publish()
	}
	for {
		select {
		case <-ctx.Done():
			if pending != nil {
				pending.Stop()
			}
			return nil
		case <-changed:
			if pending != nil {
				continue
			}
			if wait := h.cfg.MinInterval - h.cfg.Clock.Since(last); wait > 0 {
				pending = h.cfg.Clock.NewTimer(wait)
				pendingC = pending.C()
				continue
			}
			publish()
		case <-pendingC:
			publish()
		case <-refresh.C():
			if pending == nil {
				publish()
			}
		}
	}
}

// publish starts a generation and tells every stream, latest wins: a
// stream that has not taken the last one gets this one instead.
func (h *Handler) publish() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen++
	for ch := range h.streams {
		select {
		case <-ch:
		default:
		}
		ch <- h.gen
	}
}

func (h *Handler) generation() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gen
}

// join opens a stream's channel, unless MaxStreams are open.
func (h *Handler) join() (<-chan uint64, func(), bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.streams) >= h.cfg.MaxStreams {
		return nil, nil, false
	}
	ch := make(chan uint64, 1)
	h.streams[ch] = struct{}{}
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.streams, ch)
	}, true
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(coding), "gzip") && strings.ReplaceAll(params, " ", "") != "q=0" {
			return true
		}
	}
	return false
}

// events streams server-sent events: "changed" with the generation, at once
// and after each change; "expired" when the caller's credentials end (or
// the session is closed), after which the stream ends; a keep-alive comment
// every KeepAlive.
func (h *Handler) events(w http.ResponseWriter, r *http.Request, p principal) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream outlives the server's WriteTimeout
	gens, leave, ok := h.join()
	if !ok {
		http.Error(w, "too many event streams", http.StatusServiceUnavailable)
		return
	}
	defer leave()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	session := ""
	if p.via == "session" {
		if c, err := r.Cookie(SessionCookie); err == nil {
			session = c.Value
		}
	}
	keepAlive := h.cfg.Clock.NewTicker(h.cfg.KeepAlive)
	defer keepAlive.Stop()
	expiry := h.cfg.Clock.NewTimer(p.expires.Sub(h.cfg.Clock.Now()))
	defer expiry.Stop()

	send := func(format string, args ...any) bool {
		if _, err := fmt.Fprintf(w, format, args...); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	valid := func() bool {
		if session == "" {
			return true
		}
		_, ok := h.sessions.lookup(session, h.cfg.Clock.Now())
		return ok
	}
	if !send("retry: 2000\nevent: changed\ndata: {\"gen\":%d}\n\n", h.generation()) {
		return
	}
	for {
		var ok bool
		select {
		case <-r.Context().Done():
			return
		case <-h.stopped:
			return
		case <-expiry.C():
			send("event: expired\ndata: {}\n\n")
			return
		case gen := <-gens:
			if !valid() {
				send("event: expired\ndata: {}\n\n")
				return
			}
			ok = send("event: changed\ndata: {\"gen\":%d}\n\n", gen)
		case <-keepAlive.C():
			if !valid() {
				send("event: expired\ndata: {}\n\n")
				return
			}
			ok = send(": keep-alive\n\n")
		}
		if !ok {
			return
		}
	}
}
