package cli

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func TestParseEntryData(t *testing.T) {
	tests := []struct {
		name string
		data string
		want []*tallyv1.Entry
	}{
		{
			name: "durations",
			data: `{"entries": [{
				"spiffe_id": "spiffe://example.org/web",
				"parent_id": "spiffe://example.org/agent",
				"selectors": [{"type": "unix", "value": "uid:0"}, {"type": "unix", "value": "gid:0"}],
				"x509_ttl": "1h", "jwt_ttl": "5m",
				"dns_names": ["web.example.org"], "hint": "web", "admin": true
			}]}`,
			want: []*tallyv1.Entry{{
				SpiffeId:       "spiffe://example.org/web",
				ParentId:       "spiffe://example.org/agent",
				Selectors:      []*tallyv1.Selector{{Type: "unix", Value: "uid:0"}, {Type: "unix", Value: "gid:0"}},
				X509TtlSeconds: 3600,
				JwtTtlSeconds:  300,
				DnsNames:       []string{"web.example.org"},
				Hint:           "web",
				Admin:          true,
			}},
		},
		{
			name: "our seconds",
			data: `{"entries": [{"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/p",
				"selectors": [{"type": "unix", "value": "uid:1"}], "x509_ttl_seconds": 60, "jwt_ttl_seconds": 30}]}`,
			want: []*tallyv1.Entry{{
				SpiffeId: "spiffe://example.org/a", ParentId: "spiffe://example.org/p",
				Selectors:      []*tallyv1.Selector{{Type: "unix", Value: "uid:1"}},
				X509TtlSeconds: 60, JwtTtlSeconds: 30,
			}},
		},
		{
			name: "SPIRE names, several entries",
			data: `{"entries": [
				{"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/p",
				 "selectors": [{"type": "unix", "value": "uid:1"}], "x509_svid_ttl": 200, "jwt_svid_ttl": 30},
				{"spiffe_id": "spiffe://example.org/b", "parent_id": "spiffe://example.org/p",
				 "selectors": [{"type": "k8s", "value": "ns:default"}]}
			]}`,
			want: []*tallyv1.Entry{
				{
					SpiffeId: "spiffe://example.org/a", ParentId: "spiffe://example.org/p",
					Selectors:      []*tallyv1.Selector{{Type: "unix", Value: "uid:1"}},
					X509TtlSeconds: 200, JwtTtlSeconds: 30,
				},
				{
					SpiffeId: "spiffe://example.org/b", ParentId: "spiffe://example.org/p",
					Selectors: []*tallyv1.Selector{{Type: "k8s", Value: "ns:default"}},
				},
			},
		},
		{
			name: "list output fields",
			data: `{"entries": [{"id": "e1", "spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/p",
				"selectors": [], "x509_ttl_seconds": 0, "jwt_ttl_seconds": 0, "dns_names": [], "hint": "",
				"admin": false, "revision": 4, "created_at": "2023-11-14T22:13:20Z"}]}`,
			want: []*tallyv1.Entry{{SpiffeId: "spiffe://example.org/a", ParentId: "spiffe://example.org/p", DnsNames: []string{}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseEntryData([]byte(tt.data))
			require.NoError(t, err)
			require.Len(t, got, len(tt.want))
			for i := range tt.want {
				requireProto(t, tt.want[i], got[i])
			}
		})
	}
}

func TestParseEntryDataErrors(t *testing.T) {
	const ids = `"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/p"`
	tests := []struct {
		name    string
		data    string
		wantErr string
	}{
		{name: "unknown top-level field", data: `{"entry": []}`, wantErr: `json: unknown field "entry"`},
		{name: "unknown entry field", data: `{"entries": [{` + ids + `}, {` + ids + `, "x509_ttl_sec": 5}]}`,
			wantErr: `entries[1]: json: unknown field "x509_ttl_sec"`},
		{name: "unknown selector field", data: `{"entries": [{` + ids + `, "selectors": [{"type": "unix", "value": "uid:0", "negate": true}]}]}`,
			wantErr: `entries[0]: json: unknown field "negate"`},
		{name: "selector without type", data: `{"entries": [{` + ids + `, "selectors": [{"type": "unix", "value": "uid:0"}, {"value": "uid:0"}]}]}`,
			wantErr: `entries[0]: selectors[1]: type is empty`},
		{name: "selector without value", data: `{"entries": [{` + ids + `, "selectors": [{"type": "unix", "value": ""}]}]}`,
			wantErr: `entries[0]: selectors[0]: value is empty`},
		{name: "selector as string", data: `{"entries": [{` + ids + `, "selectors": ["unix:uid:0"]}]}`,
			wantErr: `entries[0]: json: cannot unmarshal string`},
		{name: "two x509 TTLs", data: `{"entries": [{` + ids + `, "x509_ttl": "1h", "x509_svid_ttl": 3600}]}`,
			wantErr: `entries[0]: give only one of x509_ttl, x509_svid_ttl`},
		{name: "three jwt TTLs", data: `{"entries": [{` + ids + `, "jwt_ttl": "1m", "jwt_ttl_seconds": 60, "jwt_svid_ttl": 60}]}`,
			wantErr: `entries[0]: give only one of jwt_ttl, jwt_ttl_seconds, jwt_svid_ttl`},
		{name: "bad duration", data: `{"entries": [{` + ids + `, "x509_ttl": "1x"}]}`,
			wantErr: `entries[0]: x509_ttl: time: unknown unit "x" in duration "1x"`},
		{name: "fractional duration", data: `{"entries": [{` + ids + `, "jwt_ttl": "1.5s"}]}`,
			wantErr: `entries[0]: jwt_ttl "1.5s": want a non-negative whole number of seconds`},
		{name: "negative seconds", data: `{"entries": [{` + ids + `, "x509_svid_ttl": -1}]}`,
			wantErr: `entries[0]: x509_svid_ttl -1: must not be negative`},
		{name: "duration as number", data: `{"entries": [{` + ids + `, "x509_ttl": 3600}]}`,
			wantErr: `entries[0]: json: cannot unmarshal number`},
		{name: "no spiffe_id", data: `{"entries": [{"parent_id": "spiffe://example.org/p"}]}`,
			wantErr: `entries[0]: spiffe_id is missing`},
		{name: "no parent_id", data: `{"entries": [{"spiffe_id": "spiffe://example.org/a"}]}`,
			wantErr: `entries[0]: parent_id is missing`},
		{name: "no entries", data: `{"entries": []}`, wantErr: `no entries`},
		{name: "empty object", data: `{}`, wantErr: `no entries`},
		{name: "syntax error", data: `{"entries": [}`, wantErr: `at byte 14: invalid character`},
		{name: "trailing data", data: `{"entries": [{` + ids + `}]} {}`, wantErr: `unexpected data after the JSON value`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseEntryData([]byte(tt.data))
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

// TestEntryDataAcceptsListOutput checks that `entry list -o json` output can
// be given back to `entry create --data`.
func TestEntryDataAcceptsListOutput(t *testing.T) {
	entries := []*tallyv1.Entry{{
		Id:             "e1",
		SpiffeId:       "spiffe://example.org/web",
		ParentId:       "spiffe://example.org/agent",
		Selectors:      []*tallyv1.Selector{{Type: "unix", Value: "uid:0"}},
		X509TtlSeconds: 3600,
		JwtTtlSeconds:  300,
		DnsNames:       []string{"web.example.org"},
		Hint:           "web",
		Admin:          true,
		Revision:       3,
		CreatedAt:      testNow.Unix(),
	}}
	var buf bytes.Buffer
	require.NoError(t, writeJSON(&buf, entryListJSON(entries)))

	got, err := parseEntryData(buf.Bytes())
	require.NoError(t, err)
	want := proto.Clone(entries[0]).(*tallyv1.Entry)
	want.Id, want.Revision, want.CreatedAt = "", 0, 0
	require.Len(t, got, 1)
	requireProto(t, want, got[0])
}
