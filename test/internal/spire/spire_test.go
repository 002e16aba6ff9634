package spire

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
)

// TestDeploymentServesX509SVID proves the harness: a real SPIRE server and
// agent, one entry for this process's uid, and an X509-SVID fetched with
// go-spiffe from the agent's Workload API socket.
func TestDeploymentServesX509SVID(t *testing.T) {
	d := Start(t, Options{})
	require.NotZero(t, d.RSS(t, d.ServerPID()))
	require.NotZero(t, d.RSS(t, d.AgentPID()))

	const id = "spiffe://example.org/test/workload"
	d.CreateEntries(t, []Entry{{SPIFFEID: id, Selectors: []string{fmt.Sprintf("unix:uid:%d", os.Getuid())}}})

	// The agent serves the entry after its next sync; until then the
	// Workload API answers PermissionDenied ("no identity issued").
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var svid *x509svid.SVID
	for {
		var err error
		svid, err = workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+d.AgentSocket()))
		if err == nil {
			break
		}
		if ctx.Err() != nil || !strings.Contains(err.Error(), "PermissionDenied") {
			t.Fatalf("fetch X509-SVID: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.Equal(t, id, svid.ID.String())
	require.Len(t, svid.Certificates, 1)
	ttl := time.Until(svid.Certificates[0].NotAfter)
	require.InDelta(t, time.Hour.Seconds(), ttl.Seconds(), 60, "default_x509_svid_ttl is 1h")
}
