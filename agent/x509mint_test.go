package agent

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// signed has m sign a fresh CSR of e: the chain and the key.
func signed(t *testing.T, m *testMinter, e *entry) ([][]byte, []byte) {
	t.Helper()
	csr, key, err := entryCSR(e)
	require.NoError(t, err)
	res, err := m.NewX509SVIDs(context.Background(), []*tallyv1.X509SVIDRequest{{EntryId: e.ID, Csr: csr}})
	require.NoError(t, err)
	return res[0].GetCertChain(), key
}

func TestNewMintedChecksTheChain(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	m := newTestMinter(t, clk)
	other := newTestMinter(t, clk)
	e := testEntry("a", "spiffe://example.org/a", 1, "uid:1")
	chain, key := signed(t, m, e)
	_, otherKey := signed(t, m, e)
	foreign, foreignKey := signed(t, other, e)
	for _, tc := range []struct {
		name   string
		entry  *entry
		chain  [][]byte
		key    []byte
		bundle *spiffebundle.Bundle
		at     time.Time
		err    string
	}{
		{"valid", e, chain, key, m.bundle(), clk.Now(), ""},
		{"not the key made for it", e, chain, otherKey, m.bundle(), clk.Now(), "does not match"},
		{"another SPIFFE ID", testEntry("a", "spiffe://example.org/b", 1), chain, key, m.bundle(), clk.Now(), "want spiffe://example.org/b"},
		{"signed by a CA not in the bundle", e, foreign, foreignKey, m.bundle(), clk.Now(), "could not verify"},
		{"expired", e, chain, key, m.bundle(), clk.Now().Add(2 * time.Hour), "could not verify"},
		{"empty chain", e, nil, key, m.bundle(), clk.Now(), "empty chain"},
		{"no bundle", e, chain, key, nil, clk.Now(), "no trust bundle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := newMinted(tc.entry, tc.chain, tc.key, tc.bundle, tc.at)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, concatDER(tc.chain), got.svid.CertChain)
			require.Equal(t, e.SPIFFEID, got.svid.ID)
			require.WithinDuration(t, clk.Now().Add(m.ttl), got.svid.ExpiresAt, time.Second)
			half := clk.Now().Add(m.ttl / 2).Truncate(time.Second)
			require.False(t, got.renewAt.After(half.Add(time.Second)), "not after half its lifetime")
			require.False(t, got.renewAt.Before(half.Add(-m.ttl/10-time.Second)), "jitter up to a tenth earlier")
		})
	}
}

func TestConcatDER(t *testing.T) {
	require.Equal(t, []byte("abcde"), concatDER([][]byte{[]byte("ab"), nil, []byte("cde")}))
	require.Empty(t, concatDER(nil))
}

type failingMinter struct {
	*testMinter
	err     error
	results int // answer only this many, if > 0
}

func (f failingMinter) NewX509SVIDs(ctx context.Context, reqs []*tallyv1.X509SVIDRequest) ([]*tallyv1.X509SVIDResult, error) {
	if f.err != nil {
		return nil, f.err
	}
	out, err := f.testMinter.NewX509SVIDs(ctx, reqs)
	return out[:f.results], err
}

func TestX509MinterResultPerEntry(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	m := newTestMinter(t, clk)
	m.refuse.Store("bad", true)
	batch := []*entry{
		testEntry("good", "spiffe://example.org/good", 1),
		testEntry("bad", "spiffe://example.org/bad", 1),
		testEntry("other-td", "spiffe://other.org/x", 1),
	}
	log := slog.New(slog.DiscardHandler)
	x := &x509Minter{minter: m, bundle: m.bundle, clock: clk, log: log}
	out, errs := x.mint(context.Background(), batch)
	require.Len(t, out, 3)
	require.Len(t, errs, 3)
	require.NotNil(t, out[0])
	require.NoError(t, errs[0])
	require.Equal(t, hex.EncodeToString(m.ca.SubjectKeyId), out[0].signer, "the CA certificate's subject key ID, as the server's slot ID")
	require.Equal(t, out[0].serial, certs(t, out[0].svid.CertChain)[0].SerialNumber.Text(16))
	require.Nil(t, out[1], "refused by the server")
	require.ErrorContains(t, errs[1], "refused")
	require.Nil(t, out[2], "does not chain to the bundle of its trust domain")
	require.Error(t, errs[2])

	for _, f := range []failingMinter{{testMinter: m, err: errors.New("down")}, {testMinter: m, results: 1}} {
		x := &x509Minter{minter: f, bundle: m.bundle, clock: clk, log: log}
		out, errs := x.mint(context.Background(), batch)
		require.Equal(t, make([]*minted, 3), out)
		for _, err := range errs {
			require.Error(t, err, "every entry of a failed call has the call's error")
		}
	}
}

func certs(t *testing.T, der []byte) []*x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificates(der)
	require.NoError(t, err)
	return c
}
