package registry

import (
	"fmt"
	"unicode/utf8"

	"github.com/tallyid/tally/ca/store"
)

// CheckText reports whether s may be stored in the text field named field.
// It refuses invalid UTF-8 and the characters that make text read as
// something it is not: C0 and C1 control characters and DEL (a newline makes
// one selector print as two), the line and paragraph separators U+2028 and
// U+2029, and the bidirectional embeddings, overrides and isolates
// U+202A–U+202E and U+2066–U+2069 (which reorder what is shown). Any other
// Unicode is kept. The error wraps ErrInvalid and names the field, the first
// refused character and its byte offset, for example
// "selectors[0].value: control character U+000A at byte 9".
func CheckText(field, s string) error {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				return &textError{field: field, text: s, offset: i, invalid: true}
			}
			continue
		}
		if what := refusedRune(r); what != "" {
			return &textError{field: field, text: s, offset: i, r: r, what: what}
		}
	}
	return nil
}

// refusedRune says what r is if CheckText refuses it, else "".
func refusedRune(r rune) string {
	switch {
	case r < 0x20, r >= 0x7f && r <= 0x9f:
		return "control character"
	case r == 0x2028, r == 0x2029:
		return "line or paragraph separator"
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return "bidirectional control"
	}
	return ""
}

// textError is a refused character in a text field. Its message names the
// character by code point, never the text itself, so it is printable and
// short whatever the text; the text is kept for the start-up report.
type textError struct {
	field   string
	text    string
	offset  int
	r       rune
	what    string
	invalid bool
}

func (e *textError) Error() string {
	if e.invalid {
		return fmt.Sprintf("%v: %s: invalid UTF-8 at byte %d", ErrInvalid, e.field, e.offset)
	}
	return fmt.Sprintf("%v: %s: %s U+%04X at byte %d", ErrInvalid, e.field, e.what, e.r, e.offset)
}

func (e *textError) Unwrap() error { return ErrInvalid }

// checkEntryText runs CheckText on every text field of e; selectors and
// DNS names are named by their index as given.
func checkEntryText(e *store.Entry) error {
	if err := CheckText("id", e.ID); err != nil {
		return err
	}
	if err := CheckText("spiffe_id", e.SPIFFEID); err != nil {
		return err
	}
	if err := CheckText("parent_id", e.ParentID); err != nil {
		return err
	}
	for i, s := range e.Selectors {
		if err := CheckText(fmt.Sprintf("selectors[%d].type", i), s.Type); err != nil {
			return err
		}
		if err := CheckText(fmt.Sprintf("selectors[%d].value", i), s.Value); err != nil {
			return err
		}
	}
	for i, name := range e.DNSNames {
		if err := CheckText(fmt.Sprintf("dns_names[%d]", i), name); err != nil {
			return err
		}
	}
	return CheckText("hint", e.Hint)
}
