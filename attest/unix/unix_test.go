package unix

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/attest"
)

func sel(value string) attest.Selector { return attest.Selector{Type: Type, Value: value} }

// names returns the user and group selectors the agent's databases give uid
// and gid, as Attest must.
func names(t *testing.T, uid, gid int) []attest.Selector {
	t.Helper()
	var out []attest.Selector
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		out = append(out, sel("user:"+u.Username))
	}
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		out = append(out, sel("group:"+g.Name))
	}
	return out
}

// process is pid as the Workload API passes it: with the executable it runs
// now, read as the agent reads it when a connection is accepted.
func process(pid int32) attest.Process {
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(int(pid)) + "/exe")
	return attest.Process{PID: pid, Exe: exe}
}

func startProcess(t *testing.T, cmd *exec.Cmd) int32 {
	t.Helper()
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return int32(cmd.Process.Pid)
}

func TestAttestRealProcesses(t *testing.T) {
	self, err := os.Executable()
	require.NoError(t, err)
	self, err = filepath.EvalSymlinks(self)
	require.NoError(t, err)
	sleepPath, err := exec.LookPath("sleep")
	require.NoError(t, err)
	sleepPath, err = filepath.EvalSymlinks(sleepPath)
	require.NoError(t, err)

	tests := []struct {
		name string
		// start returns the pid to attest.
		start    func(t *testing.T) int32
		uid, gid int
		path     string // "" if no path selector is expected
	}{
		{
			name:  "the test process",
			start: func(*testing.T) int32 { return int32(os.Getpid()) },
			uid:   os.Getuid(), gid: os.Getgid(), path: self,
		},
		{
			name:  "a sleep child",
			start: func(t *testing.T) int32 { return startProcess(t, exec.Command("sleep", "300")) },
			uid:   os.Getuid(), gid: os.Getgid(), path: sleepPath,
		},
		{
			name: "a sleep child running as nobody",
			start: func(t *testing.T) int32 {
				require.Zero(t, os.Getuid(), "Tally's tests run as root (make test)")
				cmd := exec.Command("sleep", "300")
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
				return startProcess(t, cmd)
			},
			uid: 65534, gid: 65534, path: sleepPath,
		},
		{
			name: "a zombie has no executable",
			start: func(t *testing.T) int32 {
				cmd := exec.Command("sleep", "300")
				pid := startProcess(t, cmd)
				require.NoError(t, cmd.Process.Kill())
				require.Eventually(t, func() bool {
					b, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/status")
					return err == nil && strings.Contains(string(b), "State:\tZ")
				}, 10*time.Second, 10*time.Millisecond)
				return pid
			},
			uid: os.Getuid(), gid: os.Getgid(),
		},
	}
	a := New(Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid := tt.start(t)
			got, err := a.Attest(context.Background(), process(pid))
			require.NoError(t, err)

			want := []attest.Selector{sel("uid:" + strconv.Itoa(tt.uid)), sel("gid:" + strconv.Itoa(tt.gid))}
			want = append(want, names(t, tt.uid, tt.gid)...)
			if tt.path != "" {
				want = append(want, sel("path:"+tt.path))
			}
			assert.Equal(t, want, got)
		})
	}
}

func TestAttestNoProcess(t *testing.T) {
	cmd := exec.Command("true")
	require.NoError(t, cmd.Run()) // exited and reaped

	a := New(Config{})
	for _, pid := range []int32{int32(cmd.Process.Pid), 0, -1} {
		_, err := a.Attest(context.Background(), attest.Process{PID: pid})
		if pid > 0 {
			if _, statErr := os.Stat("/proc/" + strconv.Itoa(int(pid))); statErr == nil {
				continue // the PID was taken by another process meanwhile
			}
		}
		require.ErrorIs(t, err, attest.ErrDenied, "pid %d", pid)
	}
}

func TestAttestCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := New(Config{}).Attest(ctx, process(int32(os.Getpid())))
	require.ErrorIs(t, err, context.Canceled)
}

// TestAttestProcRoot runs against a fake procfs to cover what real processes
// here cannot show.
func TestAttestProcRoot(t *testing.T) {
	const status = "Name:\tapp\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t%s\t2000\t2000\t2000\nGid:\t%s\t3000\t3000\t3000\nGroups:\t\n"
	tests := []struct {
		name    string
		status  string // without the Uid/Gid lines if %s is missing
		exe     string // the executable the process connected with; "" for none
		want    []attest.Selector
		wantErr bool
	}{
		{
			name:   "real ids, not effective ones; unknown ids have no names",
			status: fmt.Sprintf(status, "4000001", "4000002"),
			exe:    "/opt/app/bin/app",
			want:   []attest.Selector{sel("uid:4000001"), sel("gid:4000002"), sel("path:/opt/app/bin/app")},
		},
		{
			name:   "root has names",
			status: fmt.Sprintf(status, "0", "0"),
			exe:    "/usr/bin/app (deleted)",
			want:   []attest.Selector{sel("uid:0"), sel("gid:0"), sel("user:root"), sel("group:root"), sel("path:/usr/bin/app (deleted)")},
		},
		{
			name:   "relative link is no path",
			status: fmt.Sprintf(status, "4000001", "4000002"),
			exe:    "app",
			want:   []attest.Selector{sel("uid:4000001"), sel("gid:4000002")},
		},
		{name: "no Gid line", status: "Uid:\t1\t1\t1\t1\n", wantErr: true},
		{name: "empty Uid line", status: "Uid:\nGid:\t1\t1\t1\t1\n", wantErr: true},
		{name: "bad uid", status: fmt.Sprintf(status, "-1", "1"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "42")
			require.NoError(t, os.Mkdir(dir, 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "status"), []byte(tt.status), 0o644))
			got, err := New(Config{ProcRoot: root}).Attest(context.Background(), attest.Process{PID: 42, Exe: tt.exe})
			if tt.wantErr {
				require.Error(t, err)
				require.NotErrorIs(t, err, attest.ErrDenied)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}
