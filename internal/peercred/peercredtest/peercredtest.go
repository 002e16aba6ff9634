// Package peercredtest helps tests make the kernel reuse a PID.
package peercredtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

const nsLastPID = "/proc/sys/kernel/ns_last_pid"

// ErrCannotReuse: the PID could not be reused here (ns_last_pid is not
// writable, or other processes kept taking it first).
var ErrCannotReuse = errors.New("peercredtest: cannot reuse pid")

// Reuse starts `sleep 300` under pid, which must be free (its process exited
// and was reaped), by writing pid-1 to /proc/sys/kernel/ns_last_pid (needs
// CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE) and retrying while other processes
// and threads take the PID first. The caller kills and reaps the sleep.
// Safe to call from any goroutine.
func Reuse(pid int) (*exec.Cmd, error) {
	const attempts = 200
	for range attempts {
		if err := os.WriteFile(nsLastPID, []byte(strconv.Itoa(pid-1)), 0); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCannotReuse, err)
		}
		cmd := exec.Command("sleep", "300")
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("peercredtest: start sleep: %w", err)
		}
		if cmd.Process.Pid == pid {
			return cmd, nil
		}
		cmd.Process.Kill()
		cmd.Wait()
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			return nil, fmt.Errorf("%w: another process took pid %d", ErrCannotReuse, pid)
		}
	}
	return nil, fmt.Errorf("%w: pid %d not obtained in %d attempts", ErrCannotReuse, pid, attempts)
}

// ReusePID is Reuse for the test's own goroutine: it skips the test if the
// PID cannot be reused, and kills and reaps the sleep when the test ends.
func ReusePID(t testing.TB, pid int) *exec.Cmd {
	t.Helper()
	cmd, err := Reuse(pid)
	if errors.Is(err, ErrCannotReuse) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}
