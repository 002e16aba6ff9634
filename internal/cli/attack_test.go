package cli

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/internal/text"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// attackEntry holds the inputs of the report, as a server that stored them
// (before it refused them) would return them.
func attackEntry() *tallyv1.Entry {
	return &tallyv1.Entry{
		Id:       "e1",
		SpiffeId: "spiffe://example.org/web",
		ParentId: "spiffe://example.org/agent",
		Selectors: []*tallyv1.Selector{
			{Type: "unix", Value: "user:root\nunix:uid:0"},
			{Type: "unix", Value: "path:/usr/bin/app\x00evil"},
			{Type: "k8s", Value: "ns:default\nsa:admin"},
		},
		DnsNames: []string{"web.example.org", "gro.elpmaxe\u202e.web"},
		Hint:     "web\nAdmin: true",
	}
}

// The text output must show one stored string as one escaped value: the
// selector "unix:user:root\nunix:uid:0" must not read as two selectors, nor
// the hint as an "Admin: true" field.
func TestAttackControlCharsInSelectorsOutput(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, writeEntry(&buf, attackEntry()))
	require.Equal(t, `Entry ID:       e1
SPIFFE ID:      spiffe://example.org/web
Parent ID:      spiffe://example.org/agent
Selectors:      "unix:user:root\nunix:uid:0"
                "unix:path:/usr/bin/app\x00evil"
                "k8s:ns:default\nsa:admin"
X509-SVID TTL:  default
JWT-SVID TTL:   default
DNS names:      web.example.org
                "gro.elpmaxe\u202e.web"
Hint:           "web\nAdmin: true"
Admin:          false
Revision:       0
`, buf.String())

	// The agent table keeps one row an agent.
	buf.Reset()
	require.NoError(t, writeAgentTable(&buf, []*tallyv1.Agent{{SpiffeId: "spiffe://example.org/a\nspiffe://example.org/b", AttestationType: "x\tpop"}}))
	require.Equal(t, `SPIFFE ID                                         ATTESTATION  EXPIRES  BANNED
"spiffe://example.org/a\nspiffe://example.org/b"  "x\tpop"              false
`, buf.String())

	// A server's error message is escaped too.
	err := rpcError("create entries", status.Error(codes.InvalidArgument, "bad\x1b[2J\nError: none"))
	require.Equal(t, `create entries: "bad\x1b[2J\nError: none" (InvalidArgument)`, err.Error())
}

func TestAttackControlCharsInSelectorsJSON(t *testing.T) {
	e := attackEntry()
	e.Hint = "a\x7fb\u0085c\u009b31m\u202ed\u2066e\u200bf\U000E0001g\u00e9\u65e5\ufffd"
	var buf bytes.Buffer
	require.NoError(t, writeJSON(&buf, newEntryJSON(e)))
	out := buf.String()
	require.Contains(t, out, `"user:root\nunix:uid:0"`)
	require.Contains(t, out, `"path:/usr/bin/app\u0000evil"`)
	require.Contains(t, out, `"gro.elpmaxe\u202e.web"`)
	require.Contains(t, out, `"hint": "a\u007fb\u0085c\u009b31m\u202ed\u2066e\u200bf\udb40\udc01g`+"\u00e9\u65e5\ufffd"+`"`,
		"DEL, C1, bidi, zero-width and tag characters escaped; printable Unicode kept")
	for _, r := range out {
		require.True(t, r == '\n' || strconv.IsPrint(r), "raw %U in output", r)
	}

	// Escaping changes no value.
	var back entryJSON
	require.NoError(t, json.Unmarshal(buf.Bytes(), &back))
	require.Equal(t, newEntryJSON(e), back)

	// Nor a bundle's raw JSON, even with invalid UTF-8 in it.
	raw := []byte("{\"k\": \"a\u202eb\xffc\"}")
	var want, got map[string]string
	require.NoError(t, json.Unmarshal(raw, &want))
	require.NoError(t, json.Unmarshal(escapeJSON(raw), &got))
	require.Equal(t, want, got)
	require.Equal(t, `{"k": "a\u202eb\ufffdc"}`, string(escapeJSON(raw)))
}

func TestDisplay(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"spiffe://example.org/web", "spiffe://example.org/web"},
		{"unix:uid:0", "unix:uid:0"},
		{"a b", "a b"},
		{"caf\u00e9 \u65e5\u672c \U0001F600", "caf\u00e9 \u65e5\u672c \U0001F600"},
		{`say "hi"`, `say "hi"`},
		{`"quoted"`, `"\"quoted\""`}, // a leading quote always means escaped
		{"a\nb", `"a\nb"`},
		{"a\tb", `"a\tb"`},
		{"a\x00b", `"a\x00b"`},
		{"a\x1b[31mb", `"a\x1b[31mb"`},
		{"a\x7fb", `"a\x7fb"`},
		{"a\u0085b", `"a\u0085b"`},
		{"a\u202eb", `"a\u202eb"`},
		{"a\u2066b", `"a\u2066b"`},
		{"a\u200bb", `"a\u200bb"`},
		{"a\u00a0b", `"a\u00a0b"`},
		{"a\xffb", `"a\xffb"`},
	} {
		require.Equal(t, c.want, text.Printable(c.in), "%q", c.in)
		if c.want != c.in {
			back, err := strconv.Unquote(c.want)
			require.NoError(t, err)
			require.Equal(t, c.in, back, "escaped text unquotes to the stored one")
		}
	}
	require.False(t, strings.ContainsAny(text.Printable("\u202e"), "\u202e"))
}
