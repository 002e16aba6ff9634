package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/tallyid/tally/examples/todos/idp"
)

// DemoConfig is where the demo client finds the users' OpenID provider and
// the services.
type DemoConfig struct {
	// Source is the demo client's own X509-SVID: it is a workload too.
	Source *workloadapi.X509Source
	// Issuer and ClientID are the OpenID provider and the client the users
	// sign in to.
	Issuer, ClientID string
	// SharesURL and RemindersURL are the services; TodosDemoURL is todos's
	// demo-only listener.
	SharesURL, RemindersURL, TodosDemoURL string
}

// step is one request of the story, made by the demo client.
type step struct {
	heading string // printed before the step, if set
	what    string // who calls whom, on whose behalf
	allowed bool   // what the story says happens
	client  *http.Client
	method  string
	url     string
	user    string // the user's access token, sent as Bearer, if set
	body    any    // sent as JSON, if set
}

// RunDemo signs Alice and Bob in and plays the story, printing each request
// to out: who makes it, on whose behalf, and the answer. It returns an error
// if a request did not go as the story says.
func RunDemo(ctx context.Context, out io.Writer, cfg DemoConfig) error {
	shares := Client(cfg.Source, tlsconfig.AuthorizeID(SharesID))
	reminders := Client(cfg.Source, tlsconfig.AuthorizeID(RemindersID))
	todos := Client(cfg.Source, tlsconfig.AuthorizeID(TodosID))

	fmt.Fprintf(out, `The todos story, request by request. Each workload has its identity from Tally
(an X509-SVID through the Workload API) and admits callers by SPIFFE ID:
  todos       %-38s admits reminders and shares
  reminders   %-38s admits todos-demo and shares
  shares      %-38s admits todos-demo
  todos-demo  %-38s this program: the users' edge

`, TodosID, RemindersID, SharesID, DemoID)

	fmt.Fprintf(out, " 1. Alice and Bob sign in at %s (client %s)\n", cfg.Issuer, cfg.ClientID)
	alice, err := idp.Login(ctx, nil, cfg.Issuer, cfg.ClientID, idp.DefaultRedirectURIs[0], "alice", "alice-password")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	bob, err := idp.Login(ctx, nil, cfg.Issuer, cfg.ClientID, idp.DefaultRedirectURIs[0], "bob", "bob-password")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintln(out, "    ✓ alice@example.com and bob@example.com hold an access token with their email and roles")

	steps := []step{{
		heading: "Service to service: mTLS with X509-SVIDs, each side authorising the other's SPIFFE ID.",
		what:    "reminders → todos, acting for itself: the todos due today",
		allowed: true, client: reminders, method: http.MethodGet, url: cfg.RemindersURL + "/reminders",
	}, {
		what:   "todos → reminders: todos may never call reminders, and reminders does not admit it",
		client: todos, method: http.MethodPost, url: cfg.TodosDemoURL + "/demo/call-reminders",
	}, {
		heading: "On whose behalf: shares exchanges the user's token at Tally, through its agent, for a\nJWT-SVID for todos that carries the user (RFC 8693 token exchange).",
		what:    `Alice shares "plan the trip" with Bob: todos-demo → shares → todos, on behalf of alice@example.com (todos.share)`,
		allowed: true, client: shares, method: http.MethodPost, url: cfg.SharesURL + "/shares",
		user: alice.AccessToken, body: ShareRequest{Todo: 2, With: "bob@example.com"},
	}, {
		what:    "Bob lists the todos shared with him: todos-demo → shares → todos, on behalf of bob@example.com (todos.read)",
		allowed: true, client: shares, method: http.MethodGet, url: cfg.SharesURL + "/shares/with-me", user: bob.AccessToken,
	}, {
		what:   `Bob shares Alice's "buy milk" with himself: shares → todos, on behalf of bob@example.com (todos.share)`,
		client: shares, method: http.MethodPost, url: cfg.SharesURL + "/shares",
		user: bob.AccessToken, body: ShareRequest{Todo: 1, With: "bob@example.com"},
	}, {
		heading: "Refused: shares and reminders misbehave, through routes that exist for this demo only.",
		what:    "shares → todos with no token, as if for itself",
		client:  shares, method: http.MethodGet, url: cfg.SharesURL + "/demo/no-token",
	}, {
		what:   "shares asks Tally for a token for todos of scope todos.write, on behalf of alice@example.com",
		client: shares, method: http.MethodGet, url: cfg.SharesURL + "/demo/widen", user: alice.AccessToken,
	}, {
		what:   "shares → todos: share a todo on behalf of alice@example.com with a token of scope todos.read",
		client: shares, method: http.MethodPost, url: cfg.SharesURL + "/demo/read-scope",
		user: alice.AccessToken, body: ShareRequest{Todo: 2, With: "bob@example.com"},
	}, {
		what: "shares hands Alice's token for todos to reminders; reminders → todos with it\n" +
			"    (the token's sub is shares, the TLS peer is reminders)",
		client: shares, method: http.MethodGet, url: cfg.SharesURL + "/demo/replay", user: alice.AccessToken,
	}}

	astray := 0
	for i, s := range steps {
		if s.heading != "" {
			fmt.Fprintf(out, "\n%s\n", s.heading)
		}
		fmt.Fprintf(out, "%2d. %s\n", i+2, s.what)
		ok, answer := s.do(ctx)
		mark := "✓"
		if !ok {
			mark = "✗"
		}
		fmt.Fprintf(out, "    %s %s\n", mark, answer)
		if ok != s.allowed {
			astray++
			fmt.Fprintf(out, "    ! the story says this is %s\n", map[bool]string{true: "allowed", false: "refused"}[s.allowed])
		}
	}
	if astray > 0 {
		return fmt.Errorf("demo: %d of %d steps did not go as the story says", astray, len(steps)+1)
	}
	fmt.Fprintf(out, "\nAll %d steps went as the story says.\n", len(steps)+1)
	return nil
}

// do makes the request of s and reports whether it succeeded, and the
// answer as a line: who answered, and what.
func (s step) do(ctx context.Context) (bool, string) {
	var body io.Reader
	if s.body != nil {
		b, err := json.Marshal(s.body)
		if err != nil {
			return false, err.Error()
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, s.method, s.url, body)
	if err != nil {
		return false, err.Error()
	}
	if s.user != "" {
		req.Header.Set("Authorization", "Bearer "+s.user)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		var u *url.Error
		if errors.As(err, &u) {
			err = u.Err
		}
		return false, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return false, err.Error()
	}
	by := resp.Header.Get(AnsweredBy)
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(b))
		if resp.StatusCode/100 == 4 && by != "tally" { // Tally answered over gRPC; a 502 is no answer at all
			msg = fmt.Sprintf("%d %s", resp.StatusCode, msg)
		}
		return false, by + ": " + msg
	}
	var a Answer
	if err := json.Unmarshal(b, &a); err != nil {
		return false, by + ": answer: " + err.Error()
	}
	return true, by + ": " + a.String()
}

// String is the answer as the demo prints it, e.g.
// `for bob@example.com via spiffe://example.org/todos/shares: "plan the trip" (alice@example.com's)`.
func (a Answer) String() string {
	var s strings.Builder
	if a.For != "" {
		fmt.Fprintf(&s, "for %s via %s: ", a.For, strings.Join(a.Via, ", "))
	}
	if len(a.Todos) == 0 {
		s.WriteString("no todos")
	}
	for i, t := range a.Todos {
		if i > 0 {
			s.WriteString(", ")
		}
		fmt.Fprintf(&s, "%q (%s's", t.Title, t.Owner)
		if len(t.SharedWith) > 0 {
			fmt.Fprintf(&s, ", shared with %s", strings.Join(t.SharedWith, ", "))
		}
		s.WriteString(")")
	}
	return s.String()
}
