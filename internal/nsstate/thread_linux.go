package nsstate

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"godwit/internal/osthread"
	"godwit/internal/procfs"
)

// inNamespace runs fn on an OS thread that joined pid's namespace of kind
// ("uts", "ipc"; nstype its CLONE_NEW* flag) and ends with fn, never on
// Go's main thread (osthread.Drop): godwit's own namespaces stay as they
// were for the next dump in the same process.
func inNamespace(pid int, kind string, nstype int, fn func() error) error {
	var err error
	osthread.Drop(func() {
		err = func() error {
			f, err := os.Open(procfs.Path(pid, "ns/"+kind))
			if err != nil {
				return fmt.Errorf("%s namespace of %d: %w", kind, pid, err)
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), nstype); err != nil {
				return fmt.Errorf("join the %s namespace of %d: %w", kind, pid, err)
			}
			return fn()
		}()
	})
	return err
}
