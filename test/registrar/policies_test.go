package registrar_test

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/exchange"
	"github.com/tallyid/tally/ca/store/badgerstore"
	"github.com/tallyid/tally/registrar"
)

var policies = schema.GroupVersionResource{Group: "tally.dev", Version: "v1alpha1", Resource: "delegationpolicies"}

// A DelegationPolicy is in force in the token exchange while it exists;
// a bad one is refused in its status and changes nothing.
func TestDelegationPolicies(t *testing.T) {
	e := newEnv(t)
	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(t.TempDir(), "ca")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	authority, err := ca.New(t.Context(), ca.Config{TrustDomain: td, KeyDir: t.TempDir(), Journal: st})
	require.NoError(t, err)
	var audit syncBuffer
	svc, err := exchange.New(exchange.Config{TrustDomain: td, Issuer: "https://tally.example.org", Signer: authority,
		Logger: slog.New(slog.NewJSONHandler(&audit, nil))})
	require.NoError(t, err)
	w, err := registrar.NewPolicyWatcher(registrar.PolicyConfig{Kube: e.c.Client, Dynamic: e.dyn, Sink: svc})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })

	shares := spiffeid.RequireFromString("spiffe://example.org/shares")
	rule := func() string {
		_, err := svc.Exchange(t.Context(), exchange.Caller{ID: shares, Authn: exchange.AuthnX509}, exchange.Request{
			GrantType: exchange.GrantType, SubjectToken: "e30.e30.e30", SubjectTokenType: exchange.TypeIDToken,
			Audience: []string{"spiffe://example.org/todos"}})
		return exchange.AsError(err).Code + " " + exchange.AsError(err).Rule
	}
	require.Equal(t, "unauthorized_client ", rule())

	name := "shares-" + e.ns
	e.apply(policies, name, map[string]any{"rules": []any{map[string]any{
		"name": "to-todos", "actors": []any{shares.String()}, "audiences": []any{"spiffe://example.org/todos"}, "scopes": []any{"todos.read"}}}})
	eventually(t, "the policy in force", func() bool { return rule() != "unauthorized_client " })
	assert.Equal(t, "invalid_grant ", rule(), "past the rule, refused for the subject token")
	assert.Contains(t, audit.String(), `"rule":"`+name+`/to-todos"`, "the rule decided, named after its resource")
	s := e.status(policies, name, func(s map[string]any) bool { st, _, _ := condition(s, "Ready"); return st == "True" })
	_, reason, _ := condition(s, "Ready")
	assert.Equal(t, "Applied", reason)

	bad := "bad-" + e.ns
	e.apply(policies, bad, map[string]any{"rules": []any{map[string]any{
		"name": "x", "actors": []any{"spiffe://other.org/x"}, "audiences": []any{"spiffe://example.org/todos"}}}})
	s = e.status(policies, bad, func(s map[string]any) bool { st, _, _ := condition(s, "Ready"); return st == "False" })
	_, reason, msg := condition(s, "Ready")
	assert.Equal(t, "InvalidPolicy", reason)
	assert.Contains(t, msg, "not in trust domain")
	eventually(t, "the event", func() bool { return len(e.events(bad, "InvalidPolicy")) > 0 })
	assert.Equal(t, "invalid_grant ", rule(), "a bad policy changes nothing")

	e.delete(policies, name)
	eventually(t, "the policy gone", func() bool { return rule() == "unauthorized_client " })
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
