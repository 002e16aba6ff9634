package dnsname

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	ok := []string{"web", "web.example.org", "*.example.org", "Web-1.Example.org", "a.b.c.d", "xn--bcher-kva.example",
		strings.Repeat("a", 63) + ".org"}
	bad := []string{"", "web_1.example.org", "*", "a.*.org", "*.*.org", "-web.org", "web-.org", "a..b", "web.org.",
		".web.org", "wéb.org", "web org", "web\n.org", strings.Repeat("a", 64) + ".org",
		strings.Repeat("a.", 127) + "ab"}
	for _, n := range ok {
		if err := Check(n); err != nil {
			t.Errorf("Check(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range bad {
		if err := Check(n); err == nil {
			t.Errorf("Check(%q) = nil, want an error", n)
		}
	}
}
