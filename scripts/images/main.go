// Command images builds the container images of tally-server and
// tally-agent without a container engine, with go-containerregistry.
//
// Each image is one layer on an empty base: the static binary (CGO off,
// -trimpath, -ldflags "-s -w") at /usr/local/bin/<name>, /etc/passwd and
// /etc/group naming uid and gid 65532 "nonroot", a /tmp with mode 1777 and a
// data directory /var/lib/<name> owned by 65532 (the agent also gets
// /run/tally, the directory of its default Workload API socket). The config
// runs the binary as 65532:65532:
//
//	Entrypoint ["/usr/local/bin/<name>"]
//	Cmd        ["run"]
//	User       "65532:65532"
//	WorkingDir "/var/lib/<name>" (so the default ./tally-data is writable)
//	Labels     org.opencontainers.image.{title,description,source,version,revision}
//
// version is `git describe --always --dirty` and revision the HEAD commit;
// without git, version is "dev" and revision is left out. The image's
// creation time and every file's mtime are the HEAD commit's time (zero
// without git), so one commit builds the same image.
//
// `make images` (or `go run ./scripts/images -out bin/images`) writes
// bin/images/<name>.tar in the `docker save` format, tagged
// tally/<name>:<version>. With -examples it also writes the image of the
// demo workload examples/greeter (greeter.tar, tally/greeter:<version>,
// default arguments ["server"]), the same way. Each is accepted by:
//
//	docker load -i bin/images/tally-server.tar
//	ctr images import bin/images/tally-server.tar
//	crane push bin/images/tally-server.tar registry.example/tally-server:TAG
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	out := flag.String("out", "bin/images", "directory for the <name>.tar image tarballs")
	repo := flag.String("repo", "tally", "repository prefix of the tags: <repo>/<name>:<version>")
	examples := flag.Bool("examples", false, "also build the demo workloads' images (examples/greeter)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	todo := specs
	if *examples {
		todo = append(append([]spec(nil), specs...), exampleSpecs...)
	}
	if err := run(ctx, *out, *repo, todo); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, repo string, specs []spec) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	meta := readGitMeta(ctx, root)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	for _, spec := range specs {
		path, tag, err := writeImage(ctx, root, out, repo, spec, meta)
		if err != nil {
			return err
		}
		fmt.Printf("%s\t%s\n", path, tag)
	}
	return nil
}
