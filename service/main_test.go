package service

import (
	"os"
	"testing"

	"godwit/internal/testutil"
)

func TestMain(m *testing.M) {
	// A descriptor this test binary inherited would leak into the
	// processes the tests dump, and fail their dump.
	testutil.CloseInheritedFDs()
	os.Exit(m.Run())
}
