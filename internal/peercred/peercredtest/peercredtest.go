// Package peercredtest helps tests make the kernel reuse a PID.
package peercredtest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

const nsLastPID = "/proc/sys/kernel/ns_last_pid"

// ErrCannotReuse: the PID could not be reused here (ns_last_pid is not
// writable, or other processes kept taking it first).
var ErrCannotReuse = errors.New("peercredtest: cannot reuse pid")

// Reuse starts `sleep 300` under pid, which must be free (its process exited
// and was reaped), by writing pid-1 to /proc/sys/kernel/ns_last_pid (needs
// CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE) and retrying while other processes
// and threads take the PID first. One that took it is waited for, up to
// takenTimeout, until its PID is free again. The caller kills and reaps the
// sleep. Safe to call from any goroutine.
func Reuse(pid int) (*exec.Cmd, error) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return nil, fmt.Errorf("peercredtest: %w", err)
	}
	proc := "/proc/" + strconv.Itoa(pid)
	deadline := time.Now().Add(takenTimeout)
	const attempts = 200
	for range attempts {
		// Everything but the fork happens before ns_last_pid is written,
		// to leave other forks as small a window as can be.
		cmd := exec.Command(sleep, "300")
		if err := os.WriteFile(nsLastPID, []byte(strconv.Itoa(pid-1)), 0); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCannotReuse, err)
		}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("peercredtest: start sleep: %w", err)
		}
		if cmd.Process.Pid == pid {
			return cmd, nil
		}
		cmd.Process.Kill()
		cmd.Wait()
		// Another process or thread forked first and took pid: most are
		// short-lived (this machine's builds and tests), so wait until it
		// has exited and been reaped.
		for {
			if _, err := os.Stat(proc); errors.Is(err, fs.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%w: pid %d still taken after %s by %s", ErrCannotReuse, pid, takenTimeout, describe(proc))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil, fmt.Errorf("%w: pid %d not obtained in %d attempts", ErrCannotReuse, pid, attempts)
}

// takenTimeout bounds how long Reuse waits for processes that took the PID.
const takenTimeout = 10 * time.Second

// describe names the process or thread at proc (/proc/<pid>) for an error.
func describe(proc string) string {
	b, err := os.ReadFile(proc + "/status")
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if k, _, _ := strings.Cut(line, ":"); k == "Name" || k == "Tgid" || k == "PPid" {
			out = append(out, strings.Join(strings.Fields(line), " "))
		}
	}
	return strings.Join(out, ", ")
}

// ReusePID is Reuse for the test's own goroutine: it fails the test if the
// PID cannot be reused (a test that needs a reused PID shows nothing without
// one), and kills and reaps the sleep when the test ends.
func ReusePID(t testing.TB, pid int) *exec.Cmd {
	t.Helper()
	cmd, err := Reuse(pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}
