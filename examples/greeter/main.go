// Command greeter is a demo workload: two instances talk mutual TLS with
// X509-SVIDs from the Workload API (go-spiffe's spiffetls), with rotation
// handled by the X509Source. `greeter server` answers; `greeter client`
// calls it in a loop and prints each answer and any failed handshake.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: greeter server|client [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:9443", "listen or dial address")
	peer := fs.String("peer-id", "", "SPIFFE ID the peer must present")
	every := fs.Duration("every", time.Second, "client: time between calls")
	count := fs.Int("count", 0, "client: stop after this many calls (0: run until stopped)")
	_ = fs.Parse(os.Args[2:])
	peerID, err := spiffeid.FromString(*peer)
	if err != nil {
		log.Fatalf("--peer-id: %v", err)
	}
	// The Workload API address comes from SPIFFE_ENDPOINT_SOCKET.
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		log.Fatalf("x509 source: %v", err)
	}
	defer source.Close()
	switch os.Args[1] {
	case "server":
		err = serve(ctx, source, *addr, peerID)
	case "client":
		err = call(ctx, source, *addr, peerID, *every, *count)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}

func serve(ctx context.Context, source *workloadapi.X509Source, addr string, peer spiffeid.ID) error {
	lis, err := spiffetls.ListenWithMode(ctx, "tcp", addr, spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(peer), source))
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); lis.Close() }()
	svid, _ := source.GetX509SVID()
	fmt.Printf("greeter server %s listening on %s\n", svid.ID, lis.Addr())
	for {
		conn, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		go func(c net.Conn) {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			svid, _ := source.GetX509SVID()
			fmt.Fprintf(c, "hello %s, this is %s (serial %s)\n", line[:len(line)-1], svid.ID, svid.Certificates[0].SerialNumber.Text(16))
		}(conn)
	}
}

func call(ctx context.Context, source *workloadapi.X509Source, addr string, peer spiffeid.ID, every time.Duration, count int) error {
	failures := 0
	for i := 1; count == 0 || i <= count; i++ {
		conn, err := spiffetls.DialWithMode(ctx, "tcp", addr, spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(peer), source))
		if err == nil {
			svid, _ := source.GetX509SVID()
			fmt.Fprintf(conn, "%s\n", svid.ID)
			var answer string
			answer, err = bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if err == nil {
				fmt.Printf("ok %d: %s", i, answer)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			fmt.Printf("FAILED %d: %v\n", i, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
	if failures > 0 {
		return fmt.Errorf("%d failed calls", failures)
	}
	return nil
}
