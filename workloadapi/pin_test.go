package workloadapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	xunix "golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/attest/unix"
	"github.com/tallyid/tally/internal/peercred/peercredtest"
)

// The PID-reuse tests run the test binary in two more roles:
//
//	connector (child of the test): connects to the socket named by
//	    envSocket, waits until the server has accepted and pinned the
//	    connection, hands the connection to a fetcher and then exits, or
//	    waits for the fetcher if envStay is set.
//	    fd 3: result pipe (write end), fd 4: go pipe (read end),
//	    fd 5: ready pipe (write end).
//	fetcher (grandchild): once started, closes the ready pipe; waits for a
//	    byte on the go pipe, then calls FetchX509SVID over the inherited
//	    connection and writes "<its pid>\t<numeric code>\t<message>\t<first
//	    SPIFFE ID>" to the result pipe.
//	    fd 3: the connection, fd 4: result pipe, fd 5: go pipe, fd 6: ready
//	    pipe.
const (
	envRole   = "TALLY_WLAPI_TEST_ROLE"
	envSocket = "TALLY_WLAPI_TEST_SOCKET"
	envStay   = "TALLY_WLAPI_TEST_STAY"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "connector":
		if err := runConnector(); err != nil {
			fmt.Fprintln(os.Stderr, "connector:", err)
			os.Exit(2)
		}
		os.Exit(0)
	case "fetcher":
		if err := runFetcher(); err != nil {
			fmt.Fprintln(os.Stderr, "fetcher:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	// Fetchers orphaned by their connector are re-parented to the test
	// process, which reaps them.
	if err := xunix.Prctl(xunix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
	}
	os.Exit(m.Run())
}

func runConnector() error {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: os.Getenv(envSocket), Net: "unix"})
	if err != nil {
		return err
	}
	// The server writes its HTTP/2 settings right after the handshake that
	// pins this process: peek at them, leaving them for the fetcher.
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var peekErr error
	if err := raw.Read(func(fd uintptr) bool {
		_, _, peekErr = xunix.Recvfrom(int(fd), make([]byte, 1), xunix.MSG_PEEK)
		return !errors.Is(peekErr, xunix.EAGAIN)
	}); err != nil {
		return err
	}
	if peekErr != nil {
		return peekErr
	}
	f, err := conn.File()
	if err != nil {
		return err
	}
	fetcher := exec.Command(os.Args[0])
	fetcher.Env = append(os.Environ(), envRole+"=fetcher")
	ready := os.NewFile(5, "ready")
	fetcher.ExtraFiles = []*os.File{f, os.NewFile(3, "result"), os.NewFile(4, "go"), ready}
	fetcher.Stderr = os.Stderr
	if err := fetcher.Start(); err != nil {
		return err
	}
	ready.Close() // the fetcher's copy alone tells the test when it has started
	if os.Getenv(envStay) == "" {
		return nil // exit, leaving the connection to the fetcher
	}
	return fetcher.Wait()
}

func runFetcher() error {
	f := os.NewFile(3, "conn")
	conn, err := net.FileConn(f)
	if err != nil {
		return err
	}
	f.Close()
	result := os.NewFile(4, "result")
	goR := os.NewFile(5, "go")
	// Started: the threads the runtime starts with exist, so none of them
	// takes the connector's PID once the test frees it for reuse.
	os.NewFile(6, "ready").Close()
	if _, err := io.ReadFull(goR, make([]byte, 1)); err != nil {
		return err
	}

	var dialed atomic.Bool
	cc, err := grpc.NewClient("passthrough:///workload",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if dialed.Swap(true) {
				return nil, errors.New("the inherited connection is used up")
			}
			return conn, nil
		}))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(withHeader(context.Background()), waitFor)
	defer cancel()
	var id string
	stream, err := workload.NewSpiffeWorkloadAPIClient(cc).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		var resp *workload.X509SVIDResponse
		if resp, err = stream.Recv(); err == nil && len(resp.Svids) > 0 {
			id = resp.Svids[0].SpiffeId
		}
	}
	st := status.Convert(err)
	_, err = fmt.Fprintf(result, "%d\t%d\t%s\t%s\n", os.Getpid(), st.Code(), st.Message(), id)
	return err
}

// handoff is a connector and its fetcher.
type handoff struct {
	connector *exec.Cmd
	goW       *os.File
	results   *os.File
}

// startHandoff starts a connector on socket and waits until it has connected
// and handed its connection to a fetcher, and the fetcher has started; the
// connector exits then unless stay.
func startHandoff(t *testing.T, socket string, stay bool) *handoff {
	t.Helper()
	resR, resW, err := os.Pipe()
	require.NoError(t, err)
	goR, goW, err := os.Pipe()
	require.NoError(t, err)
	readyR, readyW, err := os.Pipe()
	require.NoError(t, err)
	t.Cleanup(func() {
		resR.Close()
		goW.Close()
		readyR.Close()
	})
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envRole+"=connector", envSocket+"="+socket)
	if stay {
		cmd.Env = append(cmd.Env, envStay+"=1")
	}
	cmd.ExtraFiles = []*os.File{resW, goR, readyW}
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	resW.Close()
	goR.Close()
	readyW.Close()
	h := &handoff{connector: cmd, goW: goW, results: resR}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if !stay {
		require.NoError(t, cmd.Wait(), "connector")
	}
	// EOF once the fetcher closed its ready pipe (the connector's copy is
	// closed when it passes it on or exits).
	require.NoError(t, readyR.SetReadDeadline(time.Now().Add(waitFor)))
	n, err := readyR.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF, "the fetcher did not start (%d bytes)", n)
	return h
}

type fetchResult struct {
	pid     int
	code    codes.Code
	message string
	id      string
}

// fetch lets the fetcher call FetchX509SVID and returns what it got.
func (h *handoff) fetch(t *testing.T) fetchResult {
	t.Helper()
	_, err := h.goW.Write([]byte{1})
	require.NoError(t, err)
	require.NoError(t, h.results.SetReadDeadline(time.Now().Add(2*waitFor)))
	out, err := io.ReadAll(h.results)
	require.NoError(t, err)
	fields := strings.Split(strings.TrimSuffix(string(out), "\n"), "\t")
	require.Len(t, fields, 4, "fetcher output %q", out)
	pid, err := strconv.Atoi(fields[0])
	require.NoError(t, err)
	// Reap the fetcher if it was orphaned to us (ECHILD if its connector
	// reaped it).
	var ws xunix.WaitStatus
	xunix.Wait4(pid, &ws, 0, nil)
	code, err := strconv.ParseUint(fields[1], 10, 32)
	require.NoError(t, err)
	return fetchResult{pid: pid, code: codes.Code(code), message: fields[2], id: fields[3]}
}

// TestPIDReuseGuard hands a connection from the process that opened it (the
// connector, which the server pinned) to another process (the fetcher) that
// calls over it. Identities are served while the connector lives; once it is
// gone, and even when its PID names another process that attestation would
// happily describe, the call is refused.
func TestPIDReuseGuard(t *testing.T) {
	ca := newTestCA(t)
	// The entries match any process of this uid: the connector, the
	// fetcher and the sleep that takes over a PID alike. Only the pin
	// tells them apart.
	src := newTestSource(ca, appEntries(t, ca)...)
	real := unix.New(unix.Config{})

	t.Run("connector alive: served", func(t *testing.T) {
		e := startServer(t, src)
		h := startHandoff(t, e.socket, true)
		got := h.fetch(t)
		assert.Equal(t, codes.OK, got.code, got.message)
		assert.Equal(t, appID.String(), got.id)
		assert.NotEqual(t, h.connector.Process.Pid, got.pid)
	})

	t.Run("connector exited", func(t *testing.T) {
		e := startServer(t, src)
		h := startHandoff(t, e.socket, false) // exited and reaped
		got := h.fetch(t)
		assert.Equal(t, codes.PermissionDenied, got.code)
		assert.Equal(t, "caller process exited or its PID was reused", got.message)
		assert.Empty(t, got.id)
		assert.Equal(t, float64(1), e.metric(t, "tally_agent_attestations_total", "result", "process_gone"))
		assert.Contains(t, e.logs.String(), "pid="+strconv.Itoa(h.connector.Process.Pid))
	})

	t.Run("connector's PID reused before the call", func(t *testing.T) {
		e := startServer(t, src)
		h := startHandoff(t, e.socket, false)
		pid := h.connector.Process.Pid
		impostor := peercredtest.ReusePID(t, pid)
		require.Equal(t, pid, impostor.Process.Pid)
		// Attestation alone would take the impostor for the caller.
		exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
		require.NoError(t, err)
		sels, err := real.Attest(context.Background(), attest.Process{PID: int32(pid), Exe: exe})
		require.NoError(t, err)
		require.Contains(t, sels, unixSel("path:/usr/bin/sleep"))

		got := h.fetch(t)
		assert.Equal(t, codes.PermissionDenied, got.code)
		assert.Equal(t, "caller process exited or its PID was reused", got.message)
		assert.Empty(t, got.id)
		assert.Equal(t, float64(1), e.metric(t, "tally_agent_attestations_total", "result", "process_gone"))
	})

	t.Run("connector's PID reused during attestation", func(t *testing.T) {
		// The attestor is slow at the worst moment: while it works, the
		// connector dies and a sleep takes its PID; the attestor then reads
		// the sleep's /proc entries.
		var target atomic.Int32
		var mu sync.Mutex
		var attested []attest.Selector
		var reuseErr error
		var connector *exec.Cmd
		attestor := attestorFunc(func(ctx context.Context, p attest.Process) ([]attest.Selector, error) {
			pid := p.PID
			if pid != target.Load() {
				return real.Attest(ctx, p)
			}
			mu.Lock()
			defer mu.Unlock()
			connector.Process.Signal(syscall.SIGKILL)
			connector.Wait()
			impostor, err := peercredtest.Reuse(int(pid))
			if err != nil {
				reuseErr = err
			} else {
				t.Cleanup(func() {
					impostor.Process.Kill()
					impostor.Wait()
				})
			}
			// What the impostor runs, as a fresh read of /proc shows it.
			exe, _ := os.Readlink("/proc/" + strconv.Itoa(int(pid)) + "/exe")
			attested, err = real.Attest(ctx, attest.Process{PID: pid, Exe: exe})
			return attested, err
		})
		e := startServer(t, src, withAttestor(attestor))
		h := startHandoff(t, e.socket, true)
		mu.Lock()
		connector = h.connector
		target.Store(int32(h.connector.Process.Pid))
		mu.Unlock()

		got := h.fetch(t)
		assert.Equal(t, codes.PermissionDenied, got.code, got.message)
		assert.Equal(t, "caller process exited or its PID was reused", got.message)
		assert.Empty(t, got.id)
		assert.Equal(t, float64(1), e.metric(t, "tally_agent_attestations_total", "result", "process_gone"))
		mu.Lock()
		defer mu.Unlock()
		require.NoError(t, reuseErr, "the PID must really be reused for this test to show the pin check")
		// The attestor did describe the impostor; the pin check after it
		// refused the call.
		assert.True(t, slices.Contains(attested, unixSel("path:/usr/bin/sleep")), "attested %v", attested)
	})
}
