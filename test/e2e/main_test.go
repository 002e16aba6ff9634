package e2e

import (
	"os"
	"testing"

	"github.com/tallyid/tally/test/internal/k8s"
)

// cluster is the package's one Kubernetes control plane: tests take a
// namespace each and name their nodes after it (startK8sEnv).
var cluster k8s.Shared

// roleEnv names a role this test binary plays instead of running tests: the
// attacks need processes of their own (another uid, a process that executes
// another program), and the test binary is the one program every test can
// copy and run.
const roleEnv = "TALLY_E2E_ROLE"

// roles are the programs this binary can be, by the value of roleEnv; each
// returns the exit code.
var roles = map[string]func() int{
	roleExecConnector: execConnector,
	roleExecUser:      execUser,
	roleDirectCaller:  directCaller,
}

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		run, ok := roles[role]
		if !ok {
			os.Stderr.WriteString("unknown " + roleEnv + " " + role + "\n")
			os.Exit(2)
		}
		os.Exit(run())
	}
	code := m.Run()
	cluster.Stop()
	os.Exit(code)
}
