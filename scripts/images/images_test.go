package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/require"
)

// file is what the test checks of one entry of an image's filesystem.
type file struct {
	Mode     fs.FileMode
	Uid, Gid int
	ModTime  time.Time
}

// TestImages builds both images from this repository into a temp dir, reads
// each tarball back as docker load would, and runs the binary inside.
func TestImages(t *testing.T) {
	ctx := context.Background()
	root, err := moduleRoot(ctx)
	require.NoError(t, err)
	meta := gitMeta{Version: "test", Revision: "0123456789abcdef", Time: time.Unix(1_700_000_000, 0).UTC()}
	out := t.TempDir()

	for _, s := range specs {
		t.Run(s.Name, func(t *testing.T) {
			path, tag, err := writeImage(ctx, root, out, "tally", s, meta)
			require.NoError(t, err)
			require.Equal(t, filepath.Join(out, s.Name+".tar"), path)
			require.Equal(t, "tally/"+s.Name+":test", tag.String())

			// docker load reads manifest.json's RepoTags for the tag.
			var manifest []struct {
				Config   string
				RepoTags []string
				Layers   []string
			}
			require.NoError(t, json.Unmarshal(tarMember(t, path, "manifest.json"), &manifest))
			require.Len(t, manifest, 1)
			require.Equal(t, []string{"tally/" + s.Name + ":test"}, manifest[0].RepoTags)
			require.Len(t, manifest[0].Layers, 1)

			ref, err := name.NewTag(tag.String())
			require.NoError(t, err)
			img, err := tarball.ImageFromPath(path, &ref)
			require.NoError(t, err)

			// What `crane push` does with the tarball, to a real OCI
			// distribution registry (go-containerregistry's), and back.
			oci := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
			defer oci.Close()
			dst := strings.TrimPrefix(oci.URL, "http://") + "/tally/" + s.Name + ":test"
			loaded, err := crane.Load(path)
			require.NoError(t, err)
			require.NoError(t, crane.Push(loaded, dst))
			pulled, err := crane.Pull(dst)
			require.NoError(t, err)
			pushed, err := img.Digest()
			require.NoError(t, err)
			served, err := pulled.Digest()
			require.NoError(t, err)
			require.Equal(t, pushed, served, "the registry serves the image pushed")

			cf, err := img.ConfigFile()
			require.NoError(t, err)
			require.Equal(t, "linux", cf.OS)
			require.Equal(t, runtime.GOARCH, cf.Architecture)
			require.True(t, meta.Time.Equal(cf.Created.Time), "created %v", cf.Created)
			require.Equal(t, []string{"/usr/local/bin/" + s.Name}, cf.Config.Entrypoint)
			require.Equal(t, []string{"run"}, cf.Config.Cmd)
			require.Equal(t, "65532:65532", cf.Config.User)
			require.Equal(t, "/var/lib/"+s.Name, cf.Config.WorkingDir)
			require.Equal(t, map[string]string{
				"org.opencontainers.image.title":       s.Name,
				"org.opencontainers.image.description": s.Description,
				"org.opencontainers.image.source":      "https://github.com/tallyid/tally",
				"org.opencontainers.image.version":     "test",
				"org.opencontainers.image.revision":    "0123456789abcdef",
			}, cf.Config.Labels)

			got, bodies := extract(t, mutate.Extract(img))
			dir := func(mode fs.FileMode, id int) file {
				return file{Mode: fs.ModeDir | mode, Uid: id, Gid: id, ModTime: meta.Time}
			}
			reg := func(mode fs.FileMode) file { return file{Mode: mode, ModTime: meta.Time} }
			want := map[string]file{
				"etc":                     dir(0o755, 0),
				"etc/passwd":              reg(0o644),
				"etc/group":               reg(0o644),
				"tmp":                     dir(fs.ModeSticky|0o777, 0),
				"usr":                     dir(0o755, 0),
				"usr/local":               dir(0o755, 0),
				"usr/local/bin":           dir(0o755, 0),
				"usr/local/bin/" + s.Name: reg(0o755),
				"var":                     dir(0o755, 0),
				"var/lib":                 dir(0o755, 0),
				"var/lib/" + s.Name:       dir(0o700, 65532),
			}
			if s.Name == "tally-agent" {
				want["run"] = dir(0o755, 0)
				want["run/tally"] = dir(0o755, 65532)
			}
			require.Equal(t, want, got)
			require.Contains(t, string(bodies["etc/passwd"]),
				"\nnonroot:x:65532:65532:nonroot:/var/lib/"+s.Name+":/sbin/nologin\n")
			require.Contains(t, string(bodies["etc/group"]), "\nnonroot:x:65532:\n")

			// The binary is static (no ELF interpreter, as an empty base has no
			// libc) and runs.
			bin := bodies["usr/local/bin/"+s.Name]
			ef, err := elf.NewFile(bytes.NewReader(bin))
			require.NoError(t, err)
			for _, p := range ef.Progs {
				require.NotEqual(t, elf.PT_INTERP, p.Type, "dynamically linked")
			}
			exe := filepath.Join(t.TempDir(), s.Name)
			require.NoError(t, os.WriteFile(exe, bin, 0o755))
			help, err := exec.Command(exe, "--help").CombinedOutput()
			require.NoError(t, err, "%s", help)
			require.Contains(t, string(help), s.Description)
			require.Contains(t, string(help), "run ")
			help, err = exec.Command(exe, "run", "--help").CombinedOutput()
			require.NoError(t, err, "%s", help)
			require.Contains(t, string(help), "--config")
			require.Contains(t, string(help), "--data-dir")
		})
	}
}

// TestExampleImages builds the -examples images (the greeter demo) and
// checks what differs from the product images: the package built, the
// default arguments, the binary in the image runs.
func TestExampleImages(t *testing.T) {
	ctx := context.Background()
	root, err := moduleRoot(ctx)
	require.NoError(t, err)
	meta := gitMeta{Version: "test", Time: time.Unix(1_700_000_000, 0).UTC()}
	out := t.TempDir()
	require.Len(t, exampleSpecs, 1)
	s := exampleSpecs[0]
	require.Equal(t, "greeter", s.Name)

	path, tag, err := writeImage(ctx, root, out, "tally", s, meta)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(out, "greeter.tar"), path)
	require.Equal(t, "tally/greeter:test", tag.String())
	img, err := tarball.ImageFromPath(path, &tag)
	require.NoError(t, err)
	cf, err := img.ConfigFile()
	require.NoError(t, err)
	require.Equal(t, []string{"/usr/local/bin/greeter"}, cf.Config.Entrypoint)
	require.Equal(t, []string{"server"}, cf.Config.Cmd)
	require.Equal(t, "65532:65532", cf.Config.User)
	require.Equal(t, "greeter", cf.Config.Labels["org.opencontainers.image.title"])

	_, bodies := extract(t, mutate.Extract(img))
	exe := filepath.Join(t.TempDir(), "greeter")
	require.NoError(t, os.WriteFile(exe, bodies["usr/local/bin/greeter"], 0o755))
	// without a mode it prints its usage and exits 2
	usage, err := exec.Command(exe).CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "%s", usage)
	require.Equal(t, 2, exit.ExitCode())
	require.Contains(t, string(usage), "usage: greeter server|client")
}

func TestReadGitMeta(t *testing.T) {
	ctx := context.Background()
	t.Run("no repository", func(t *testing.T) {
		require.Equal(t, gitMeta{Version: "dev"}, readGitMeta(ctx, t.TempDir()))
	})
	t.Run("this repository", func(t *testing.T) {
		_, err := exec.LookPath("git")
		require.NoError(t, err, "git is needed: the tests run in a clone of the repository")
		root, err := moduleRoot(ctx)
		require.NoError(t, err)
		m := readGitMeta(ctx, root)
		require.Regexp(t, regexp.MustCompile(`^[0-9a-f]{40}$`), m.Revision)
		require.NotEqual(t, "dev", m.Version)
		_, err = name.NewTag(tagFor("tally", "tally-server", m.Version))
		require.NoError(t, err, "version %q is not a valid tag", m.Version)
		require.False(t, m.Time.IsZero())
	})
}

// tarMember is the body of the member called name in the tarball at path.
func tarMember(t *testing.T, path, name string) []byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		require.NoError(t, err, "no %s in %s", name, path)
		if hdr.Name == name {
			b, err := io.ReadAll(tr)
			require.NoError(t, err)
			return b
		}
	}
}

// extract reads a flattened filesystem tar: each entry's metadata and each
// regular file's body.
func extract(t *testing.T, rc io.ReadCloser) (map[string]file, map[string][]byte) {
	t.Helper()
	defer rc.Close()
	files, bodies := map[string]file{}, map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, bodies
		}
		require.NoError(t, err)
		files[strings.TrimSuffix(hdr.Name, "/")] = file{Mode: hdr.FileInfo().Mode(), Uid: hdr.Uid, Gid: hdr.Gid, ModTime: hdr.ModTime.UTC()}
		if hdr.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			require.NoError(t, err)
			bodies[hdr.Name] = b
		}
	}
}
