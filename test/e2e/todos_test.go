package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/test/internal/harness"
)

// TestTodosDemo runs what `make demo-todos` runs: the OpenID provider, a
// server with the exchange policy, an agent, the todos, reminders and
// shares services, and the demo client, which plays the story. Every line
// of the story must come out as the issue tells it, and no token may reach
// a log.
func TestTodosDemo(t *testing.T) {
	t.Parallel()
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "scripts", "demo-todos.sh")
	env := []string{"TALLY_BIN=" + harness.Binaries(t)}
	for _, name := range []string{"TALLY_NODE_ADDR", "TALLY_HTTPS_ADDR", "TALLY_HEALTH_ADDR", "TALLY_WEB_ADDR", "TALLY_AGENT_HEALTH_ADDR",
		"TODOS_IDP_ADDR", "TODOS_TODOS_ADDR", "TODOS_TODOS_DEMO_ADDR", "TODOS_REMINDERS_ADDR", "TODOS_SHARES_ADDR"} {
		env = append(env, name+"="+harness.FreeAddr(t))
	}
	run := harness.StartProcess(t, env, 0, "bash", script)
	err := run.Wait(t, 2*time.Minute)
	out := run.Output()
	dir := regexp.MustCompile(`state and logs kept in (/tmp/tally-todos\.\S+)`).FindStringSubmatch(out)
	require.Len(t, dir, 2, out)
	t.Cleanup(func() { os.RemoveAll(dir[1]) })
	require.NoError(t, err, out)

	const shares = "spiffe://example.org/todos/shares"
	for _, line := range []string{
		// The users sign in.
		`(?m)^ 1\. Alice and Bob sign in at http://\S+ \(client todos-app\)\n +✓ `,
		// Service to service: reminders may call todos, todos never reminders.
		`(?m)^ 2\. reminders → todos.*\n +✓ todos: "buy milk" \(alice@example\.com's\), "water the plants" \(bob@example\.com's\)$`,
		`(?m)^ 3\. todos → reminders.*\n +✗ reminders: remote error: tls: bad certificate$`,
		// On whose behalf: Alice shares, Bob sees only what she shared, through shares.
		`(?m)^ 4\. Alice shares "plan the trip" with Bob.*\n +✓ todos: for alice@example\.com via ` + shares + `: "plan the trip" \(alice@example\.com's, shared with bob@example\.com\)$`,
		`(?m)^ 5\. Bob lists the todos shared with him.*\n +✓ todos: for bob@example\.com via ` + shares + `: "plan the trip" \(alice@example\.com's, shared with bob@example\.com\)$`,
		`(?m)^ 6\. Bob shares Alice's "buy milk".*\n +✗ todos: 403 bob@example\.com does not own todo 1$`,
		// Refusals: no token, a scope wider than the rule's, a token without
		// the route's scope, a token replayed by another service.
		`(?m)^ 7\. shares → todos with no token.*\n +✗ todos: 401 token required$`,
		`(?m)^ 8\. shares asks Tally .* todos\.write.*\n +✗ tally: invalid_scope: scope "todos\.write" is not allowed \(rule shares-to-todos\)$`,
		`(?m)^ 9\. shares → todos: share a todo .* scope todos\.read\n +✗ todos: 403 insufficient scope$`,
		`(?m)^10\. shares hands Alice's token for todos to reminders; reminders → todos with it\n.*\n +✗ todos: 401 invalid token$`,
		`(?m)^All 10 steps went as the story says\.$`,
	} {
		assert.Regexp(t, line, out)
	}
	assert.NotContains(t, out, "! the story says", "no step went astray")
	// Bob's answer holds nothing of Alice's but the todo she shared.
	bob := regexp.MustCompile(`(?m)^ +✓ todos: for bob@example\.com.*$`).FindString(out)
	assert.NotContains(t, bob, "buy milk")

	// Todos saw each request on behalf of a user through shares.
	todos, err := os.ReadFile(filepath.Join(dir[1], "todos.log"))
	require.NoError(t, err)
	assert.Regexp(t, `route="GET /todos/shared" user_sub=bob actor=`+shares+` txn=\S+`, string(todos))
	// The refused handshake is reminders' doing.
	reminders, err := os.ReadFile(filepath.Join(dir[1], "reminders.log"))
	require.NoError(t, err)
	assert.Contains(t, string(reminders), `TLS handshake error`)
	assert.Contains(t, string(reminders), `spiffe://example.org/todos/todos`)

	// No token (a JWT: users' tokens and delegated JWT-SVIDs alike) in any
	// log, the server's first.
	jwt := regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.`)
	server, err := os.ReadFile(filepath.Join(dir[1], "server.log"))
	require.NoError(t, err)
	require.Contains(t, string(server), "action=token_exchange", "the server logged the exchanges")
	logs, err := filepath.Glob(filepath.Join(dir[1], "*.log"))
	require.NoError(t, err)
	require.Len(t, logs, 6) // idp, server, agent, todos, reminders, shares
	for _, f := range logs {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		assert.NotRegexp(t, jwt, string(b), "a token in %s", filepath.Base(f))
	}
}
