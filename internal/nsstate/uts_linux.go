package nsstate

import (
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// ReadUTS reads the host and domain names of pid's UTS namespace.
func ReadUTS(pid int) (model.UTSNamespace, error) {
	var u unix.Utsname
	err := inNamespace(pid, "uts", unix.CLONE_NEWUTS, func() error { return unix.Uname(&u) })
	if err != nil {
		return model.UTSNamespace{}, fmt.Errorf("read uts namespace: %w", err)
	}
	return model.UTSNamespace{Nodename: unix.ByteSliceToString(u.Nodename[:]), Domainname: unix.ByteSliceToString(u.Domainname[:])}, nil
}

// RestoreUTS gives pid's UTS namespace (a new one, made for the restore)
// the names in u.
func RestoreUTS(pid int, u *model.UTSNamespace) error {
	err := inNamespace(pid, "uts", unix.CLONE_NEWUTS, func() error {
		if err := unix.Sethostname([]byte(u.Nodename)); err != nil {
			return fmt.Errorf("sethostname %q: %w", u.Nodename, err)
		}
		if err := unix.Setdomainname([]byte(u.Domainname)); err != nil {
			return fmt.Errorf("setdomainname %q: %w", u.Domainname, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("restore uts namespace: %w", err)
	}
	return nil
}
