package peercred

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrProcessGone: the pinned process exited, or its PID now names another
// process. A caller that sees it must not attribute anything read about the
// PID (from /proc, the container runtime, ...) to the peer.
var ErrProcessGone = errors.New("peercred: process gone")

// ErrExecuted: the pinned process has executed another program (execve(2))
// since it was pinned. Its PID and start time are unchanged, but what runs
// under them is no longer what connected: a caller must not attribute the new
// program's selectors (its executable path) to the connection.
var ErrExecuted = errors.New("peercred: process executed another program since it connected")

// ErrNotPinned: the peer's process could not be pinned when the connection
// was accepted (it had already exited, or its PID is not visible in this PID
// namespace), or the pin was closed with its connection.
var ErrNotPinned = errors.New("peercred: process not pinned")

// Method names how a Pin holds on to its process.
type Method string

// The pinning methods, strongest first.
const (
	// MethodPeerPIDFD: a pidfd for the process that called connect(2),
	// obtained from the socket (SO_PEERPIDFD, Linux 6.5+). It cannot name
	// another process, whatever happened between connect and accept.
	MethodPeerPIDFD Method = "so_peerpidfd"
	// MethodPIDFD: pidfd_open(2) on the PID from SO_PEERCRED (Linux 5.3+).
	// The PID could in theory have been reused between connect and accept.
	MethodPIDFD Method = "pidfd_open"
	// MethodStartTime: only the start time from /proc/<pid>/stat. A reuse is
	// detected as long as the new process started in a later clock tick.
	MethodStartTime Method = "start_time"
)

// procRoot is where procfs is mounted.
const procRoot = "/proc"

// Pin holds on to one process: Alive reports whether the PID it was made for
// still names that same, running process. A Pin is safe for concurrent use;
// Alive after Close returns an error wrapping ErrNotPinned.
type Pin struct {
	pid    int32
	method Method
	start  uint64 // field 22 of /proc/<pid>/stat: clock ticks after boot
	image  image  // the program it ran when pinned
	err    error  // pinning failed; Alive returns it

	mu     sync.RWMutex
	fd     int // pidfd; -1 for MethodStartTime, after Close, or if pinning failed
	closed bool
}

// NewPin pins the running process pid with pidfd_open(2), or by its start
// time alone where pidfd_open is unavailable (ENOSYS, EPERM by a seccomp
// filter). It fails with an error wrapping ErrProcessGone if pid does not name
// a running process. The caller must Close the Pin.
func NewPin(pid int32) (*Pin, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("%w: pid %d", ErrNotPinned, pid)
	}
	fd, err := unix.PidfdOpen(int(pid), 0)
	switch {
	case err == nil:
		return pinFD(pid, fd, MethodPIDFD)
	case errors.Is(err, unix.ESRCH):
		return nil, fmt.Errorf("%w: pid %d not running", ErrProcessGone, pid)
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
		return pinFD(pid, -1, MethodStartTime)
	default:
		return nil, fmt.Errorf("peercred: pidfd_open %d: %w", pid, err)
	}
}

// pinConn pins the process at the other end of uc, whose SO_PEERCRED PID is
// pid: by SO_PEERPIDFD if the kernel has it, else as NewPin does. It never
// returns nil: a failure is kept in the Pin, and Alive returns it.
func pinConn(uc *net.UnixConn, pid int32) *Pin {
	if pid <= 0 {
		return failedPin(pid, fmt.Errorf("%w: peer not visible in this pid namespace", ErrNotPinned))
	}
	fd, err := peerPIDFD(uc)
	switch {
	case err == nil:
		p, err := pinFD(pid, fd, MethodPeerPIDFD)
		if err != nil {
			return failedPin(pid, err)
		}
		return p
	case errors.Is(err, unix.ESRCH):
		// The connecting process is already gone (older kernels hand out
		// no pidfd for a reaped process). Do not fall back to pidfd_open:
		// its PID may already name another process.
		return failedPin(pid, fmt.Errorf("%w: pid %d exited before the connection was accepted", ErrProcessGone, pid))
	}
	p, err := NewPin(pid)
	if err != nil {
		return failedPin(pid, err)
	}
	return p
}

func failedPin(pid int32, err error) *Pin {
	if !errors.Is(err, ErrProcessGone) && !errors.Is(err, ErrNotPinned) {
		err = fmt.Errorf("%w: %w", ErrNotPinned, err)
	}
	return &Pin{pid: pid, fd: -1, err: err}
}

// pinFD completes a pin on fd (a pidfd for pid, or -1): it records the start
// time and then makes sure the pidfd's process is still alive, so that the
// start time read is that process's own. It closes fd on failure.
func pinFD(pid int32, fd int, method Method) (*Pin, error) {
	if fd >= 0 {
		unix.CloseOnExec(fd)
	}
	st, err := readStat(procRoot, pid)
	if err == nil && st.exited() {
		err = fmt.Errorf("%w: pid %d exited", ErrProcessGone, pid)
	}
	img := readImage(procRoot, pid)
	if err == nil && fd >= 0 {
		err = signalZero(fd, pid)
	}
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, err
	}
	return &Pin{pid: pid, method: method, start: st.start, image: img, fd: fd}, nil
}

// PID is the pinned process's PID.
func (p *Pin) PID() int32 { return p.pid }

// Method is how the process is pinned; "" if pinning failed.
func (p *Pin) Method() Method { return p.method }

// Exe is the path of the executable the process ran when it was pinned, as
// the kernel shows it in /proc/<pid>/exe (ending in " (deleted)" if the file
// had been removed); "" if it could not be read (a zombie, or no permission
// to read another user's link). A nil Alive means the process still runs
// that same file under that same path.
func (p *Pin) Exe() string { return p.image.path }

// Alive returns nil if the pinned process is still running under its PID
// and still runs the program it ran when pinned: the pidfd (if any) still
// refers to a live process, /proc/<pid>/stat still shows the start time
// recorded when pinning, in a state other than zombie or dead, and
// /proc/<pid>/exe still names the same file (device and inode) under the
// same path. Otherwise it returns an error wrapping ErrProcessGone,
// ErrExecuted if the process has called execve(2) with another program, or
// ErrNotPinned if pinning had failed or the Pin was closed; or another error
// if /proc could not be read. Anything learnt about the PID between pinning
// and a nil Alive is about the pinned process and program.
func (p *Pin) Alive() error {
	if p.err != nil {
		return p.err
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return fmt.Errorf("%w: pin of pid %d closed", ErrNotPinned, p.pid)
	}
	if err := p.running(); err != nil {
		return err
	}
	if now := readImage(procRoot, p.pid); now != p.image {
		return fmt.Errorf("%w: pid %d ran %s when it connected, now %s", ErrExecuted, p.pid, p.image, now)
	}
	return nil
}

// running checks that the pinned process has not exited and that its PID
// still names it.
func (p *Pin) running() error {
	if p.fd >= 0 {
		// A pidfd names exactly the pinned process, whatever now has its
		// PID, and polls readable once that process exits (zombie or
		// reaped): one syscall answers it, so the /proc read below is only
		// for pins without a pidfd.
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		for errors.Is(err, unix.EINTR) {
			n, err = unix.Poll(fds, 0)
		}
		switch {
		case err != nil:
			return fmt.Errorf("%w: poll pidfd of pid %d: %w", ErrNotPinned, p.pid, err)
		case n > 0:
			return fmt.Errorf("%w: pid %d exited", ErrProcessGone, p.pid)
		}
		return nil
	}
	st, err := readStat(procRoot, p.pid)
	if err != nil {
		return err
	}
	if st.start != p.start {
		return fmt.Errorf("%w: pid %d now names another process", ErrProcessGone, p.pid)
	}
	if st.exited() {
		return fmt.Errorf("%w: pid %d exited", ErrProcessGone, p.pid)
	}
	return nil
}

// Close releases the pidfd. It is idempotent and safe concurrently with Alive.
func (p *Pin) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.fd < 0 {
		return nil
	}
	err := unix.Close(p.fd)
	p.fd = -1
	if err != nil {
		return fmt.Errorf("peercred: close pidfd: %w", err)
	}
	return nil
}

func (p *Pin) String() string {
	if p.err != nil {
		return fmt.Sprintf("pid %d (not pinned: %v)", p.pid, p.err)
	}
	return fmt.Sprintf("pid %d (%s, start %d)", p.pid, p.method, p.start)
}

// signalZero checks that the pidfd's process has not exited. EPERM means it
// exists but we may not signal it.
func signalZero(fd int, pid int32) error {
	err := unix.PidfdSendSignal(fd, 0, nil, 0)
	switch {
	case err == nil, errors.Is(err, unix.EPERM):
		return nil
	case errors.Is(err, unix.ESRCH):
		return fmt.Errorf("%w: pid %d exited", ErrProcessGone, pid)
	default:
		return fmt.Errorf("peercred: pidfd_send_signal %d: %w", pid, err)
	}
}

// image identifies the program a process runs, by /proc/<pid>/exe: the
// path the kernel shows and the device and inode of the file it names.
// execve(2) changes it; neither the PID nor the start time does. When the
// link cannot be read, unread holds why (ENOENT for a zombie or kernel
// thread, EACCES without ptrace access to another user's process), so that
// an unreadable link becoming readable counts as a change as well.
type image struct {
	path     string
	dev, ino uint64
	unread   string
}

func (i image) String() string {
	if i.unread != "" {
		return "(executable unreadable: " + i.unread + ")"
	}
	return strconv.Quote(i.path)
}

// readImage reads the image of pid under root. The path and the file are
// read separately; an execve(2) between the two reads shows as a change at
// the next read, which is all Alive needs.
func readImage(root string, pid int32) image {
	link := root + "/" + strconv.Itoa(int(pid)) + "/exe"
	path, err := os.Readlink(link)
	if err != nil {
		return image{unread: errText(err)}
	}
	var st unix.Stat_t
	if err := unix.Stat(link, &st); err != nil {
		return image{unread: errText(err)}
	}
	return image{path: path, dev: st.Dev, ino: st.Ino}
}

// errText is the errno of err, or its text.
func errText(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

type stat struct {
	state byte   // field 3
	start uint64 // field 22
}

// exited: zombie (exited, not yet reaped) or dead.
func (s stat) exited() bool { return s.state == 'Z' || s.state == 'X' || s.state == 'x' }

// readStat reads the state and start time of pid from <root>/<pid>/stat. A
// missing process is an error wrapping ErrProcessGone.
func readStat(root string, pid int32) (stat, error) {
	b, err := os.ReadFile(root + "/" + strconv.Itoa(int(pid)) + "/stat")
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return stat{}, fmt.Errorf("%w: pid %d not running", ErrProcessGone, pid)
	}
	if err != nil {
		return stat{}, fmt.Errorf("peercred: %w", err)
	}
	return parseStat(b)
}

// parseStat parses proc_pid_stat(5). The command name (field 2) is in
// parentheses and may itself contain spaces and parentheses: fields are
// counted after the last ')'.
func parseStat(b []byte) (stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return stat{}, errors.New("peercred: malformed stat: no command name")
	}
	fields := bytes.Fields(b[i+1:]) // fields[0] is field 3
	const stateField, startField = 3, 22
	if len(fields) < startField-2 || len(fields[0]) != 1 {
		return stat{}, errors.New("peercred: malformed stat: too few fields")
	}
	start, err := strconv.ParseUint(string(fields[startField-3]), 10, 64)
	if err != nil {
		return stat{}, fmt.Errorf("peercred: malformed stat: start time: %w", err)
	}
	return stat{state: fields[stateField-3][0], start: start}, nil
}
