package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Values of --output.
const (
	outputText = "text"
	outputJSON = "json"
)

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write json: %w", err)
	}
	return nil
}

// fields writes "key: value" lines with the values aligned. A field with
// several values takes one line each, the key on the first only.
type fields struct {
	tw *tabwriter.Writer
}

func newFields(w io.Writer) *fields {
	return &fields{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
}

// add writes key and value; an empty value is written as is.
func (f *fields) add(key, value string) {
	fmt.Fprintf(f.tw, "%s:\t%s\n", key, value)
}

// addAll writes key and values, or nothing when there are none.
func (f *fields) addAll(key string, values []string) {
	for i, v := range values {
		if i == 0 {
			f.add(key, v)
			continue
		}
		fmt.Fprintf(f.tw, "\t%s\n", v)
	}
}

// addIf writes key and value unless value is empty.
func (f *fields) addIf(key, value string) {
	if value != "" {
		f.add(key, value)
	}
}

func (f *fields) flush() error {
	return f.tw.Flush()
}

// unixTime renders Unix seconds as RFC 3339 in UTC, and 0 as "".
func unixTime(sec int64) string {
	if sec == 0 {
		return ""
	}
	return time.Unix(sec, 0).UTC().Format(time.RFC3339)
}

// ttlText renders a TTL in seconds as a short Go duration ("1h", "1m30s"),
// and 0 as "default".
func ttlText(sec int64) string {
	if sec == 0 {
		return "default"
	}
	s := (time.Duration(sec) * time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// selectorJSON is a selector in JSON output and --data input.
type selectorJSON struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func selectorsJSON(sels []*tallyv1.Selector) []selectorJSON {
	out := make([]selectorJSON, 0, len(sels))
	for _, s := range sels {
		out = append(out, selectorJSON{Type: s.GetType(), Value: s.GetValue()})
	}
	return out
}

// selectorsText renders selectors as "type:value", the form --selector takes.
func selectorsText(sels []*tallyv1.Selector) []string {
	out := make([]string, 0, len(sels))
	for _, s := range sels {
		out = append(out, s.GetType()+":"+s.GetValue())
	}
	return out
}

// nonNil returns s, or an empty slice for nil, so JSON shows [] not null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
