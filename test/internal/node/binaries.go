package node

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tallyid/tally/test/internal/repo"
)

// BinDirEnv names an environment variable that, when set, overrides the directory
// scripts/node/build.sh installs into (default <repo>/.cache/node).
const BinDirEnv = "TALLY_NODE_BIN_DIR"

// Binaries returns the absolute directory holding kubelet, kube-scheduler and
// kube-controller-manager, running scripts/node/build.sh. It never skips: when the binaries
// are missing it builds them, ~6 minutes of 2 cores on a cold cache (pass -timeout 30m, or
// run the script once beforehand). Once built, the script returns in ~0.01 s; it serializes
// concurrent callers (other test processes) with a lock.
func Binaries(t testing.TB) string {
	t.Helper()
	root, err := repo.Root()
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	dir, err := buildBinaries(root)
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	return dir
}

func buildBinaries(root string) (string, error) {
	args := []string{filepath.Join(root, "scripts", "node", "build.sh")}
	if d := os.Getenv(BinDirEnv); d != "" {
		args = append(args, d)
	}
	out, err := runScript(root, nil, args...)
	if err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	dir := lines[len(lines)-1]
	for _, b := range []string{"kubelet", "kube-scheduler", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("build script reported %q but: %w", dir, err)
		}
	}
	return dir, nil
}

// runScript runs a bash script with env added to the environment and returns its stdout;
// on failure the error carries the tail of its stderr.
func runScript(root string, env []string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, repo.Tail(stderr.String(), 60))
	}
	return stdout.String(), nil
}
