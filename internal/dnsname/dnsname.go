// Package dnsname is the one rule for the DNS names Tally puts in
// certificates (X509-SVID DNS SANs, entries' dns_names).
package dnsname

import (
	"fmt"
	"strings"
)

// Check accepts a host name in the preferred name syntax of RFC 1123 and
// RFC 5280 §4.2.1.6: at most 253 characters, dot-separated labels of 1–63
// letters, digits and hyphens, not starting or ending with a hyphen; the
// first label may instead be "*" (a wildcard). Underscores are refused: they
// are not valid in host names, CAs that browsers trust have not issued them
// since 2019 (CA/Browser Forum ballot SC-12), and a name that one verifier
// takes and another refuses is an outage waiting to happen. A trailing dot is
// refused too. Case is not changed; callers that store names lowercase them.
// The error says what is wrong, not the name: callers name it.
func Check(name string) error {
	if name == "" {
		return fmt.Errorf("empty")
	}
	if len(name) > 253 {
		return fmt.Errorf("longer than 253 characters")
	}
	labels := strings.Split(name, ".")
	if labels[0] == "*" && len(labels) == 1 {
		return fmt.Errorf("a wildcard needs a domain after it")
	}
	for i, label := range labels {
		if err := checkLabel(label, i == 0); err != nil {
			return err
		}
	}
	return nil
}

func checkLabel(label string, first bool) error {
	switch {
	case label == "":
		return fmt.Errorf("empty label")
	case label == "*":
		if !first {
			return fmt.Errorf("a wildcard may only be the first label")
		}
		return nil
	case len(label) > 63:
		return fmt.Errorf("label %q is longer than 63 characters", label)
	case label[0] == '-' || label[len(label)-1] == '-':
		return fmt.Errorf("label %q starts or ends with a hyphen", label)
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return fmt.Errorf("label %q has %q: only letters, digits and hyphens", label, c)
		}
	}
	return nil
}
