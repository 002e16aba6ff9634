package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// readEntryData reads the --data file name, or stdin for "-", with
// parseEntryData.
func readEntryData(stdin io.Reader, name string) ([]*tallyv1.Entry, error) {
	var (
		data []byte
		err  error
	)
	if name == "-" {
		name = "stdin"
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, fmt.Errorf("read --data: %w", err)
	}
	entries, err := parseEntryData(data)
	if err != nil {
		return nil, fmt.Errorf("--data %s: %w", name, err)
	}
	return entries, nil
}

// entryFileJSON is the --data file.
type entryFileJSON struct {
	Entries []json.RawMessage `json:"entries"`
}

// entryDataJSON is one entry of the --data file. Each TTL may be given one way
// only: a Go duration (x509_ttl), seconds (x509_ttl_seconds) or SPIRE's
// seconds (x509_svid_ttl).
type entryDataJSON struct {
	SPIFFEID       string         `json:"spiffe_id"`
	ParentID       string         `json:"parent_id"`
	Selectors      []selectorJSON `json:"selectors"`
	X509TTL        *string        `json:"x509_ttl"`
	X509TTLSeconds *int64         `json:"x509_ttl_seconds"`
	X509SVIDTTL    *int64         `json:"x509_svid_ttl"`
	JWTTTL         *string        `json:"jwt_ttl"`
	JWTTTLSeconds  *int64         `json:"jwt_ttl_seconds"`
	JWTSVIDTTL     *int64         `json:"jwt_svid_ttl"`
	DNSNames       []string       `json:"dns_names"`
	Hint           string         `json:"hint"`
	Admin          bool           `json:"admin"`

	// Output only: accepted so that `entry list -o json` output can be fed
	// back, and dropped, as the server assigns them.
	ID        json.RawMessage `json:"id"`
	Revision  json.RawMessage `json:"revision"`
	CreatedAt json.RawMessage `json:"created_at"`
	// Owner marks an entry the Kubernetes registrar keeps: refused, since
	// the registrar renders it again from its resource.
	Owner json.RawMessage `json:"owner"`
}

// parseEntryData parses a --data file: {"entries": [...]}. The output-only
// fields id, revision and created_at are dropped. Unknown fields,
// bad selectors, bad TTLs and missing IDs are errors naming the entry by its
// index; an empty list is an error too.
func parseEntryData(data []byte) ([]*tallyv1.Entry, error) {
	var file entryFileJSON
	if err := decodeStrict(data, &file); err != nil {
		return nil, err
	}
	if len(file.Entries) == 0 {
		return nil, errors.New(`no entries: want {"entries": [...]}`)
	}
	entries := make([]*tallyv1.Entry, 0, len(file.Entries))
	for i, raw := range file.Entries {
		e, err := parseEntryJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("entries[%d]: %w", i, err)
		}
		entries = append(entries, e)
	}
	return entries, nil
}

func parseEntryJSON(raw json.RawMessage) (*tallyv1.Entry, error) {
	var d entryDataJSON
	if err := decodeStrict(raw, &d); err != nil {
		return nil, err
	}
	if d.SPIFFEID == "" {
		return nil, errors.New("spiffe_id is missing")
	}
	if len(d.Owner) > 0 && string(d.Owner) != "null" {
		return nil, fmt.Errorf("%s has an owner: the Kubernetes registrar keeps it and renders it from its resource; leave it out", d.SPIFFEID)
	}
	if d.ParentID == "" {
		return nil, errors.New("parent_id is missing")
	}
	e := &tallyv1.Entry{
		SpiffeId: d.SPIFFEID,
		ParentId: d.ParentID,
		DnsNames: d.DNSNames,
		Hint:     d.Hint,
		Admin:    d.Admin,
	}
	for i, s := range d.Selectors {
		switch {
		case s.Type == "":
			return nil, fmt.Errorf("selectors[%d]: type is empty", i)
		case s.Value == "":
			return nil, fmt.Errorf("selectors[%d]: value is empty", i)
		}
		e.Selectors = append(e.Selectors, &tallyv1.Selector{Type: s.Type, Value: s.Value})
	}
	var err error
	if e.X509TtlSeconds, err = entryTTL("x509", d.X509TTL, d.X509TTLSeconds, d.X509SVIDTTL); err != nil {
		return nil, err
	}
	if e.JwtTtlSeconds, err = entryTTL("jwt", d.JWTTTL, d.JWTTTLSeconds, d.JWTSVIDTTL); err != nil {
		return nil, err
	}
	return e, nil
}

// entryTTL returns in seconds the one of the TTL fields of kind ("x509",
// "jwt") that is set, or 0 if none is.
func entryTTL(kind string, dur *string, seconds, spireSeconds *int64) (int64, error) {
	var (
		set []string
		sec int64
	)
	if dur != nil {
		name := kind + "_ttl"
		set = append(set, name)
		d, err := time.ParseDuration(*dur)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		if d < 0 || d%time.Second != 0 {
			return 0, fmt.Errorf("%s %q: want a non-negative whole number of seconds", name, *dur)
		}
		sec = int64(d / time.Second)
	}
	for _, f := range []struct {
		name string
		v    *int64
	}{{kind + "_ttl_seconds", seconds}, {kind + "_svid_ttl", spireSeconds}} {
		name, v := f.name, f.v
		if v == nil {
			continue
		}
		set = append(set, name)
		if *v < 0 {
			return 0, fmt.Errorf("%s %d: must not be negative", name, *v)
		}
		sec = *v
	}
	if len(set) > 1 {
		return 0, fmt.Errorf("give only one of %s", strings.Join(set, ", "))
	}
	return sec, nil
}

// decodeStrict decodes one JSON value into v, rejecting unknown fields and
// trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if se := (*json.SyntaxError)(nil); errors.As(err, &se) {
			return fmt.Errorf("at byte %d: %w", se.Offset, err)
		}
		return err
	}
	if err := dec.Decode(new(json.RawMessage)); !errors.Is(err, io.EOF) {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}
