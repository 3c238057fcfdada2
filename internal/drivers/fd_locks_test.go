package drivers

import (
	"strings"
	"testing"

	"godwit/internal/model"
)

// Lease lines of fdinfo (fs/locks.c lock_get_status): an active lease is
// read with its type, one being broken and delegations are refused.
func TestParseLockLease(t *testing.T) {
	for _, c := range []struct {
		line  string
		want  model.FileLock
		error string
	}{
		{line: "1: LEASE  ACTIVE    READ 11016 fe:00:10241387 0 EOF", want: model.FileLock{Kind: model.LockLease}},
		{line: "1: LEASE  ACTIVE    WRITE 11016 fe:00:10241387 0 EOF", want: model.FileLock{Kind: model.LockLease, Write: true}},
		{line: "1: LEASE  BREAKING  UNLCK 11016 fe:00:10241387 0 EOF", error: "lease break pending"},
		{line: "1: LEASE  BREAKER   READ 11016 fe:00:10241387 0 EOF", error: "lease state BREAKER"},
		{line: "1: DELEG  ACTIVE    READ 11016 fe:00:10241387 0 EOF", error: "a deleg lock is held"},
		{line: "1: POSIX  ACTIVE    READ 11016 fe:00:10241387 0 EOF", error: "not advisory"},
		{line: "1: LEASE  ACTIVE    UNLCK 11016 fe:00:10241387 0 EOF", error: "mode UNLCK"},
	} {
		l, ok, err := parseLock(c.line)
		if c.error != "" {
			if err == nil || !strings.Contains(err.Error(), c.error) {
				t.Errorf("%q: %v, want an error with %q", c.line, err, c.error)
			}
			continue
		}
		if err != nil || !ok || l != c.want {
			t.Errorf("%q: %+v %v %v, want %+v", c.line, l, ok, err, c.want)
		}
	}
}
