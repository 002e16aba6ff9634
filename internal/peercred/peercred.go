// Package peercred identifies the process at the other end of a Unix socket
// by the kernel's peer credentials (SO_PEERCRED), as gRPC transport
// credentials: handlers read them with FromContext.
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
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

func (a AuthInfo) String() string { return fmt.Sprintf("pid:%d uid:%d gid:%d", a.PID, a.UID, a.GID) }

// ErrNoCredentials: the connection is not a Unix socket or carried none.
var ErrNoCredentials = errors.New("peercred: no peer credentials")

// Credentials returns server transport credentials that read SO_PEERCRED.
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

// Read returns the peer credentials of a Unix socket connection.
func Read(conn net.Conn) (AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return AuthInfo{}, fmt.Errorf("%w: %T is not a unix socket", ErrNoCredentials, conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return AuthInfo{}, fmt.Errorf("peercred: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return AuthInfo{}, fmt.Errorf("peercred: %w", err)
	}
	if serr != nil {
		return AuthInfo{}, fmt.Errorf("peercred: SO_PEERCRED: %w", serr)
	}
	return AuthInfo{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

type creds struct{}

func (creds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, AuthInfo{}, errors.New("peercred: server-side credentials only")
}

func (creds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info, err := Read(conn)
	if err != nil {
		return nil, nil, err
	}
	return conn, info, nil
}

func (creds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c creds) Clone() credentials.TransportCredentials { return c }

func (creds) OverrideServerName(string) error { return nil }
