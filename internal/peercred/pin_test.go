package peercred

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tallyid/tally/internal/peercred/peercredtest"
)

func TestParseStat(t *testing.T) {
	tail := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20 21\n"
	tests := []struct {
		name    string
		in      string
		state   byte
		start   uint64
		wantErr bool
	}{
		{name: "plain", in: "12 (sleep)" + tail, state: 'S', start: 4242},
		{name: "spaces and parens in comm", in: "12 (a) b (c) d)" + tail, state: 'S', start: 4242},
		{name: "zombie", in: "12 (x) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99 20", state: 'Z', start: 99},
		{name: "no comm", in: "12 sleep S 1", wantErr: true},
		{name: "truncated", in: "12 (sleep) S 1 2 3", wantErr: true},
		{name: "bad start", in: "12 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -4 20", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := parseStat([]byte(tt.in))
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.state, st.state)
			assert.Equal(t, tt.start, st.start)
		})
	}
}

func TestReadStatSelf(t *testing.T) {
	st, err := readStat(procRoot, int32(os.Getpid()))
	require.NoError(t, err)
	assert.NotZero(t, st.start)
	assert.False(t, st.exited())
}

// startSleep starts a real process that the test kills or that is killed
// when the test ends.
func startSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

func TestPin(t *testing.T) {
	pinners := []struct {
		name   string
		method Method
		pin    func(pid int32) (*Pin, error)
	}{
		{name: "pidfd_open", method: MethodPIDFD, pin: NewPin},
		{name: "start time only", method: MethodStartTime, pin: func(pid int32) (*Pin, error) {
			return pinFD(pid, -1, MethodStartTime)
		}},
	}
	scenarios := []struct {
		name string
		// act does something to the pinned process; reused is set when the
		// PID names another process afterwards.
		act     func(t *testing.T, cmd *exec.Cmd)
		wantErr error
		// pidfdOnly: a start time has a resolution of one clock tick
		// (10ms); only a pidfd tells apart processes started in the same
		// tick under the same PID.
		pidfdOnly bool
	}{
		{name: "running", act: func(*testing.T, *exec.Cmd) {}},
		{name: "stopped (SIGSTOP) is still alive", act: func(t *testing.T, cmd *exec.Cmd) {
			require.NoError(t, cmd.Process.Signal(syscall.SIGSTOP))
			waitState(t, cmd.Process.Pid, 'T')
		}},
		{name: "killed, not reaped (zombie)", wantErr: ErrProcessGone, act: func(t *testing.T, cmd *exec.Cmd) {
			require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
			waitState(t, cmd.Process.Pid, 'Z')
		}},
		{name: "killed and reaped", wantErr: ErrProcessGone, act: func(t *testing.T, cmd *exec.Cmd) {
			require.NoError(t, cmd.Process.Kill())
			cmd.Wait()
		}},
		{name: "pid reused at once", pidfdOnly: true, wantErr: ErrProcessGone, act: func(t *testing.T, cmd *exec.Cmd) {
			reuse(t, cmd)
		}},
		{name: "pid reused a clock tick later", wantErr: ErrProcessGone, act: func(t *testing.T, cmd *exec.Cmd) {
			st, err := readStat(procRoot, int32(cmd.Process.Pid))
			require.NoError(t, err)
			waitTickAfter(t, st.start)
			reuse(t, cmd)
		}},
	}
	for _, p := range pinners {
		t.Run(p.name, func(t *testing.T) {
			for _, sc := range scenarios {
				if sc.pidfdOnly && p.method == MethodStartTime {
					continue // a start time cannot tell apart processes started in the same clock tick
				}
				t.Run(sc.name, func(t *testing.T) {
					cmd := startSleep(t)
					pin, err := p.pin(int32(cmd.Process.Pid))
					require.NoError(t, err)
					defer pin.Close()
					require.Equal(t, p.method, pin.Method())
					require.NoError(t, pin.Alive())

					sc.act(t, cmd)
					err = pin.Alive()
					if sc.wantErr == nil {
						require.NoError(t, err)
					} else {
						require.ErrorIs(t, err, sc.wantErr)
					}
				})
			}
		})
	}
}

func TestPinClose(t *testing.T) {
	cmd := startSleep(t)
	pin, err := NewPin(int32(cmd.Process.Pid))
	require.NoError(t, err)
	fd := pin.fd
	require.GreaterOrEqual(t, fd, 0)
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	require.NoError(t, err)
	assert.NotZero(t, flags&unix.FD_CLOEXEC, "pidfd must not leak into children")

	require.NoError(t, pin.Close())
	require.NoError(t, pin.Close(), "Close is idempotent")
	assert.Equal(t, -1, pin.fd)
	require.ErrorIs(t, pin.Alive(), ErrNotPinned)
}

func TestNewPinErrors(t *testing.T) {
	_, err := NewPin(0)
	require.ErrorIs(t, err, ErrNotPinned)

	cmd := exec.Command("true")
	require.NoError(t, cmd.Run())
	_, err = NewPin(int32(cmd.Process.Pid))
	require.ErrorIs(t, err, ErrProcessGone)
}

// reuse kills and reaps cmd and starts another process under its PID.
func reuse(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	require.NoError(t, cmd.Process.Kill())
	cmd.Wait()
	impostor := peercredtest.ReusePID(t, cmd.Process.Pid)
	// The PID is live again, with another process behind it.
	_, err := os.Stat("/proc/" + strconv.Itoa(impostor.Process.Pid))
	require.NoError(t, err)
}

// waitTickAfter waits until the boot-time clock, in the clock ticks of
// /proc/<pid>/stat (USER_HZ, 100 on Linux), is past tick.
func waitTickAfter(t *testing.T, tick uint64) {
	t.Helper()
	require.Eventually(t, func() bool {
		var ts unix.Timespec
		require.NoError(t, unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts))
		return uint64(ts.Nano()/1e7) > tick
	}, testTimeout, time.Millisecond)
}

// waitState waits until /proc/<pid>/stat shows state.
func waitState(t *testing.T, pid int, state byte) {
	t.Helper()
	require.Eventually(t, func() bool {
		st, err := readStat(procRoot, int32(pid))
		return err == nil && st.state == state
	}, testTimeout, pollInterval)
}

// TestPinExec: a pinned process that calls execve(2) keeps its PID and start
// time, but no longer runs what it ran when pinned.
func TestPinExec(t *testing.T) {
	sleepPath := realPath(t, "sleep")
	shPath := realPath(t, "sh")
	pinners := map[string]func(pid int32) (*Pin, error){
		"pidfd_open":      NewPin,
		"start time only": func(pid int32) (*Pin, error) { return pinFD(pid, -1, MethodStartTime) },
	}
	tests := []struct {
		name    string
		then    string // what the shell executes once told to
		now     string // the executable it runs afterwards
		wantErr error
	}{
		{name: "another program", then: "exec sleep 300", now: sleepPath, wantErr: ErrExecuted},
		{name: "the same program again", then: "exec sh -c 'sleep 300; :'", now: shPath},
	}
	for name, pin := range pinners {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				cmd := exec.Command("sh", "-c", "read x; "+tt.then)
				stdin, err := cmd.StdinPipe()
				require.NoError(t, err)
				require.NoError(t, cmd.Start())
				t.Cleanup(func() {
					cmd.Process.Kill()
					cmd.Wait()
				})
				pid := int32(cmd.Process.Pid)
				p, err := pin(pid)
				require.NoError(t, err)
				defer p.Close()
				require.Equal(t, shPath, p.Exe())
				require.NoError(t, p.Alive())

				_, err = stdin.Write([]byte("go\n"))
				require.NoError(t, err)
				require.Eventually(t, func() bool {
					exe, _ := os.Readlink("/proc/" + strconv.Itoa(int(pid)) + "/exe")
					cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/cmdline")
					return exe == tt.now && !strings.Contains(string(cmdline), "read x")
				}, 10*time.Second, 5*time.Millisecond, "the shell executes %q", tt.then)

				err = p.Alive()
				if tt.wantErr == nil {
					require.NoError(t, err, "executing the same file under the same path changes nothing the pin describes")
					return
				}
				require.ErrorIs(t, err, tt.wantErr)
				require.NotErrorIs(t, err, ErrProcessGone)
				assert.Contains(t, err.Error(), strconv.Quote(shPath))
				assert.Contains(t, err.Error(), strconv.Quote(sleepPath))
				assert.Equal(t, shPath, p.Exe(), "Exe stays what the process ran when pinned")
			})
		}
	}
}

func realPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	require.NoError(t, err)
	p, err = filepath.EvalSymlinks(p)
	require.NoError(t, err)
	return p
}
