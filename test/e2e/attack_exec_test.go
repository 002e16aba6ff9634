package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// The roles of TestAttackExecAfterConnect.
const (
	// roleExecConnector connects to the agent, hands the connection to a
	// child (roleExecUser) and executes TALLY_E2E_EXEC in its own place.
	roleExecConnector = "exec-connector"
	// roleExecUser waits until its parent runs TALLY_E2E_EXEC, then calls
	// FetchX509SVID on the inherited connection and prints the outcome.
	roleExecUser = "exec-user"
	// roleDirectCaller calls FetchX509SVIDs itself and prints the outcome.
	roleDirectCaller = "direct-caller"
)

const attackUID = 12347

// TestAttackExecAfterConnect is issue 8's first attack exactly: a process
// running as uid U dials the agent socket, passes the connected socket to a
// child, then executes an allowed binary (/usr/bin/sleep) under the same PID;
// the child calls FetchX509SVID on that connection. The agent must not hand
// out the identity of entry unix:uid:U + unix:path:/usr/bin/sleep, since no
// code of that binary ever asked.
func TestAttackExecAfterConnect(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	a := harness.StartAgent(t, s, "")
	sleepPath, err := exec.LookPath("sleep")
	require.NoError(t, err)
	sleepPath, err = filepath.EvalSymlinks(sleepPath)
	require.NoError(t, err)
	uid := fmt.Sprintf("uid:%d", attackUID)
	createEntries(t, s,
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/uid-only", ParentId: a.ID(t).String(),
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: uid}}},
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/sleep-only", ParentId: a.ID(t).String(),
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: uid}, {Type: "unix", Value: "path:" + sleepPath}}},
	)
	tool := copyTestBinary(t)
	env := []string{"TALLY_E2E_SOCKET=" + a.Socket, "TALLY_E2E_EXEC=" + sleepPath}

	// Called directly, the tool gets its uid's identity only.
	direct := harness.StartProcess(t, append(env, roleEnv+"="+roleDirectCaller), attackUID, tool)
	require.NoError(t, direct.Wait(t, time.Minute), direct.Output())
	require.Contains(t, direct.Output(), "ids: spiffe://example.org/uid-only\n")

	attack := harness.StartProcess(t, append(env, roleEnv+"="+roleExecConnector), attackUID, tool)
	_ = attack.Wait(t, time.Minute) // the child kills the sleep it became
	out := attack.Output()
	require.Contains(t, out, "parent runs "+sleepPath+"\n", "the attack ran as described")
	require.NotContains(t, out, "sleep-only", "the identity of a program that never asked")
	require.Contains(t, out, "code: PermissionDenied: caller process executed another program since it connected\n")
	require.Contains(t, a.Log(), "process executed another program since it connected")
}

// copyTestBinary copies this test binary where another uid may run it.
func copyTestBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	require.NoError(t, err)
	dir, err := os.MkdirTemp("", "tally-e2e-tool-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	in, err := os.Open(self)
	require.NoError(t, err)
	defer in.Close()
	path := filepath.Join(dir, "tool")
	out, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
	return path
}

func execConnector() int {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: os.Getenv("TALLY_E2E_SOCKET")})
	}
	if err == nil {
		// The agent has accepted and looked at this process once its
		// HTTP/2 settings arrive; peek, so that the child's client reads
		// them.
		_, _, err = unix.Recvfrom(fd, make([]byte, 1), unix.MSG_PEEK)
	}
	if err != nil {
		fmt.Println("connect:", err)
		return 1
	}
	// The write end of this pipe is close-on-exec and this process's alone:
	// the child reads EOF from the other end once this process executes
	// TALLY_E2E_EXEC (or dies).
	execR, execW, err := os.Pipe()
	if err != nil {
		fmt.Println("pipe:", err)
		return 1
	}
	child := exec.Command("/proc/self/exe")
	child.Env = append(os.Environ(), roleEnv+"="+roleExecUser, "TALLY_E2E_PARENT="+strconv.Itoa(os.Getpid()))
	child.ExtraFiles = []*os.File{os.NewFile(uintptr(fd), "agent"), execR}
	child.Stdout, child.Stderr = os.Stdout, os.Stderr
	if err := child.Start(); err != nil {
		fmt.Println("start child:", err)
		return 1
	}
	execR.Close()
	target := os.Getenv("TALLY_E2E_EXEC")
	err = syscall.Exec(target, []string{filepath.Base(target), "60"}, os.Environ())
	runtime.KeepAlive(execW) // open until execve closes it, not closed earlier by a finalizer
	fmt.Println("exec:", err)
	return 1
}

func execUser() int {
	parent, _ := strconv.Atoi(os.Getenv("TALLY_E2E_PARENT"))
	// The parent's sleep is this role's to end: the test waits for it.
	defer syscall.Kill(parent, syscall.SIGKILL)
	target := os.Getenv("TALLY_E2E_EXEC")
	// EOF: the parent's close-on-exec write end is gone, so it executed
	// (the kernel switches /proc/<pid>/exe before it closes such files) or
	// died.
	if err := syscall.SetNonblock(4, true); err != nil { // pollable, for the deadline
		fmt.Println("exec pipe:", err)
		return 1
	}
	execR := os.NewFile(4, "exec")
	if err := execR.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		fmt.Println("exec pipe:", err)
		return 1
	}
	if n, err := execR.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		fmt.Println("waiting for the parent to execute:", n, err)
		return 1
	}
	execR.Close()
	if exe, _ := os.Readlink("/proc/" + strconv.Itoa(parent) + "/exe"); exe != target {
		fmt.Println("parent never ran", target, "it runs", exe)
		return 1
	}
	fmt.Println("parent runs " + target)
	conn, err := net.FileConn(os.NewFile(3, "agent"))
	if err != nil {
		fmt.Println("inherited connection:", err)
		return 1
	}
	dialed := false
	cc, err := grpc.NewClient("passthrough:///agent",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if dialed {
				return nil, fmt.Errorf("only the inherited connection")
			}
			dialed = true
			return conn, nil
		}))
	if err != nil {
		fmt.Println("client:", err)
		return 1
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	stream, err := workload.NewSpiffeWorkloadAPIClient(cc).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	var resp *workload.X509SVIDResponse
	if err == nil {
		resp, err = stream.Recv()
	}
	if err != nil {
		st := status.Convert(err)
		fmt.Printf("code: %s: %s\n", st.Code(), st.Message())
		return 0
	}
	var ids []string
	for _, svid := range resp.GetSvids() {
		ids = append(ids, svid.GetSpiffeId())
	}
	fmt.Println("ids: " + strings.Join(ids, ","))
	return 0
}

func directCaller() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr("unix://"+os.Getenv("TALLY_E2E_SOCKET")))
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	var ids []string
	for _, svid := range svids {
		ids = append(ids, svid.ID.String())
	}
	fmt.Println("ids: " + strings.Join(ids, ","))
	return 0
}
