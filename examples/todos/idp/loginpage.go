package idp

import (
	"context"
	"errors"
	"html/template"
	"log/slog"
	"net/http"

	"github.com/tallyid/tally/internal/logkey"
)

// The login page's contract, shared with Login: op sends the browser to
// GET loginPath?authRequestID=…; the form posts the same three fields back
// to loginPath.
const (
	loginPath         = "/login"
	formAuthRequestID = "authRequestID"
	formUsername      = "username"
	formPassword      = "password"
)

const logUser = "user"

var loginTemplate = template.Must(template.New("login").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in</h1>
{{if .Error}}<p role="alert">{{.Error}}</p>{{end}}
<form method="post" action="` + loginPath + `">
<input type="hidden" name="` + formAuthRequestID + `" value="{{.ID}}">
<label>Username <input name="` + formUsername + `" autocomplete="username" autofocus></label>
<label>Password <input name="` + formPassword + `" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form>
</body></html>
`))

// loginPage is the provider's login UI: a username and password form. A
// successful sign-in redirects to op's callback, which redirects to the
// client with a code.
type loginPage struct {
	storage  *storage
	callback func(ctx context.Context, authRequestID string) string
	log      *slog.Logger
}

func (l *loginPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		l.render(w, http.StatusOK, r.URL.Query().Get(formAuthRequestID), "")
	case http.MethodPost:
		l.submit(w, r)
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// submit answers 401 with the form again for a wrong username or password,
// 400 for an unknown or expired auth request.
func (l *loginPage) submit(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "cannot parse form", http.StatusBadRequest)
		return
	}
	id, username := r.PostForm.Get(formAuthRequestID), r.PostForm.Get(formUsername)
	u, err := l.storage.signIn(id, username, r.PostForm.Get(formPassword))
	switch {
	case errors.Is(err, ErrInvalidCredentials):
		l.log.InfoContext(r.Context(), "sign-in refused", logUser, username)
		l.render(w, http.StatusUnauthorized, id, "Invalid username or password.")
		return
	case err != nil:
		l.log.InfoContext(r.Context(), "sign-in for unknown auth request", logUser, username, logkey.Error, err)
		http.Error(w, "unknown or expired sign-in request: start again", http.StatusBadRequest)
		return
	}
	l.log.InfoContext(r.Context(), "signed in", logUser, u.ID)
	http.Redirect(w, r, l.callback(r.Context(), id), http.StatusFound)
}

func (l *loginPage) render(w http.ResponseWriter, status int, id, message string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = loginTemplate.Execute(w, struct{ ID, Error string }{id, message})
}
