// Package unix attests workloads by their Unix process: user, group and
// executable, read from procfs.
package unix

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/tallyid/tally/attest"
)

// Type is the selector type this attestor produces: "unix:uid:1000" is
// Selector{Type: "unix", Value: "uid:1000"}.
const Type = "unix"

// Config configures an Attestor.
type Config struct {
	// ProcRoot is where procfs is mounted. Default "/proc".
	ProcRoot string
}

// Attestor derives unix selectors for a process. It is safe for concurrent use.
type Attestor struct {
	procRoot string
	names    nameCache
}

// New returns an Attestor.
func New(cfg Config) *Attestor {
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	return &Attestor{procRoot: cfg.ProcRoot, names: nameCache{ttl: time.Minute, m: map[string]cachedName{}}}
}

// Attest returns the selectors of process pid, in this order:
//
//	unix:uid:<real uid>    from the Uid line of <proc>/<pid>/status
//	unix:gid:<real gid>    from the Gid line
//	unix:user:<name>       if the uid has a name in the agent's user database
//	unix:group:<name>      if the gid has a name in the agent's group database
//	unix:path:<path>       p.Exe: the executable when the process connected
//
// The path is as the kernel showed it to the agent at connect time; it ends
// in " (deleted)" if the file was removed after exec. It is left out if the
// link could not be read (a zombie or kernel thread has none; reading another
// user's link needs CAP_SYS_PTRACE): a missing selector can only match fewer
// entries. The path is never read again here: a process that executes
// another program after connecting must not be attested as that program, and
// the caller refuses it (peercred.ErrExecuted).
//
// If the PID names no process, the error wraps attest.ErrDenied. Attest does
// not know whether the PID still names the process the caller means: the
// caller checks that after Attest returns (peercred.Pin).
func (a *Attestor) Attest(ctx context.Context, p attest.Process) ([]attest.Selector, error) {
	pid := p.PID
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if pid <= 0 {
		return nil, fmt.Errorf("%w: unix: invalid pid %d", attest.ErrDenied, pid)
	}
	dir := filepath.Join(a.procRoot, strconv.Itoa(int(pid)))
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: unix: no process %d", attest.ErrDenied, pid)
	}
	if err != nil {
		return nil, fmt.Errorf("unix: %w", err)
	}
	uid, gid, err := parseStatus(status)
	if err != nil {
		return nil, fmt.Errorf("unix: %s: %w", filepath.Join(dir, "status"), err)
	}

	sels := []attest.Selector{
		{Type: Type, Value: "uid:" + uid},
		{Type: Type, Value: "gid:" + gid},
	}
	if name := a.names.lookup("u"+uid, func() string {
		if u, err := user.LookupId(uid); err == nil {
			return u.Username
		}
		return ""
	}); name != "" {
		sels = append(sels, attest.Selector{Type: Type, Value: "user:" + name})
	}
	if name := a.names.lookup("g"+gid, func() string {
		if g, err := user.LookupGroupId(gid); err == nil {
			return g.Name
		}
		return ""
	}); name != "" {
		sels = append(sels, attest.Selector{Type: Type, Value: "group:" + name})
	}
	if filepath.IsAbs(p.Exe) {
		sels = append(sels, attest.Selector{Type: Type, Value: "path:" + p.Exe})
	}
	return sels, nil
}

// parseStatus returns the real uid and gid (the first of the four ids on the
// Uid and Gid lines) of a proc_pid_status(5) file.
func parseStatus(b []byte) (uid, gid string, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, rest, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			continue
		}
		var dst *string
		switch string(key) {
		case "Uid":
			dst = &uid
		case "Gid":
			dst = &gid
		default:
			continue
		}
		f := bytes.Fields(rest)
		if len(f) == 0 {
			return "", "", fmt.Errorf("empty %s line", key)
		}
		if _, err := strconv.ParseUint(string(f[0]), 10, 32); err != nil {
			return "", "", fmt.Errorf("%s: %w", key, err)
		}
		*dst = string(f[0])
	}
	if err := sc.Err(); err != nil {
		return "", "", err
	}
	if uid == "" || gid == "" {
		return "", "", errors.New("no Uid or Gid line")
	}
	return uid, gid, nil
}

// nameCache remembers user and group names for a short while: every
// Workload API call attests, and names change rarely.
type nameCache struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]cachedName
}

type cachedName struct {
	name    string
	expires time.Time
}

func (c *nameCache) lookup(key string, resolve func() string) string {
	now := time.Now()
	c.mu.Lock()
	hit, ok := c.m[key]
	c.mu.Unlock()
	if ok && now.Before(hit.expires) {
		return hit.name
	}
	name := resolve()
	c.mu.Lock()
	if len(c.m) > 10_000 {
		clear(c.m)
	}
	c.m[key] = cachedName{name: name, expires: now.Add(c.ttl)}
	c.mu.Unlock()
	return name
}
