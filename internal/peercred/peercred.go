// Package peercred identifies the process at the other end of a Unix socket
// by the kernel's peer credentials (SO_PEERCRED), as gRPC transport
// credentials: handlers read them with FromContext.
//
// The credentials also pin the peer's process (see Pin): a PID read at accept
// time may name another process by the time a handler looks it up in /proc,
// if the peer exited (or handed its connection to another process and exited)
// and the PID was reused. A handler that attests the PID checks Pin.Alive
// after attesting.
package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// AuthInfo is the peer's process, user and group at connect time.
type AuthInfo struct {
	PID int32
	UID uint32
	GID uint32
	// Pin holds on to the peer's process for as long as the connection is
	// open (the pin is closed with it). Set by the server handshake, never
	// nil there; if pinning failed, Pin.Alive returns why. Nil from Read.
	Pin *Pin
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

func (a AuthInfo) String() string { return fmt.Sprintf("pid:%d uid:%d gid:%d", a.PID, a.UID, a.GID) }

// ErrNoCredentials: the connection is not a Unix socket or carried none.
var ErrNoCredentials = errors.New("peercred: no peer credentials")

// Credentials returns server transport credentials that read SO_PEERCRED and
// pin the peer's process. The handshake fails only if the connection is not a
// Unix socket or has no peer credentials; a failure to pin is reported by
// AuthInfo.Pin.Alive instead, so that users of the credentials that do not
// need a pin (the admin socket) are not affected by it.
func Credentials() credentials.TransportCredentials { return creds{} }

// FromContext returns the caller's credentials in a gRPC handler.
func FromContext(ctx context.Context) (AuthInfo, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return AuthInfo{}, ErrNoCredentials
	}
	a, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return AuthInfo{}, ErrNoCredentials
	}
	return a, nil
}

// Read returns the peer credentials of a Unix socket connection, without a
// Pin.
func Read(conn net.Conn) (AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return AuthInfo{}, fmt.Errorf("%w: %T is not a unix socket", ErrNoCredentials, conn)
	}
	var cred *unix.Ucred
	err := control(uc, func(fd int) (err error) {
		cred, err = unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
		return err
	})
	if err != nil {
		return AuthInfo{}, fmt.Errorf("peercred: SO_PEERCRED: %w", err)
	}
	return AuthInfo{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

// peerPIDFD returns a new pidfd for the process that connected uc
// (SO_PEERPIDFD); ENOPROTOOPT before Linux 6.5.
func peerPIDFD(uc *net.UnixConn) (int, error) {
	var pidfd int
	err := control(uc, func(fd int) (err error) {
		pidfd, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		return err
	})
	return pidfd, err
}

func control(uc *net.UnixConn, f func(fd int) error) error {
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

type creds struct{}

func (creds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, AuthInfo{}, errors.New("peercred: server-side credentials only")
}

// ServerHandshake reads the peer credentials and pins the peer's process.
// The returned connection closes the pin when it is closed.
func (creds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info, err := Read(conn)
	if err != nil {
		return nil, nil, err
	}
	info.Pin = pinConn(conn.(*net.UnixConn), info.PID)
	return &pinnedConn{Conn: conn, pin: info.Pin}, info, nil
}

func (creds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c creds) Clone() credentials.TransportCredentials { return c }

func (creds) OverrideServerName(string) error { return nil }

// pinnedConn closes its pin when it is closed.
type pinnedConn struct {
	net.Conn
	pin *Pin
}

func (c *pinnedConn) Close() error {
	err := c.Conn.Close()
	c.pin.Close()
	return err
}
