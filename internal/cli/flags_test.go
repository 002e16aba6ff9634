package cli

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in      string
		want    *tallyv1.Selector
		wantErr string
	}{
		{in: "unix:uid:0", want: &tallyv1.Selector{Type: "unix", Value: "uid:0"}},
		{in: "k8s:ns:default", want: &tallyv1.Selector{Type: "k8s", Value: "ns:default"}},
		{in: "docker:label:a:b,c", want: &tallyv1.Selector{Type: "docker", Value: "label:a:b,c"}},
		{in: "join_token:abc", want: &tallyv1.Selector{Type: "join_token", Value: "abc"}},
		{in: "unix", wantErr: `selector "unix": want type:value`},
		{in: "", wantErr: `selector "": want type:value`},
		{in: ":uid:0", wantErr: `selector ":uid:0": type is empty`},
		{in: ":", wantErr: `selector ":": type is empty`},
		{in: "unix:", wantErr: `selector "unix:": value is empty`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSelector(tt.in)
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			requireProto(t, tt.want, got)
		})
	}
}

func TestTTLSeconds(t *testing.T) {
	tests := []struct {
		d       time.Duration
		want    int64
		wantErr string
	}{
		{d: 0, want: 0},
		{d: time.Hour, want: 3600},
		{d: 90 * time.Second, want: 90},
		{d: 36 * time.Hour, want: 129600},
		{d: -time.Second, wantErr: "--ttl -1s: must not be negative"},
		{d: 1500 * time.Millisecond, wantErr: "--ttl 1.5s: must be a whole number of seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.d.String(), func(t *testing.T) {
			got, err := ttlSeconds("ttl", tt.d)
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestCheckID(t *testing.T) {
	require.NoError(t, checkID("spiffe-id", "spiffe://example.org/web"))
	err := checkID("parent-id", "example.org/web")
	require.ErrorContains(t, err, `--parent-id "example.org/web": `)
}
