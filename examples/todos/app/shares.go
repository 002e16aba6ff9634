package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/tallyid/tally/delegation"
	"github.com/tallyid/tally/internal/logkey"
)

// SharesConfig is what the shares service calls.
type SharesConfig struct {
	// Exchange exchanges the user's token at Tally, through the agent.
	Exchange *delegation.Client
	// Todos is a Client for todos at TodosURL.
	Todos    *http.Client
	TodosURL string
	// Reminders is a Client for reminders at RemindersURL, for
	// /demo/replay only.
	Reminders    *http.Client
	RemindersURL string
	Log          *slog.Logger
}

// NewShares returns the shares service, which the users' edge (the demo
// client) calls with the user's OIDC access token in "Authorization:
// Bearer". Its routes:
//
//	POST /shares          share one of the user's todos (body ShareRequest)
//	GET  /shares/with-me  the todos shared with the user
//
// For each, shares exchanges the user's token, through the agent, for a
// JWT-SVID for todos that carries the user and only the scope the route of
// todos needs, and calls todos with it. Shares does not verify the user's
// token itself: Tally does, in the exchange, against the OIDC issuers of
// its policy.
//
// The routes under /demo/ are demo only: each makes shares misbehave in one
// way, to show who refuses it.
//
//	GET  /demo/no-token     call todos with no token, as if for itself
//	GET  /demo/widen        ask Tally for a scope the policy does not grant
//	POST /demo/read-scope   share a todo with a token of scope todos.read
//	GET  /demo/replay       hand the user's token for todos to reminders,
//	                        which sends it to todos as its own
func NewShares(cfg SharesConfig) http.Handler {
	s := &shares{cfg: cfg}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /shares", func(w http.ResponseWriter, r *http.Request) { s.share(w, r, ScopeShare) })
	mux.HandleFunc("GET /shares/with-me", func(w http.ResponseWriter, r *http.Request) {
		if tok, ok := s.exchange(w, r, ScopeRead); ok {
			s.callTodos(w, r, http.MethodGet, "/todos/shared", nil, tok)
		}
	})

	mux.HandleFunc("GET /demo/no-token", func(w http.ResponseWriter, r *http.Request) {
		s.callTodos(w, r, http.MethodGet, "/todos/shared", nil, nil)
	})
	mux.HandleFunc("GET /demo/widen", func(w http.ResponseWriter, r *http.Request) {
		if tok, ok := s.exchange(w, r, "todos.write"); ok {
			s.callTodos(w, r, http.MethodGet, "/todos/shared", nil, tok)
		}
	})
	mux.HandleFunc("POST /demo/read-scope", func(w http.ResponseWriter, r *http.Request) { s.share(w, r, ScopeRead) })
	mux.HandleFunc("GET /demo/replay", func(w http.ResponseWriter, r *http.Request) {
		tok, ok := s.exchange(w, r, ScopeRead)
		if !ok {
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, cfg.RemindersURL+"/demo/replay", strings.NewReader(tok.Token))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		relay(w, cfg.Log, cfg.Reminders, req, "reminders")
	})
	return answeredBy("shares", mux)
}

type shares struct {
	cfg SharesConfig
}

// share asks todos to share a todo on behalf of the user, with a token of
// scope.
func (s *shares) share(w http.ResponseWriter, r *http.Request, scope string) {
	var req ShareRequest
	if !readJSON(w, r, &req) {
		return
	}
	tok, ok := s.exchange(w, r, scope)
	if !ok {
		return
	}
	body, _ := json.Marshal(ShareRequest{With: req.With}) // never fails
	s.callTodos(w, r, http.MethodPost, fmt.Sprintf("/todos/%d/share", req.Todo), body, tok)
}

// exchange exchanges the user's token of r for a token for todos of scope,
// or answers the refusal and returns false.
func (s *shares) exchange(w http.ResponseWriter, r *http.Request, scope string) (*delegation.Issued, bool) {
	user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || user == "" {
		w.Header().Set("WWW-Authenticate", "Bearer")
		http.Error(w, "sign in first: no user token", http.StatusUnauthorized)
		return nil, false
	}
	tok, err := s.cfg.Exchange.ForAccessToken(r.Context(), user, TodosID.String(), scope)
	var refused *delegation.ExchangeError
	switch {
	case errors.As(err, &refused):
		s.cfg.Log.Info("token exchange refused", logkey.Code, refused.Code, logkey.Rule, refused.Rule)
		w.Header().Set(AnsweredBy, "tally")
		status := http.StatusForbidden
		if refused.Code == "invalid_grant" { // the user's token is not good
			status = http.StatusUnauthorized
		}
		msg := refused.Code + ": " + refused.Description
		if refused.Rule != "" {
			msg += " (rule " + refused.Rule + ")"
		}
		http.Error(w, msg, status)
		return nil, false
	case err != nil:
		s.cfg.Log.Warn("token exchange failed", logkey.Error, err)
		http.Error(w, "token exchange failed", http.StatusBadGateway)
		return nil, false
	}
	return tok, true
}

// callTodos calls todos with tok, if not nil, and body, if not nil, and
// answers todos's answer.
func (s *shares) callTodos(w http.ResponseWriter, r *http.Request, method, path string, body []byte, tok *delegation.Issued) {
	req, err := http.NewRequestWithContext(r.Context(), method, s.cfg.TodosURL+path, bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok != nil {
		tok.SetHeader(req)
	}
	relay(w, s.cfg.Log, s.cfg.Todos, req, "todos")
}
