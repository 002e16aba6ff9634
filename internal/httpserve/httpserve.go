// Package httpserve runs an http.Server for as long as a context lives.
package httpserve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// ShutdownGrace is how long requests in flight may take to finish once the
// context is done.
const ShutdownGrace = 5 * time.Second

// Serve serves srv on lis (over TLS with srv.TLSConfig if tlsOn) until ctx
// is done, then shuts it down: requests in flight get ShutdownGrace to
// finish, after which their connections are closed. It returns only once
// the server has stopped, so that whatever the handlers use may be closed
// after it; nil after a shutdown for ctx, otherwise the error that stopped
// serving.
func Serve(ctx context.Context, srv *http.Server, lis net.Listener, tlsOn bool) error {
	served := make(chan error, 1)
	go func() {
		if tlsOn {
			served <- srv.ServeTLS(lis, "", "")
		} else {
			served <- srv.Serve(lis)
		}
	}()
	select {
	case err := <-served:
		return fmt.Errorf("httpserve: %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("httpserve: %s: %w", lis.Addr(), err)
	}
	return nil
}
