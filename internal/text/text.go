// Package text prints text that came from outside (stored entries, callers'
// requests) so that it reads as what it is.
package text

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Printable returns s unchanged if it is valid UTF-8 of printable characters
// only, and otherwise s quoted and escaped as a Go string literal
// (strconv.Quote): control characters, line breaks, bidirectional overrides
// and invalid bytes show as escapes, so a value cannot pass for two values or
// for other text. A value that itself starts with `"` is quoted as well, so
// that a quoted value always means an escaped one.
func Printable(s string) string {
	if !utf8.ValidString(s) || strings.HasPrefix(s, `"`) || strings.ContainsFunc(s, func(r rune) bool { return !strconv.IsPrint(r) }) {
		return strconv.Quote(s)
	}
	return s
}
