package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// gitMeta is what the labels and timestamps take from the repository.
type gitMeta struct {
	Version  string    // git describe --always --dirty, or "dev"
	Revision string    // HEAD's commit hash, or ""
	Time     time.Time // HEAD's commit time, or the zero time
}

// readGitMeta never fails: without git or a repository in dir it returns
// Version "dev" and nothing else.
func readGitMeta(ctx context.Context, dir string) gitMeta {
	m := gitMeta{Version: "dev"}
	if v := gitOutput(ctx, dir, "describe", "--always", "--dirty"); v != "" {
		m.Version = v
	}
	m.Revision = gitOutput(ctx, dir, "rev-parse", "HEAD")
	if s := gitOutput(ctx, dir, "log", "-1", "--format=%ct"); s != "" {
		if sec, err := strconv.ParseInt(s, 10, 64); err == nil {
			m.Time = time.Unix(sec, 0).UTC()
		}
	}
	return m
}

func gitOutput(ctx context.Context, dir string, args ...string) string {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// moduleRoot is the directory of the main module's go.mod, so the tool
// works from any directory inside the repository.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("images: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == "/dev/null" {
		return "", fmt.Errorf("images: not inside the tally module")
	}
	return filepath.Dir(gomod), nil
}
