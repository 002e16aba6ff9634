package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// lockWait bounds how long Start waits for another test process's node to stop.
const lockWait = 10 * time.Minute

// machineLock is the machine-wide lock of the one node that may run at a time (fixed ports,
// bridge and pod CIDR): test packages that each start a node queue on it instead of failing
// on a busy port. The file records "PID RUNDIR" of its holder, so that the next holder can
// clean up after a test process that died without stopping its node (the kernel releases a
// dead process's flock; its daemons, reparented to init, live on).
type machineLock struct {
	f *os.File
}

func lockPath() string { return filepath.Join(os.TempDir(), "tally-node.lock") }

// acquireLock takes the lock, polling until lockWait passes; down is run on a run dir that
// a dead holder left behind.
func acquireLock(logf func(string, ...any), down func(runDir string) error) (*machineLock, error) {
	path := lockPath()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	deadline := time.Now().Add(lockWait)
	for waiting := false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		pid, runDir := readHolder(path)
		if pid == os.Getpid() {
			f.Close()
			return nil, fmt.Errorf("this test process already runs a node (%s): one node at a time (use Shared, or Stop the other first)", runDir)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another node (pid %d, %s) still holds %s after %s", pid, runDir, path, lockWait)
		}
		if !waiting {
			logf("node: waiting for the node of pid %d (%s) to stop (lock %s)", pid, runDir, path)
			waiting = true
		}
		time.Sleep(250 * time.Millisecond)
	}
	l := &machineLock{f: f}
	if _, runDir := readHolder(path); runDir != "" {
		if _, err := os.Stat(runDir); err == nil {
			logf("node: cleaning up %s, left by a test process that did not stop its node", runDir)
			if err := down(runDir); err != nil {
				l.release()
				return nil, fmt.Errorf("cleaning up a previous node: %w", err)
			}
		}
	}
	if err := l.record(""); err != nil {
		l.release()
		return nil, err
	}
	return l, nil
}

// record writes this process's pid and the run dir of its node into the lock file.
func (l *machineLock) record(runDir string) error {
	if err := l.f.Truncate(0); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if _, err := l.f.WriteAt([]byte(fmt.Sprintf("%d %s\n", os.Getpid(), runDir)), 0); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	return nil
}

// release clears the record (the node is gone) and unlocks.
func (l *machineLock) release() {
	_ = l.f.Truncate(0)
	_ = l.f.Close() // closing the last descriptor releases the flock
}

func readHolder(path string) (pid int, runDir string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, ""
	}
	p, dir, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	pid, _ = strconv.Atoi(p)
	return pid, dir
}
