package e2e

import (
	"os"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/test/internal/harness"
)

// TestJoinTokenNotOnCommandLine: a join token given as an argument is
// readable by every local user (ps) until it is used. The agent takes it from
// a file or $TALLY_JOIN_TOKEN instead, and warns when it is an argument.
func TestJoinTokenNotOnCommandLine(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	cmdline := func(pid int) string {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		require.NoError(t, err)
		return string(b)
	}

	t.Run("file", func(t *testing.T) {
		token := s.NewToken(t, "")
		a := harness.NewAgent(t, s, "--join-token-file", harness.TokenFile(t, token))
		a.Start(t)
		require.NotContains(t, cmdline(a.PID()), token)
		require.NotContains(t, a.Log(), token)
		require.NotContains(t, a.Log(), "given on the command line")
		require.Contains(t, a.ID(t).String(), "/tally/agent/join_token/")
	})
	t.Run("environment", func(t *testing.T) {
		token := s.NewToken(t, "")
		a := harness.NewAgent(t, s)
		a.Env = []string{"TALLY_JOIN_TOKEN=" + token} // the agent's environment only: t.Setenv would rule out t.Parallel
		a.Start(t)
		require.NotContains(t, cmdline(a.PID()), token)
		require.NotContains(t, a.Log(), token)
		require.Contains(t, a.ID(t).String(), "/tally/agent/join_token/")
	})
	t.Run("argument warns", func(t *testing.T) {
		token := s.NewToken(t, "")
		a := harness.NewAgent(t, s, "--join-token", token)
		a.Start(t)
		require.Contains(t, a.Log(), "the join token was given on the command line")
		require.NotContains(t, a.Log(), token, "the warning does not repeat the token")
	})
	t.Run("both refused", func(t *testing.T) {
		a := harness.NewAgent(t, s, "--join-token", "x", "--join-token-file", harness.TokenFile(t, "y"))
		done := a.StartNoWait(t)
		<-done
		require.Contains(t, a.Log(), "join_token and join_token_file exclude each other")
	})
}
