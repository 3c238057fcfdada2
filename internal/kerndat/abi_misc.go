package kerndat

// Constants golang.org/x/sys/unix lacks, with the header each one comes from.
const (
	// include/uapi/linux/timerfd.h: _IOW('T', 0, __u64)
	tfdIocSetTicks = 0x40085400
	// include/uapi/linux/sockios.h: SIOCPROTOPRIVATE + 0, used by AF_UNIX
	// as SIOCUNIXFILE (include/uapi/linux/un.h)
	siocUnixFile = 0x89e0
	// include/uapi/linux/kernel-page-flags.h / Documentation: pagemap bit 55
	pagemapSoftDirty = 1 << 55
)
