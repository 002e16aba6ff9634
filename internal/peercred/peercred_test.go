package peercred

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	testTimeout  = 10 * time.Second
	pollInterval = 10 * time.Millisecond

	// envConnect makes the test binary a client: it connects to the socket
	// named by the variable, then waits for stdin to close (or exits at once
	// if envExit is set).
	envConnect = "PEERCRED_TEST_CONNECT"
	envExit    = "PEERCRED_TEST_EXIT"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(envConnect); path != "" {
		conn, err := net.Dial("unix", path)
		if err != nil {
			os.Exit(2)
		}
		if os.Getenv(envExit) == "" {
			io.Copy(io.Discard, os.Stdin)
		}
		conn.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// connectFromChild starts a child process that connects to lis and returns
// the child and the server side of its connection. If exit, the child exits
// right after connecting and has been reaped when connectFromChild returns.
func connectFromChild(t *testing.T, lis *net.UnixListener, exit bool) (*exec.Cmd, *net.UnixConn) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envConnect+"="+lis.Addr().String())
	if exit {
		cmd.Env = append(cmd.Env, envExit+"=1")
	}
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	if exit {
		require.NoError(t, cmd.Wait())
	}
	conn, err := lis.AcceptUnix()
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return cmd, conn
}

func listen(t *testing.T) *net.UnixListener {
	t.Helper()
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s"), Net: "unix"})
	require.NoError(t, err)
	t.Cleanup(func() { lis.Close() })
	return lis
}

func TestServerHandshakePinsPeer(t *testing.T) {
	lis := listen(t)
	cmd, raw := connectFromChild(t, lis, false)

	conn, ai, err := Credentials().ServerHandshake(raw)
	require.NoError(t, err)
	info := ai.(AuthInfo)
	assert.Equal(t, int32(cmd.Process.Pid), info.PID)
	assert.Equal(t, uint32(os.Getuid()), info.UID)
	assert.Equal(t, uint32(os.Getgid()), info.GID)
	require.NotNil(t, info.Pin)
	assert.Contains(t, []Method{MethodPeerPIDFD, MethodPIDFD, MethodStartTime}, info.Pin.Method())
	t.Logf("pinned by %s", info.Pin.Method())
	require.NoError(t, info.Pin.Alive())

	// The peer dies: the pin notices.
	require.NoError(t, cmd.Process.Kill())
	cmd.Wait()
	require.ErrorIs(t, info.Pin.Alive(), ErrProcessGone)

	// Closing the connection closes the pin.
	require.NoError(t, conn.Close())
	assert.Equal(t, -1, info.Pin.fd)
	require.ErrorIs(t, info.Pin.Alive(), ErrNotPinned)
}

func TestServerHandshakePeerAlreadyGone(t *testing.T) {
	lis := listen(t)
	// The child connects and exits, and is reaped, before the handshake.
	cmd, raw := connectFromChild(t, lis, true)

	conn, ai, err := Credentials().ServerHandshake(raw)
	require.NoError(t, err, "a failure to pin must not fail the handshake")
	defer conn.Close()
	info := ai.(AuthInfo)
	assert.Equal(t, int32(cmd.Process.Pid), info.PID)
	require.ErrorIs(t, info.Pin.Alive(), ErrProcessGone)
}

func TestReadNotUnix(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	_, err := Read(a)
	require.ErrorIs(t, err, ErrNoCredentials)
	_, _, err = Credentials().ServerHandshake(a)
	require.ErrorIs(t, err, ErrNoCredentials)
}
