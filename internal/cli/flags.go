package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// parseSelector parses "type:value", split at the first colon: "unix:uid:0"
// is type "unix" and value "uid:0". Type and value must not be empty.
func parseSelector(s string) (*tallyv1.Selector, error) {
	typ, value, ok := strings.Cut(s, ":")
	switch {
	case !ok:
		return nil, fmt.Errorf("selector %q: want type:value", s)
	case typ == "":
		return nil, fmt.Errorf("selector %q: type is empty", s)
	case value == "":
		return nil, fmt.Errorf("selector %q: value is empty", s)
	}
	return &tallyv1.Selector{Type: typ, Value: value}, nil
}

// parseSelectors parses each of ss with parseSelector.
func parseSelectors(ss []string) ([]*tallyv1.Selector, error) {
	out := make([]*tallyv1.Selector, 0, len(ss))
	for _, s := range ss {
		sel, err := parseSelector(s)
		if err != nil {
			return nil, err
		}
		out = append(out, sel)
	}
	return out, nil
}

// ttlSeconds converts the duration given to flag into whole seconds, the unit
// of the API. 0 stays 0, which the server reads as its default.
func ttlSeconds(flag string, d time.Duration) (int64, error) {
	if d < 0 {
		return 0, fmt.Errorf("--%s %s: must not be negative", flag, d)
	}
	if d%time.Second != 0 {
		return 0, fmt.Errorf("--%s %s: must be a whole number of seconds", flag, d)
	}
	return int64(d / time.Second), nil
}

// checkID reports whether s, given to flag, is a SPIFFE ID. The server checks
// again; this only makes the message about a typo name the flag.
func checkID(flag, s string) error {
	if _, err := spiffeid.FromString(s); err != nil {
		return fmt.Errorf("--%s %q: %w", flag, s, err)
	}
	return nil
}

// nonEmpty returns ss without its empty strings, so that a list flag given
// only an empty value (--dns "") clears the list.
func nonEmpty(ss []string) []string {
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
