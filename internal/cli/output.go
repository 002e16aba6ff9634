package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/tallyid/tally/internal/text"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Values of --output.
const (
	outputText = "text"
	outputJSON = "json"
)

// writeJSON writes v as indented JSON and a newline, with every character
// that is not printable escaped (see escapeJSON).
func writeJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write json: %w", err)
	}
	if _, err := w.Write(escapeJSON(buf.Bytes())); err != nil {
		return fmt.Errorf("write json: %w", err)
	}
	return nil
}

// escapeJSON rewrites each character of the JSON text doc that
// encoding/json leaves raw although it is not printable (strconv.IsPrint) —
// DEL, C1 controls, bidirectional controls, zero-width and other format
// characters — as a \uXXXX escape, so that no stored text can move the
// cursor, recolour the terminal or reorder what is shown. Outside strings
// JSON is ASCII, and inside one the escape stands for the same character, so
// the document decodes to the same values. encoding/json already escapes C0
// controls and U+2028/U+2029 and writes invalid UTF-8 as U+FFFD; a raw
// message (a bundle) may still hold invalid bytes, which become \ufffd as a
// decoder would read them.
func escapeJSON(doc []byte) []byte {
	var out []byte
	for i := 0; i < len(doc); {
		r, size := utf8.DecodeRune(doc[i:])
		if r != 0x7f && (r < utf8.RuneSelf || (size > 1 && strconv.IsPrint(r))) {
			if out != nil {
				out = append(out, doc[i:i+size]...)
			}
			i += size
			continue
		}
		if out == nil {
			out = append(make([]byte, 0, len(doc)+16), doc[:i]...)
		}
		if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		} else {
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += size
	}
	if out == nil {
		return doc
	}
	return out
}

// fields writes "key: value" lines with the values aligned. A field with
// several values takes one line each, the key on the first only.
type fields struct {
	tw *tabwriter.Writer
}

func newFields(w io.Writer) *fields {
	return &fields{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
}

// add writes key and value, the value escaped with display; an empty value
// is written as is.
func (f *fields) add(key, value string) {
	fmt.Fprintf(f.tw, "%s:\t%s\n", key, text.Printable(value))
}

// addAll writes key and values, each escaped with display, or nothing when
// there are none.
func (f *fields) addAll(key string, values []string) {
	for i, v := range values {
		if i == 0 {
			f.add(key, v)
			continue
		}
		fmt.Fprintf(f.tw, "\t%s\n", text.Printable(v))
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

// selectorsText renders selectors as "type:value", the form --selector
// takes. The fields writer escapes each one whole.
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
