package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// spec is one image: the binary of Package (default ./cmd/<Name>) and what
// its image adds.
type spec struct {
	Name        string
	Description string
	// Dirs are extra directories owned by nonroot, beside /var/lib/<Name>.
	Dirs []string
	// Package is the main package to build, relative to the module root;
	// "" is ./cmd/<Name>.
	Package string
	// Cmd is the image's default arguments; nil is ["run"].
	Cmd []string
}

// specs are the images `make images` builds.
var specs = []spec{
	{Name: "tally-server", Description: "Tally SPIFFE server: certificate authority, registration, node and admin APIs"},
	{Name: "tally-agent", Description: "Tally node agent: attests to the server and serves the SPIFFE Workload API", Dirs: []string{"/run/tally"}},
}

// exampleSpecs are the demo workloads' images, built with -examples: what
// a cluster runs to try Tally (test/realnode runs them on a real node).
var exampleSpecs = []spec{
	{Name: "greeter", Description: "Tally demo workload: two instances talk mutual TLS with X509-SVIDs from the SPIFFE Workload API",
		Package: "./examples/greeter", Cmd: []string{"server"}},
}

func (s spec) pkg() string {
	if s.Package != "" {
		return s.Package
	}
	return "./cmd/" + s.Name
}

func (s spec) cmd() []string {
	if s.Cmd != nil {
		return s.Cmd
	}
	return []string{"run"}
}

const (
	nonrootID = 65532
	user      = "65532:65532"
	source    = "https://github.com/tallyid/tally"
)

func binPath(name string) string      { return "/usr/local/bin/" + name }
func dataDir(name string) string      { return "/var/lib/" + name }
func tagFor(repo, n, v string) string { return repo + "/" + n + ":" + v }

// writeImage builds s's binary from the module at root, makes its image and
// writes it to <out>/<s.Name>.tar tagged <repo>/<s.Name>:<meta.Version>.
func writeImage(ctx context.Context, root, out, repo string, s spec, meta gitMeta) (path string, tag name.Tag, err error) {
	tag, err = name.NewTag(tagFor(repo, s.Name, meta.Version))
	if err != nil {
		return "", tag, fmt.Errorf("images: tag for %s: %w", s.Name, err)
	}
	bin, err := buildBinary(ctx, root, s.Name, s.pkg())
	if err != nil {
		return "", tag, err
	}
	img, err := image(s, meta, bin)
	if err != nil {
		return "", tag, err
	}
	path = filepath.Join(out, s.Name+".tar")
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		return "", tag, fmt.Errorf("images: write %s: %w", path, err)
	}
	return path, tag, nil
}

// buildBinary returns the static linux binary of the main package pkg,
// named name, for the host's architecture.
func buildBinary(ctx context.Context, root, name, pkg string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "tally-image-")
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("images: go build %s: %w", pkg, err)
	}
	bin, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	return bin, nil
}

// image is the empty base plus one layer, rootFS(s, meta, bin), and the
// config documented in the package comment.
func image(s spec, meta gitMeta, bin []byte) (v1.Image, error) {
	layerTar, err := rootFS(s, meta, bin)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("images: layer: %w", err)
	}
	created := v1.Time{Time: meta.Time}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: created, CreatedBy: "scripts/images: " + binPath(s.Name)},
	})
	if err != nil {
		return nil, fmt.Errorf("images: append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("images: config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = created
	labels := map[string]string{
		"org.opencontainers.image.title":       s.Name,
		"org.opencontainers.image.description": s.Description,
		"org.opencontainers.image.source":      source,
		"org.opencontainers.image.version":     meta.Version,
	}
	if meta.Revision != "" {
		labels["org.opencontainers.image.revision"] = meta.Revision
	}
	cf.Config = v1.Config{
		Entrypoint: []string{binPath(s.Name)},
		Cmd:        s.cmd(),
		User:       user,
		WorkingDir: dataDir(s.Name),
		Labels:     labels,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("images: config: %w", err)
	}
	return img, nil
}

// rootFS is the layer's tar: parents before children, every entry with
// mtime meta.Time.
func rootFS(s spec, meta gitMeta, bin []byte) ([]byte, error) {
	passwd := "root:x:0:0:root:/root:/sbin/nologin\n" +
		fmt.Sprintf("nonroot:x:%d:%d:nonroot:%s:/sbin/nologin\n", nonrootID, nonrootID, dataDir(s.Name))
	group := "root:x:0:\n" + fmt.Sprintf("nonroot:x:%d:\n", nonrootID)

	type entry struct {
		path string
		mode int64
		uid  int
		body []byte // nil for a directory
	}
	entries := []entry{
		{path: "/etc", mode: 0o755},
		{path: "/etc/passwd", mode: 0o644, body: []byte(passwd)},
		{path: "/etc/group", mode: 0o644, body: []byte(group)},
		{path: "/tmp", mode: 0o1777},
		{path: "/usr", mode: 0o755},
		{path: "/usr/local", mode: 0o755},
		{path: "/usr/local/bin", mode: 0o755},
		{path: binPath(s.Name), mode: 0o755, body: bin},
		{path: "/var", mode: 0o755},
		{path: "/var/lib", mode: 0o755},
		{path: dataDir(s.Name), mode: 0o700, uid: nonrootID},
	}
	for _, d := range s.Dirs {
		if parent := filepath.Dir(d); parent != "/" {
			entries = append(entries, entry{path: parent, mode: 0o755})
		}
		entries = append(entries, entry{path: d, mode: 0o755, uid: nonrootID})
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	for _, e := range entries {
		if seen[e.path] {
			continue
		}
		seen[e.path] = true
		hdr := &tar.Header{
			Name:    e.path[1:],
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.uid,
			ModTime: meta.Time,
			Format:  tar.FormatPAX,
		}
		if e.body == nil {
			hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
		} else {
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("images: layer %s: %w", e.path, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("images: layer %s: %w", e.path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("images: layer: %w", err)
	}
	return buf.Bytes(), nil
}
