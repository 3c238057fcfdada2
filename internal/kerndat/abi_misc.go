//go:build linux

package kerndat

import "golang.org/x/sys/unix"

// Constants golang.org/x/sys/unix lacks, with the header each one comes from.
const (
	// include/uapi/linux/timerfd.h: _IOW('T', 0, __u64)
	tfdIocSetTicks = 0x40085400
	// include/uapi/linux/un.h: SIOCUNIXFILE is AF_UNIX's first private
	// socket ioctl, SIOCPROTOPRIVATE + 0
	siocUnixFile = unix.SIOCPROTOPRIVATE + 0
	// include/uapi/linux/kernel-page-flags.h / Documentation: pagemap bit 55
	pagemapSoftDirty = 1 << 55
)
