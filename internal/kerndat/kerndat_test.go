package kerndat

import (
	"strings"
	"testing"
)

func TestWrapNames(t *testing.T) {
	names := []string{"aaaa", "bbbb", "cccc", "dddd"}
	if got := wrapNames(names, 9); got != "aaaa bbbb\ncccc dddd" {
		t.Fatalf("got %q", got)
	}
	if got := wrapNames([]string{"a-very-long-name"}, 4); got != "a-very-long-name" {
		t.Fatalf("got %q", got)
	}
	if got := wrapNames(nil, 80); got != "" {
		t.Fatalf("got %q", got)
	}
}

func TestCategoryString(t *testing.T) {
	for c, w := range map[Category]string{Required: "required", Extra: "extra", Experimental: "experimental", 7: "category(7)"} {
		if c.String() != w {
			t.Errorf("%d: %q", int(c), c.String())
		}
	}
}

func TestVerdicts(t *testing.T) {
	// CRIU's words, which scripts grep for.
	if VerdictGood != "Looks good." || VerdictBad != "Does not look good." ||
		!strings.HasPrefix(VerdictMaybe, "Looks good but some kernel features are missing\n") {
		t.Fatal("verdict strings changed")
	}
}
