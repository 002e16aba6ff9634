package jointoken_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/attest/jointoken"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// storeTokens consumes tokens from a real badger store, keyed by token ID
// as the server stores them.
type storeTokens struct{ st *badgerstore.Store }

func (s storeTokens) ConsumeJoinToken(ctx context.Context, token string) (string, error) {
	t, err := s.st.ConsumeJoinToken(ctx, jointoken.TokenID(token), time.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return "", jointoken.ErrUnknown
	case errors.Is(err, store.ErrExpired):
		return "", jointoken.ErrExpired
	}
	return t.Alias, err
}

func TestAttest(t *testing.T) {
	st, err := badgerstore.Open(badgerstore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	a := jointoken.New(td, storeTokens{st})

	put := func(token, alias string) {
		t.Helper()
		require.NoError(t, st.CreateJoinToken(ctx, store.JoinToken{
			Token: jointoken.TokenID(token), ExpiresAt: time.Now().Add(time.Hour), Alias: alias,
		}))
	}

	put("plain", "")
	res, err := a.Attest(ctx, []byte("plain"))
	require.NoError(t, err)
	require.Equal(t, jointoken.AgentID(td, "plain"), res.AgentID)
	require.Empty(t, res.Aliases)
	_, err = a.Attest(ctx, []byte("plain"))
	require.ErrorIs(t, err, attest.ErrDenied, "single use")
	require.ErrorIs(t, err, jointoken.ErrUnknown)

	put("aliased", "spiffe://example.org/nodes/a")
	res, err = a.Attest(ctx, []byte("aliased"))
	require.NoError(t, err)
	require.Equal(t, []string{"spiffe://example.org/nodes/a"}, res.Aliases)
}

// A token stored with an alias the Admin API would refuse (written before
// the check, or around it) does not make that text an agent's alias.
func TestAttackStoredControlCharsNotServedJoinTokenAlias(t *testing.T) {
	st, err := badgerstore.Open(badgerstore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	a := jointoken.New(td, storeTokens{st})

	for i, alias := range []string{
		"spiffe://example.org/nodes/a\nspiffe://example.org/admin",
		"spiffe://example.org/nodes/\u202ea",
		"spiffe://example.org/nodes/a\x00",
		"spiffe://example.org/nodes/\ufffd", // what the store's JSON makes of invalid UTF-8
		"spiffe://other.org/nodes/a",
		"not a spiffe id",
	} {
		token := "t" + strconv.Itoa(i)
		require.NoError(t, st.CreateJoinToken(ctx, store.JoinToken{
			Token: jointoken.TokenID(token), ExpiresAt: time.Now().Add(time.Hour), Alias: alias,
		}))
		res, err := a.Attest(ctx, []byte(token))
		require.ErrorIs(t, err, attest.ErrDenied, "%q", alias)
		require.ErrorContains(t, err, "stored alias "+strconv.Quote(alias))
		require.Empty(t, res.Aliases)
	}
}

// TestClientTokenFile: the agent reads its token from a file at each
// attestation; a missing or empty file is a clear error, not an empty token.
func TestClientTokenFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(file, []byte("  secret-token\n"), 0o600))
	data, err := jointoken.Client{TokenFile: file}.Data(context.Background())
	require.NoError(t, err)
	require.Equal(t, "secret-token", string(data), "surrounding whitespace ignored")

	_, err = jointoken.Client{TokenFile: filepath.Join(dir, "missing")}.Data(context.Background())
	require.ErrorContains(t, err, "join token file")
	require.NoError(t, os.WriteFile(file, []byte("\n"), 0o600))
	_, err = jointoken.Client{TokenFile: file}.Data(context.Background())
	require.ErrorContains(t, err, "is empty")
	_, err = jointoken.Client{}.Data(context.Background())
	require.ErrorContains(t, err, "no join token configured")
}
