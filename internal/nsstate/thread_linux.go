package nsstate

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// inNamespace runs fn on a new locked OS thread that joined pid's
// namespace of kind ("uts", "ipc"; nstype its CLONE_NEW* flag). The
// goroutine never unlocks the thread, so the runtime ends the thread when
// fn returns.
func inNamespace(pid int, kind string, nstype int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
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
	}()
	return <-errc
}
