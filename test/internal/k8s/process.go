package k8s

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/tallyid/tally/test/internal/repo"
)

// proc is a control-plane process (etcd or kube-apiserver) owned by one Cluster.
type proc struct {
	name    string
	logFile string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited and been reaped
	err     error         // exit status; read only after done is closed
}

// startProc starts bin with args, stdout and stderr appended to logFile. The process gets its
// own process group and SIGKILL when the test process dies, so a crashed test leaves no
// apiserver or etcd behind.
func startProc(name, logFile, bin string, args []string) (*proc, error) {
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("k8s: %s log: %w", name, err)
	}
	defer log.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("k8s: start %s: %w", name, err)
	}
	p := &proc{name: name, logFile: logFile, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace, and waits for the exit.
// Safe to call more than once.
func (p *proc) stop(grace time.Duration) {
	if p == nil || p.exited() {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// logTail returns the last n lines of the process log.
func (p *proc) logTail(n int) string {
	b, err := os.ReadFile(p.logFile)
	if err != nil {
		return err.Error()
	}
	return repo.Tail(string(b), n)
}

// portInUse reports whether the process log says it could not bind its port.
func (p *proc) portInUse() bool {
	b, _ := os.ReadFile(p.logFile)
	return strings.Contains(string(b), "address already in use")
}
