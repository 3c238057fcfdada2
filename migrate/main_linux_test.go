package migrate

import (
	"os"
	"testing"

	"godwit/lazypages"
)

// TestMain lets this binary serve as the lazy-pages guard the agent starts
// (an exec of /proc/self/exe) for each migration.
func TestMain(m *testing.M) {
	lazypages.MaybeGuard()
	os.Exit(m.Run())
}
