package exchange

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Extra policies (DelegationPolicy resources) join the configured one:
// their rules decide after the configured rules, named after their
// policy; a bad one is refused alone; dropping one takes its rules away.
func TestExtraPolicies(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ask := func() error {
		_, err := f.exchange(reminders, Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken,
			Audience: []string{todos.String()}, Scope: "todos.read"})
		return err
	}
	requireCode(t, ask(), CodeUnauthorizedClient, "")

	errs := f.svc.SetExtra(map[string]Policy{
		"reminders": {Rules: []Rule{{Name: "to-todos", Actors: []string{reminders.String()}, Audiences: []string{todos.String()}, Scopes: []string{"todos.read"}}}},
		"bad":       {Rules: []Rule{{Name: "x", Actors: []string{"spiffe://other.org/x"}, Audiences: []string{todos.String()}}}},
	})
	require.Len(t, errs, 1)
	assert.ErrorContains(t, errs["bad"], "not in trust domain")
	require.NoError(t, ask())
	assert.Contains(t, f.log.String(), `"rule":"reminders/to-todos"`)

	// The configured rules still decide first and keep their names.
	_, err := f.exchange(shares, Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken,
		Audience: []string{todos.String()}, Scope: "todos.write"})
	requireCode(t, err, CodeInvalidScope, "shares-to-todos")

	assert.Empty(t, f.svc.SetExtra(nil))
	requireCode(t, ask(), CodeUnauthorizedClient, "")
}
