package k8s

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tallyid/tally/test/internal/repo"
)

// BinDirEnv names an environment variable that, when set, overrides the directory the build
// script installs into (default <repo>/.cache/k8s).
const BinDirEnv = "TALLY_K8S_BIN_DIR"

var build struct {
	once sync.Once
	dir  string
	err  error
}

// Binaries returns the absolute directory holding kube-apiserver and etcd, running
// scripts/k8s/build.sh at most once per test process. It never skips: when the binaries are
// missing it builds them, which takes ~10 minutes of 2 cores on a cold cache — longer than go
// test's default -timeout, so run scripts/k8s/build.sh once beforehand (or pass -timeout 30m).
// The script is idempotent and serializes concurrent callers (other test processes) with a
// lock, so parallel `go test` packages wait for one build. Safe for concurrent use; a failed
// build fails every caller with the script's output.
func Binaries(t testing.TB) string {
	t.Helper()
	build.once.Do(func() { build.dir, build.err = runBuild() })
	if build.err != nil {
		t.Fatalf("k8s: %v", build.err)
	}
	return build.dir
}

func runBuild() (string, error) {
	root, err := repo.Root()
	if err != nil {
		return "", err
	}
	args := []string{filepath.Join(root, "scripts", "k8s", "build.sh")}
	if d := os.Getenv(BinDirEnv); d != "" {
		args = append(args, d)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", args...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, repo.Tail(stderr.String(), 40))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := lines[len(lines)-1]
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("build script reported %q but: %w", dir, err)
		}
	}
	return dir, nil
}
