package app

import (
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/tallyid/tally/delegation"
)

// NewReminders returns the reminders service. todos is a Client for todos at
// todosURL. Its routes:
//
//	GET  /reminders    the todos due today, which reminders asks todos for,
//	                   acting for itself: no user, no token, only its
//	                   X509-SVID in the TLS handshake
//	POST /demo/replay  demo only: sends the delegated token in the body, as a
//	                   service that got hold of another's token would, to
//	                   todos's GET /todos/shared, and answers todos's answer
func NewReminders(todos *http.Client, todosURL string, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /reminders", func(w http.ResponseWriter, r *http.Request) {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, todosURL+"/todos/due", nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		relay(w, log, todos, req, "todos")
	})
	mux.HandleFunc("POST /demo/replay", func(w http.ResponseWriter, r *http.Request) {
		token, err := io.ReadAll(io.LimitReader(r.Body, delegation.MaxTokenSize))
		if err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, todosURL+"/todos/shared", nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		relay(w, log, todos, req, "todos")
	})
	return answeredBy("reminders", mux)
}
