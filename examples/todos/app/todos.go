package app

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/delegation"
	"github.com/tallyid/tally/internal/logkey"
)

// NewTodos returns the todos service. Serve it with an authoriser that
// admits reminders and shares: the TLS handshake says which service calls.
// Its routes:
//
//	GET  /todos/due         reminders, acting for itself: the todos due today
//	GET  /todos/shared      shares, on behalf of a user (scope todos.read):
//	                        the todos shared with that user
//	POST /todos/{id}/share  shares, on behalf of a user (scope todos.share):
//	                        share one of that user's todos (body ShareRequest)
//
// On whose behalf a request is made is what its delegated token says: a
// JWT-SVID that Tally issued to the calling service for todos, carrying the
// user, verified by verifier (for todos's SPIFFE ID). Without it a request
// to those routes is refused, even from a service todos accepts; so is a
// token that Tally issued to another service than the one presenting it
// (its sub is not the TLS peer's SPIFFE ID).
func NewTodos(store *Store, verifier *delegation.Verifier, log *slog.Logger) http.Handler {
	t := &todos{store: store, log: log}
	onBehalf := func(scope string, h http.HandlerFunc) http.Handler {
		return verifier.Middleware(delegation.RequireScope(scope, h))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /todos/due", onlyFrom(RemindersID, http.HandlerFunc(t.due)))
	mux.Handle("GET /todos/shared", onBehalf(ScopeRead, t.shared))
	mux.Handle("POST /todos/{id}/share", onBehalf(ScopeShare, t.share))
	return answeredBy("todos", mux)
}

type todos struct {
	store *Store
	log   *slog.Logger
}

func (t *todos) due(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, Answer{Todos: t.store.Due()})
}

func (t *todos) shared(w http.ResponseWriter, r *http.Request) {
	tok, user, ok := t.user(w, r)
	if !ok {
		return
	}
	writeJSON(w, Answer{For: user, Via: via(tok), Todos: t.store.SharedWith(user)})
}

func (t *todos) share(w http.ResponseWriter, r *http.Request) {
	tok, user, ok := t.user(w, r)
	if !ok {
		return
	}
	id, err := strconv.Atoi(r.PathValue("id"))
	if err != nil {
		http.Error(w, "todo id: want a number", http.StatusBadRequest)
		return
	}
	var req ShareRequest
	if !readJSON(w, r, &req) {
		return
	}
	if req.With == "" {
		http.Error(w, "with: want the email of a user", http.StatusBadRequest)
		return
	}
	todo, err := t.store.Share(id, user, req.With)
	switch {
	case errors.Is(err, ErrNoTodo):
		http.Error(w, fmt.Sprintf("no todo %d", id), http.StatusNotFound)
		return
	case errors.Is(err, ErrNotOwner):
		http.Error(w, fmt.Sprintf("%s does not own todo %d", user, id), http.StatusForbidden)
		return
	}
	writeJSON(w, Answer{For: user, Via: via(tok), Todos: []Todo{todo}})
}

// user returns the verified token of r and the email of the user it
// carries, or answers 403 and returns false.
func (t *todos) user(w http.ResponseWriter, r *http.Request) (*delegation.Token, string, bool) {
	tok, _ := delegation.FromContext(r.Context()) // the Middleware has put it there
	t.log.Info("request on behalf of a user", "route", r.Pattern, logkey.UserSubject, tok.User.Subject,
		logkey.Actor, tok.Subject.String(), logkey.Txn, tok.Txn)
	if tok.User.Email == "" {
		http.Error(w, "the token carries no email", http.StatusForbidden)
		return nil, "", false
	}
	return tok, tok.User.Email, true
}

// via is the actor chain of tok, the service that called todos first.
func via(tok *delegation.Token) []string {
	ids := make([]string, len(tok.Actors))
	for i, id := range tok.Actors {
		ids[i] = id.String()
	}
	return ids
}

// onlyFrom admits to next only requests from the workload id, acting for
// itself: a service todos accepts in the TLS handshake may still be refused
// a route.
func onlyFrom(id spiffeid.ID, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := PeerID(r)
		if err != nil || peer != id {
			http.Error(w, fmt.Sprintf("%s may not call %s", peer, r.Pattern), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// NewTodosDemo returns todos's demo-only handler, served apart from
// NewTodos's and to the demo client alone. POST /demo/call-reminders makes
// todos call reminders, which todos may never do: reminders refuses it in
// the TLS handshake, since it does not admit todos's SPIFFE ID. reminders
// is a Client for reminders at remindersURL.
func NewTodosDemo(reminders *http.Client, remindersURL string, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /demo/call-reminders", func(w http.ResponseWriter, r *http.Request) {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, remindersURL+"/reminders", nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		relay(w, log, reminders, req, "reminders")
	})
	return answeredBy("todos", mux)
}
