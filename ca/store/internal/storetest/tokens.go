package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/tallyid/tally/ca/store"
)

var now = created.Add(time.Hour)

func testJoinTokens(t *testing.T, open Open) {
	const secret = "s3cret-join-token"
	live := store.JoinToken{Token: secret, ExpiresAt: now.Add(time.Minute), Alias: "spiffe://example.org/node/a"}

	tests := []struct {
		name    string
		create  []store.JoinToken
		consume []string // in order; all but the last must succeed
		at      time.Time
		want    store.JoinToken
		wantErr error
	}{
		{name: "consume", create: []store.JoinToken{live}, consume: []string{secret}, at: now, want: live},
		{name: "consume twice", create: []store.JoinToken{live}, consume: []string{secret, secret}, at: now, wantErr: store.ErrNotFound},
		{name: "absent", consume: []string{secret}, at: now, wantErr: store.ErrNotFound},
		{name: "expired", create: []store.JoinToken{live}, consume: []string{secret}, at: now.Add(time.Hour), wantErr: store.ErrExpired},
		{name: "at ExpiresAt", create: []store.JoinToken{live}, consume: []string{secret}, at: live.ExpiresAt, wantErr: store.ErrExpired},
		{name: "create twice", create: []store.JoinToken{live, live}, wantErr: store.ErrAlreadyExists},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := open(t)
			var err error
			for _, tok := range tc.create {
				err = s.CreateJoinToken(ctx, tok)
			}
			if len(tc.consume) == 0 {
				require.ErrorIs(t, err, tc.wantErr)
				require.NotContains(t, err.Error(), secret, "an error shows the token")
				return
			}
			require.NoError(t, err)

			var got store.JoinToken
			for i, tok := range tc.consume {
				got, err = s.ConsumeJoinToken(ctx, tok, tc.at)
				if i < len(tc.consume)-1 {
					require.NoError(t, err)
				}
			}
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.NotContains(t, err.Error(), secret, "an error shows the token")
			} else {
				require.NoError(t, err)
				require.Equal(t, tc.want.Token, got.Token)
				require.Equal(t, tc.want.Alias, got.Alias)
				require.True(t, tc.want.ExpiresAt.Equal(got.ExpiresAt))
			}
			// Consumed or expired, the token is gone.
			_, err = s.ConsumeJoinToken(ctx, secret, now)
			require.ErrorIs(t, err, store.ErrNotFound)
		})
	}
}

// testConsumeJoinTokenRace has 20 callers consume one token at once.
func testConsumeJoinTokenRace(t *testing.T, open Open) {
	const callers = 20
	for round := range 5 {
		s := open(t)
		require.NoError(t, s.CreateJoinToken(t.Context(), store.JoinToken{Token: "race", ExpiresAt: now.Add(time.Hour)}))
		start := make(chan struct{})
		errs := make([]error, callers)
		var g errgroup.Group
		for i := range callers {
			g.Go(func() error {
				<-start
				_, errs[i] = s.ConsumeJoinToken(t.Context(), "race", now)
				return nil
			})
		}
		close(start)
		require.NoError(t, g.Wait())

		winners := 0
		for _, err := range errs {
			switch {
			case err == nil:
				winners++
			case !errors.Is(err, store.ErrNotFound):
				require.NoError(t, err, "round %d", round)
			}
		}
		require.Equal(t, 1, winners, "round %d", round)
	}
}

func testPruneJoinTokens(t *testing.T, open Open) {
	ctx := t.Context()
	s := open(t)
	tokens := []store.JoinToken{
		{Token: "old", ExpiresAt: now.Add(-time.Hour)},
		{Token: "just", ExpiresAt: now},
		{Token: "live", ExpiresAt: now.Add(time.Second)},
	}
	for _, tok := range tokens {
		require.NoError(t, s.CreateJoinToken(ctx, tok))
	}

	n, err := s.PruneJoinTokens(ctx, now)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	n, err = s.PruneJoinTokens(ctx, now)
	require.NoError(t, err)
	require.Zero(t, n)

	for _, tok := range []string{"old", "just"} {
		_, err := s.ConsumeJoinToken(ctx, tok, now.Add(-2*time.Hour))
		require.ErrorIs(t, err, store.ErrNotFound, tok)
	}
	got, err := s.ConsumeJoinToken(ctx, "live", now)
	require.NoError(t, err)
	require.Equal(t, "live", got.Token)
}
