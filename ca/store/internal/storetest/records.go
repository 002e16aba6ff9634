package storetest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/store"
)

func testJournalAndBundle(t *testing.T, open Open) {
	type record struct {
		load func(context.Context) ([]byte, error)
		save func(context.Context, []byte) error
	}
	tests := []struct {
		name         string
		record       func(store.Store) record
		other        func(store.Store) record
		first, later []byte
	}{
		{
			name:   "journal",
			record: func(s store.Store) record { return record{s.LoadJournal, s.SaveJournal} },
			other:  func(s store.Store) record { return record{s.LoadBundle, s.SaveBundle} },
			first:  []byte{0x0a, 0x00, 0xff, 0x01},
			later:  []byte("journal v2"),
		},
		{
			name:   "bundle",
			record: func(s store.Store) record { return record{s.LoadBundle, s.SaveBundle} },
			other:  func(s store.Store) record { return record{s.LoadJournal, s.SaveJournal} },
			first:  []byte(`{"keys":[]}`),
			later:  []byte(`{"keys":[{"kty":"EC"}],"spiffe_sequence":2}`),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := open(t)
			r, other := tc.record(s), tc.other(s)

			_, err := r.load(ctx)
			require.ErrorIs(t, err, store.ErrNotFound, "on a new store")

			for _, v := range [][]byte{tc.first, tc.later} {
				require.NoError(t, r.save(ctx, v))
				got, err := r.load(ctx)
				require.NoError(t, err)
				require.Equal(t, v, got)
			}
			_, err = other.load(ctx)
			require.ErrorIs(t, err, store.ErrNotFound, "the other record")
		})
	}
}
