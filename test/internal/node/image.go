package node

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/tallyid/tally/test/internal/repo"
)

// The images a node needs, built from this module's sources (nothing can be pulled).
const (
	// PauseImage is the pod sandbox image every node imports before its kubelet starts.
	PauseImage   = "localhost/tally-test/pause:1"
	PausePackage = repo.Module + "/test/internal/node/pause"
	// HelloImage is a tiny workload (see ./hello): it prints its /proc/self/cgroup and the
	// files named by its arguments, then blocks until SIGTERM. Build it with
	// BuildImage(t, HelloPackage, HelloImage) and give it to Options.Images.
	HelloImage   = "localhost/tally-test/hello:1"
	HelloPackage = repo.Module + "/test/internal/node/hello"
)

// BuildImage builds the main package pkg (an import path in this module) as a static Linux
// binary and writes a single-layer image of it, tagged ref, as a tarball under t.TempDir().
// It returns the tarball's path, for Options.Images or Node.ImportImages. The image holds
// /<last element of pkg> as its entrypoint and empty /dev, /etc, /proc, /sys and /tmp; use
// imagePullPolicy Never (or IfNotPresent) and a tag other than latest in pods.
func BuildImage(t testing.TB, pkg, ref string) string {
	t.Helper()
	root, err := repo.Root()
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	file, err := buildImage(root, t.TempDir(), pkg, ref)
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	return file
}

// buildImage is BuildImage writing into dir.
func buildImage(root, dir, pkg, ref string) (string, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", ref, err)
	}
	base := path.Base(pkg)
	bin := filepath.Join(dir, base+".bin")
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w", "-o", bin, pkg)
	cmd.Dir = root
	// static (a container has no libc) and for the host's architecture
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	defer os.Remove(bin)
	layer, err := rootFS(bin, base)
	if err != nil {
		return "", err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layer)), nil
	})
	if err != nil {
		return "", fmt.Errorf("image %s: layer: %w", ref, err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", fmt.Errorf("image %s: config: %w", ref, err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{"/" + base}
	cf.Config.Env = []string{"PATH=/"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", fmt.Errorf("image %s: config: %w", ref, err)
	}
	file := filepath.Join(dir, base+".tar")
	// a docker-save style tarball, which `ctr images import` accepts
	if err := tarball.WriteToFile(file, tag, img); err != nil {
		return "", fmt.Errorf("image %s: write %s: %w", ref, file, err)
	}
	return file, nil
}

// rootFS is the layer: the directories runc mounts onto, and the binary as /<name>. Every
// entry has mtime 0, so the same binary always gives the same image digest.
func rootFS(bin, name string) ([]byte, error) {
	b, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	epoch := time.Unix(0, 0)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []struct {
		name string
		mode int64
	}{{"dev/", 0o755}, {"etc/", 0o755}, {"proc/", 0o555}, {"sys/", 0o555}, {"tmp/", 0o1777}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d.name, Mode: d.mode, ModTime: epoch}); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(b)), ModTime: epoch}); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	if _, err := tw.Write(b); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	return buf.Bytes(), nil
}
