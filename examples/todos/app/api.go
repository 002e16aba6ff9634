package app

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"

	"github.com/tallyid/tally/internal/logkey"
)

// Todo is a todo as todos answers it.
type Todo struct {
	ID    int    `json:"id"`
	Title string `json:"title"`
	// Owner is the owner's email.
	Owner      string   `json:"owner"`
	SharedWith []string `json:"shared_with,omitempty"`
	DueToday   bool     `json:"due_today,omitempty"`
}

// Answer is what todos answers: todos, and, to a request made on behalf of
// a user, whom it served (the user's email) and via which services (the
// actor chain of the delegated token, the service that called todos first).
type Answer struct {
	For   string   `json:"for,omitempty"`
	Via   []string `json:"via,omitempty"`
	Todos []Todo   `json:"todos"`
}

// ShareRequest asks to share the todo with ID Todo with the user whose email
// is With. Todos takes the ID from the path instead.
type ShareRequest struct {
	Todo int    `json:"todo,omitempty"`
	With string `json:"with"`
}

// AnsweredBy is the header of every answer that names who answered it:
// todos, reminders or shares, or tally for an exchange Tally refused. A
// service passing an answer on keeps the header, so the demo can tell who
// refused a request several hops away.
const AnsweredBy = "Answered-By"

// answeredBy names the service name in the AnsweredBy header of h's
// answers.
func answeredBy(name string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(AnsweredBy, name)
		h.ServeHTTP(w, r)
	})
}

// relay sends req with c, to the service callee, and passes its answer on to
// w: status, body and AnsweredBy. A request that got no answer (a refused
// TLS handshake, say) is answered 502, as by callee, with the error.
func relay(w http.ResponseWriter, log *slog.Logger, c *http.Client, req *http.Request, callee string) {
	resp, err := c.Do(req)
	if err != nil {
		var u *url.Error
		if errors.As(err, &u) {
			err = u.Err // without the method and the URL
		}
		log.Info("call failed", "callee", callee, logkey.Error, err)
		w.Header().Set(AnsweredBy, callee)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	w.Header().Set(AnsweredBy, resp.Header.Get(AnsweredBy))
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, io.LimitReader(resp.Body, 1<<20))
}

// writeJSON answers v as JSON.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// readJSON decodes the body of r, at most 64 KiB, into v, or answers 400
// and returns false.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(v); err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}
