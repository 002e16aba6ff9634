package realnode_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyid/tally/test/internal/k8s"
	"github.com/tallyid/tally/test/internal/node"
)

// One control plane and one node for the package: the tests run one after the other (each
// installs Tally into the namespace tally, and the node is one per machine anyway).
var (
	cluster = k8s.Shared{Options: k8s.Options{Kubelet: true}}
	nodes   node.Shared
)

func TestMain(m *testing.M) {
	// helm runs this binary as its post-renderer (see helm_test.go)
	if dir := os.Getenv(postRenderEnv); dir != "" {
		os.Exit(postRender(dir))
	}
	code := m.Run()
	nodes.Stop()
	cluster.Stop()
	built.remove()
	os.Exit(code)
}

// artifacts are what the tests build once from this repository: the images of
// scripts/images (the `make images` tool, with -examples for the greeter) and a tallyctl
// for the host.
type artifacts struct {
	once sync.Once
	err  error
	dir  string

	// images by name (tally-server, tally-agent, greeter): tarball path and tag
	tarballs map[string]string
	tags     map[string]string
	// tallyctl is a host binary of ./cmd/tallyctl
	tallyctl string
}

var built artifacts

func (a *artifacts) remove() {
	if a.dir != "" {
		os.RemoveAll(a.dir)
	}
}

// buildArtifacts builds the artifacts on first use (go's build cache makes later runs
// cheap) and returns them.
func buildArtifacts(t *testing.T) *artifacts {
	t.Helper()
	built.once.Do(func() { built.err = built.build(t) })
	if built.err != nil {
		t.Fatal(built.err)
	}
	return &built
}

func (a *artifacts) build(t *testing.T) error {
	root := repoRoot()
	var err error
	if a.dir, err = os.MkdirTemp("", "tally-realnode-"); err != nil {
		return fmt.Errorf("artifacts dir: %w", err)
	}
	t0 := time.Now()
	// exactly what `make images` runs, plus the example image
	out, err := goCommand(root, "run", "./scripts/images", "-out", filepath.Join(a.dir, "images"), "-examples")
	if err != nil {
		return err
	}
	a.tarballs, a.tags = map[string]string{}, map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		path, tag, ok := strings.Cut(line, "\t")
		if !ok {
			return fmt.Errorf("scripts/images printed %q, want PATH<TAB>TAG lines", line)
		}
		name := strings.TrimSuffix(filepath.Base(path), ".tar")
		a.tarballs[name], a.tags[name] = path, tag
	}
	for _, name := range []string{"tally-server", "tally-agent", "greeter"} {
		if a.tags[name] == "" {
			return fmt.Errorf("scripts/images built no %s image:\n%s", name, out)
		}
		if strings.HasSuffix(a.tags[name], ":latest") {
			return fmt.Errorf("image %s is tagged latest: the kubelet would try to pull it", a.tags[name])
		}
	}
	t1 := time.Now()
	a.tallyctl = filepath.Join(a.dir, "tallyctl")
	if _, err := goCommand(root, "build", "-o", a.tallyctl, "./cmd/tallyctl"); err != nil {
		return err
	}
	t.Logf("artifacts: images %v in %s (scripts/images), tallyctl in %s",
		a.tags, t1.Sub(t0).Round(10*time.Millisecond), time.Since(t1).Round(10*time.Millisecond))
	return nil
}

// tag returns the tag part of an image's reference (tally/tally-server:TAG).
func (a *artifacts) tag(name string) string {
	ref := a.tags[name]
	return ref[strings.LastIndex(ref, ":")+1:]
}

func goCommand(dir string, args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// tallyctlImage is a test image of tallyctl: inside a pod it is a Workload API client
// (tallyctl svid fetch / watch), the workload whose identity the tests look at.
const tallyctlImage = "localhost/tally-test/tallyctl:1"

// setup returns the shared cluster and node with every image the tests run imported.
func setup(t *testing.T) (*k8s.Cluster, *node.Node, *artifacts) {
	t.Helper()
	c := cluster.Get(t)
	n := nodes.Get(t, c)
	a := buildArtifacts(t)
	n.ImportImages(t, a.tarballs["tally-server"], a.tarballs["tally-agent"], a.tarballs["greeter"],
		node.BuildImage(t, "github.com/tallyid/tally/cmd/tallyctl", tallyctlImage))
	return c, n, a
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
	if err != nil {
		panic(err)
	}
	return root
}
