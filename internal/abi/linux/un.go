//go:build linux

package linux

import "golang.org/x/sys/unix"

// From include/uapi/linux/un.h.

// SiocUnixFile is SIOCUNIXFILE, AF_UNIX's first private socket ioctl
// (SIOCPROTOPRIVATE + 0): it opens the socket's bound file.
const SiocUnixFile = unix.SIOCPROTOPRIVATE + 0
