package text

import "testing"

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"web":                   "web",
		"naïve 東京 ✓":            "naïve 東京 ✓",
		"user:root\nunix:uid:0": `"user:root\nunix:uid:0"`,
		"app\x00evil":           `"app\x00evil"`,
		"abc\u202edcba":         `"abc\u202edcba"`,
		"bad\xffutf8":           `"bad\xffutf8"`,
		`"quoted"`:              `"\"quoted\""`,
		"":                      "",
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %s, want %s", in, got, want)
		}
	}
}
