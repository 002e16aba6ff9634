package agent

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func TestJWTBatcherRunsOnItsOwnersContext(t *testing.T) {
	block := make(chan struct{})
	b := newJWTBatcher(func(ctx context.Context, reqs []*tallyv1.NewJWTSVIDRequest) ([]*tallyv1.JWTSVIDResult, error) {
		if reqs[0].GetEntryId() == "slow" {
			close(block)
			<-ctx.Done()
			return nil, ctx.Err()
		}
		out := make([]*tallyv1.JWTSVIDResult, len(reqs))
		for i, r := range reqs {
			out[i] = &tallyv1.JWTSVIDResult{EntryId: r.GetEntryId(), Token: "token-" + r.GetEntryId(), ExpiresAt: 1}
		}
		return out, nil
	})
	type answer struct {
		token string
		err   error
	}
	do := func(id string) chan answer {
		ch := make(chan answer, 1)
		go func() {
			token, _, err := b.Do(context.Background(), id, []string{"aud"})
			ch <- answer{token, err}
		}()
		return ch
	}
	early := do("early") // before Run: waits for it
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { b.Run(ctx); close(ran) }()
	require.Equal(t, answer{token: "token-early"}, <-early)

	slow := do("slow")
	<-block
	cancel() // the owner stops: the call in flight ends with it
	got := <-slow
	require.ErrorIs(t, got.err, context.Canceled)
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	_, _, err := b.Do(context.Background(), "late", nil)
	require.ErrorContains(t, err, "stopped")
}
