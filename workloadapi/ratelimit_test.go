package workloadapi_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"google.golang.org/grpc/codes"

	"github.com/tallyid/tally/workloadapi"
)

// TestRateLimitedIsResourceExhausted: a Source refusing a caller that asks
// too fast reaches the workload as ResourceExhausted with a message that
// says what to do, and not the Source's detail.
func TestRateLimitedIsResourceExhausted(t *testing.T) {
	ca := newTestCA(t)
	src := newTestSource(ca, appEntries(t, ca)...)
	src.subscribeErr = fmt.Errorf("agent: fresh JWT-SVIDs for spiffe://example.org/app beyond 10/s (burst 50): %w", workloadapi.ErrRateLimited)
	e := startServer(t, src)
	err := calls["FetchJWTSVID"](withHeader(testContext(t)), e.dial(t))
	requireCode(t, err, codes.ResourceExhausted, "rate-limited, retry later")
	assert.NotContains(t, err.Error(), "burst 50")
	assert.Contains(t, e.logs.String(), "burst 50", "the cause is logged")
}
