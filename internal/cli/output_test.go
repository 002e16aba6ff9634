package cli

import (
	"bytes"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func testEntry() *tallyv1.Entry {
	return &tallyv1.Entry{
		Id:             "e1",
		SpiffeId:       "spiffe://example.org/web",
		ParentId:       "spiffe://example.org/agent",
		Selectors:      []*tallyv1.Selector{{Type: "unix", Value: "uid:0"}, {Type: "unix", Value: "gid:0"}},
		X509TtlSeconds: 3600,
		DnsNames:       []string{"web.example.org", "web"},
		Hint:           "web",
		Revision:       3,
		CreatedAt:      testNow.Unix(),
	}
}

func testAgent() *tallyv1.Agent {
	return &tallyv1.Agent{
		SpiffeId:        "spiffe://example.org/agent/join_token/abc",
		AttestationType: "join_token",
		SerialNumber:    "42",
		ExpiresAt:       testNow.Unix() + 3600,
		Selectors:       []*tallyv1.Selector{{Type: "join_token", Value: "abc"}},
		AttestedAt:      testNow.Unix(),
	}
}

func TestRender(t *testing.T) {
	tests := []struct {
		name  string
		write func(io.Writer) error
		want  string
	}{
		{
			name:  "entry text",
			write: func(w io.Writer) error { return writeEntry(w, testEntry()) },
			want: `Entry ID:       e1
SPIFFE ID:      spiffe://example.org/web
Parent ID:      spiffe://example.org/agent
Selectors:      unix:uid:0
                unix:gid:0
X509-SVID TTL:  1h
JWT-SVID TTL:   default
DNS names:      web.example.org
                web
Hint:           web
Admin:          false
Revision:       3
Created:        2023-11-14T22:13:20Z
`,
		},
		{
			name:  "bare entry text",
			write: func(w io.Writer) error { return writeEntry(w, &tallyv1.Entry{Id: "e2", JwtTtlSeconds: 90}) },
			want: `Entry ID:       e2
SPIFFE ID:      
Parent ID:      
X509-SVID TTL:  default
JWT-SVID TTL:   1m30s
Admin:          false
Revision:       0
`,
		},
		{
			name: "entry json",
			write: func(w io.Writer) error {
				return writeJSON(w, entryListJSON([]*tallyv1.Entry{testEntry(), {Id: "e2"}}))
			},
			want: `{
  "entries": [
    {
      "id": "e1",
      "spiffe_id": "spiffe://example.org/web",
      "parent_id": "spiffe://example.org/agent",
      "selectors": [
        {
          "type": "unix",
          "value": "uid:0"
        },
        {
          "type": "unix",
          "value": "gid:0"
        }
      ],
      "x509_ttl_seconds": 3600,
      "jwt_ttl_seconds": 0,
      "dns_names": [
        "web.example.org",
        "web"
      ],
      "hint": "web",
      "admin": false,
      "revision": 3,
      "created_at": "2023-11-14T22:13:20Z"
    },
    {
      "id": "e2",
      "spiffe_id": "",
      "parent_id": "",
      "selectors": [],
      "x509_ttl_seconds": 0,
      "jwt_ttl_seconds": 0,
      "dns_names": [],
      "hint": "",
      "admin": false,
      "revision": 0,
      "created_at": ""
    }
  ]
}
`,
		},
		{
			name:  "empty entry list json",
			write: func(w io.Writer) error { return writeJSON(w, entryListJSON(nil)) },
			want:  "{\n  \"entries\": []\n}\n",
		},
		{
			name: "token text",
			write: func(w io.Writer) error {
				return writeToken(w, &tallyv1.CreateJoinTokenResponse{Token: "tok", ExpiresAt: testNow.Unix()})
			},
			want: "Token: tok\nExpires: 2023-11-14T22:13:20Z\n",
		},
		{
			name: "token json",
			write: func(w io.Writer) error {
				return writeJSON(w, newTokenJSON(&tallyv1.CreateJoinTokenResponse{Token: "tok", ExpiresAt: testNow.Unix(), SpiffeId: "spiffe://example.org/n"}))
			},
			want: `{
  "token": "tok",
  "expires_at": "2023-11-14T22:13:20Z",
  "spiffe_id": "spiffe://example.org/n"
}
`,
		},
		{
			name:  "agent text",
			write: func(w io.Writer) error { return writeAgent(w, testAgent()) },
			want: `SPIFFE ID:         spiffe://example.org/agent/join_token/abc
Attestation type:  join_token
Serial number:     42
Expires:           2023-11-14T23:13:20Z
Banned:            false
Attested:          2023-11-14T22:13:20Z
Selectors:         join_token:abc
`,
		},
		{
			name: "agent table",
			write: func(w io.Writer) error {
				return writeAgentTable(w, []*tallyv1.Agent{testAgent(), {SpiffeId: "spiffe://example.org/a2", AttestationType: "x509pop", Banned: true}})
			},
			want: `SPIFFE ID                                  ATTESTATION  EXPIRES               BANNED
spiffe://example.org/agent/join_token/abc  join_token   2023-11-14T23:13:20Z  false
spiffe://example.org/a2                    x509pop                            true
`,
		},
		{
			name:  "no agents",
			write: func(w io.Writer) error { return writeAgentTable(w, nil) },
			want:  "No attested agents.\n",
		},
		{
			name: "agent json",
			write: func(w io.Writer) error {
				return writeJSON(w, agentListJSON([]*tallyv1.Agent{{SpiffeId: "spiffe://example.org/a2", Banned: true}}))
			},
			want: `{
  "agents": [
    {
      "spiffe_id": "spiffe://example.org/a2",
      "attestation_type": "",
      "serial_number": "",
      "expires_at": "",
      "selectors": [],
      "aliases": [],
      "banned": true,
      "attested_at": "",
      "renewed_at": ""
    }
  ]
}
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, tt.write(&buf))
			require.Equal(t, tt.want, buf.String())
		})
	}
}

func TestTTLText(t *testing.T) {
	tests := map[int64]string{
		0:     "default",
		30:    "30s",
		90:    "1m30s",
		300:   "5m",
		600:   "10m",
		3600:  "1h",
		3630:  "1h0m30s",
		5400:  "1h30m",
		36000: "10h",
	}
	for sec, want := range tests {
		require.Equal(t, want, ttlText(sec), "ttlText(%d)", sec)
	}
}

func TestUnixTime(t *testing.T) {
	require.Equal(t, "", unixTime(0))
	require.Equal(t, "2023-11-14T22:13:20Z", unixTime(testNow.Unix()))
}
