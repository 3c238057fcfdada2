package drivers

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// notCompared: the int options a fresh TCP or UDP socket of this kernel
// answers (include/uapi/asm-generic/socket.h, linux/tcp.h, linux/in.h,
// linux/in6.h, linux/udp.h) that the uncarried tables do not compare
// with a fresh socket's, and why. Carried: the image has the value.
var notCompared = map[[2]int]string{
	{unix.SOL_SOCKET, unix.SO_REUSEADDR}:        "carried",
	{unix.SOL_SOCKET, unix.SO_TYPE}:             "read-only",
	{unix.SOL_SOCKET, unix.SO_ERROR}:            "read-only (a pending error is cleared by reading it)",
	{unix.SOL_SOCKET, unix.SO_BROADCAST}:        "carried",
	{unix.SOL_SOCKET, unix.SO_SNDBUF}:           "carried",
	{unix.SOL_SOCKET, unix.SO_RCVBUF}:           "carried",
	{unix.SOL_SOCKET, unix.SO_KEEPALIVE}:        "carried",
	{unix.SOL_SOCKET, unix.SO_OOBINLINE}:        "carried",
	{unix.SOL_SOCKET, unix.SO_PRIORITY}:         "carried",
	{unix.SOL_SOCKET, unix.SO_LINGER}:           "carried",
	{unix.SOL_SOCKET, unix.SO_BSDCOMPAT}:        "no effect (always 0)",
	{unix.SOL_SOCKET, unix.SO_REUSEPORT}:        "carried",
	{unix.SOL_SOCKET, unix.SO_PASSCRED}:         "carried",
	{unix.SOL_SOCKET, unix.SO_PEERCRED}:         "read-only",
	{unix.SOL_SOCKET, unix.SO_RCVLOWAT}:         "carried",
	{unix.SOL_SOCKET, unix.SO_SNDLOWAT}:         "read-only (always 1)",
	{unix.SOL_SOCKET, unix.SO_RCVTIMEO}:         "carried",
	{unix.SOL_SOCKET, unix.SO_SNDTIMEO}:         "carried",
	{unix.SOL_SOCKET, unix.SO_RCVTIMEO_NEW}:     "carried (SO_RCVTIMEO)",
	{unix.SOL_SOCKET, unix.SO_SNDTIMEO_NEW}:     "carried (SO_SNDTIMEO)",
	{unix.SOL_SOCKET, unix.SO_BINDTODEVICE}:     "carried",
	{unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX}:    "carried (SO_BINDTODEVICE)",
	{unix.SOL_SOCKET, unix.SO_GET_FILTER}:       "a classic filter carried, an eBPF one refused (readSockFilter)",
	{unix.SOL_SOCKET, unix.SO_TIMESTAMP}:        "carried",
	{unix.SOL_SOCKET, unix.SO_ACCEPTCONN}:       "read-only (the state)",
	{unix.SOL_SOCKET, unix.SO_PASSSEC}:          "carried",
	{unix.SOL_SOCKET, unix.SO_MARK}:             "carried",
	{unix.SOL_SOCKET, unix.SO_PROTOCOL}:         "read-only",
	{unix.SOL_SOCKET, unix.SO_DOMAIN}:           "read-only",
	{unix.SOL_SOCKET, unix.SO_BPF_EXTENSIONS}:   "read-only",
	{unix.SOL_SOCKET, unix.SO_INCOMING_CPU}:     "set by the kernel as packets arrive",
	{unix.SOL_SOCKET, unix.SO_INCOMING_NAPI_ID}: "read-only",
	{unix.SOL_SOCKET, unix.SO_MEMINFO}:          "read-only",
	{unix.SOL_SOCKET, unix.SO_COOKIE}:           "read-only",
	{unix.SOL_SOCKET, unix.SO_BUF_LOCK}:         "follows SO_SNDBUF/SO_RCVBUF, which are carried",

	{unix.SOL_TCP, unix.TCP_NODELAY}:      "carried",
	{unix.SOL_TCP, unix.TCP_CORK}:         "carried",
	{unix.SOL_TCP, unix.TCP_KEEPIDLE}:     "carried",
	{unix.SOL_TCP, unix.TCP_KEEPINTVL}:    "carried",
	{unix.SOL_TCP, unix.TCP_KEEPCNT}:      "carried",
	{unix.SOL_TCP, unix.TCP_INFO}:         "read-only",
	{unix.SOL_TCP, unix.TCP_QUICKACK}:     "transient state the kernel itself switches",
	{unix.SOL_TCP, unix.TCP_CONGESTION}:   "compared as a string (refuseOpts)",
	{unix.SOL_TCP, unix.TCP_THIN_DUPACK}:  "obsolete: accepted and ignored",
	{unix.SOL_TCP, unix.TCP_USER_TIMEOUT}: "carried",
	{unix.SOL_TCP, unix.TCP_REPAIR}:       "godwit's own",
	{unix.SOL_TCP, unix.TCP_TIMESTAMP}:    "the connection's clock: carried in the stream",
	{unix.SOL_TCP, unix.TCP_CC_INFO}:      "read-only",
	{unix.SOL_TCP, unix.TCP_SAVED_SYN}:    "read-only (exists only with TCP_SAVE_SYN, compared)",
	{unix.SOL_TCP, tcpIsMPTCP}:            "read-only",

	{unix.SOL_IP, unix.IP_TOS}:         "carried",
	{unix.SOL_IP, unix.IP_TTL}:         "carried",
	{unix.SOL_IP, unix.IP_HDRINCL}:     "raw sockets only: carried there (fd_raw.go)",
	{unix.SOL_IP, unix.IP_OPTIONS}:     "byte string: refused when set (uncarriedBufs)",
	{unix.SOL_IP, unix.IP_PKTINFO}:     "carried",
	{unix.SOL_IP, unix.IP_PKTOPTIONS}:  "read-only",
	{unix.SOL_IP, unix.IP_FREEBIND}:    "carried",
	{unix.SOL_IP, unix.IP_TRANSPARENT}: "refused when set",
	{unix.SOL_IP, unix.IP_NODEFRAG}:    "raw sockets only: carried there (fd_raw.go)",
	{unix.SOL_IP, unix.IP_PROTOCOL}:    "read-only",

	{unix.SOL_IPV6, unix.IPV6_2292PKTOPTIONS}: "read-only",
	{unix.SOL_IPV6, unix.IPV6_MTU}:            "read-only",
	{unix.SOL_IPV6, unix.IPV6_V6ONLY}:         "carried",
	{unix.SOL_IPV6, unix.IPV6_RECVPKTINFO}:    "carried",
	{unix.SOL_IPV6, unix.IPV6_HOPOPTS}:        "byte string: refused when set (uncarriedBufs)",
	{unix.SOL_IPV6, unix.IPV6_RTHDRDSTOPTS}:   "byte string: refused when set (uncarriedBufs)",
	{unix.SOL_IPV6, unix.IPV6_RTHDR}:          "byte string: refused when set (uncarriedBufs)",
	{unix.SOL_IPV6, unix.IPV6_DSTOPTS}:        "byte string: refused when set (uncarriedBufs)",
	{unix.SOL_IPV6, unix.IPV6_TCLASS}:         "carried",
	{unix.SOL_IPV6, unix.IPV6_TRANSPARENT}:    "refused when set",
	{unix.SOL_IPV6, unix.IPV6_FREEBIND}:       "carried",

	{unix.SOL_UDP, unix.UDP_CORK}: "refused when set (collectUDP)",
}

// Every int option a fresh TCP, UDP or UDP-Lite socket of this kernel
// answers, at every level such a socket has, is either compared with a
// fresh socket's (the uncarried tables: for TCP, the multicast ones
// and IP_CHECKSUM are compared on datagram sockets only, as TCP sends no
// multicast and takes no IP cmsgs) or in notCompared with its reason: an option a newer kernel adds fails this test instead of being
// lost with exit 0.
func TestInetOptsAllClassified(t *testing.T) {
	compared := map[[2]int]bool{}
	for _, os := range [][]sockOpt{uncarried[unix.AF_INET], uncarried[unix.AF_INET6], tcpUncarried, udpUncarried,
		mcastUncarried[unix.AF_INET], mcastUncarried[unix.AF_INET6]} {
		for _, o := range os {
			compared[[2]int{o.level, o.opt}] = true
		}
	}
	for k := range notCompared {
		if compared[k] {
			t.Errorf("option %d/%d is both compared and in notCompared", k[0], k[1])
		}
	}
	kinds := []struct {
		name               string
		family, typ, proto int
	}{
		{"tcp4", unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP},
		{"tcp6", unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP},
		{"udp4", unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP},
		{"udp6", unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDP},
		{"udplite4", unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE},
		{"udplite6", unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE},
	}
	levels := []int{unix.SOL_SOCKET, unix.SOL_TCP, unix.SOL_IP, unix.SOL_IPV6, unix.SOL_UDP, unix.IPPROTO_UDPLITE}
	readable := 0
	for _, k := range kinds {
		s, err := unix.Socket(k.family, k.typ|unix.SOCK_CLOEXEC, k.proto)
		if err != nil {
			t.Fatalf("%s: %v", k.name, err)
		}
		for _, level := range levels {
			key := level
			if level == unix.IPPROTO_UDPLITE {
				key = unix.SOL_UDP // the same options (udp_lib_getsockopt)
			}
			for opt := 0; opt < 256; opt++ {
				if !readableInt(s, level, opt) {
					continue
				}
				readable++
				if !compared[[2]int{key, opt}] && notCompared[[2]int{key, opt}] == "" {
					t.Errorf("%s: option %d at level %d is readable but neither compared with a fresh socket's nor classified", k.name, opt, level)
				}
			}
		}
		unix.Close(s)
	}
	if readable < 100 {
		t.Fatalf("only %d options readable: the scan is broken", readable)
	}
}

// readableInt: getsockopt(level, opt) into an int answers without error.
// A few options refuse an int-sized buffer (EINVAL) or need a connection
// (ENOTCONN) or data (ENODATA): they are not ints of a fresh socket.
func readableInt(s, level, opt int) bool {
	var v int32
	l := uint32(unsafe.Sizeof(v))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	return e == 0
}

// tcpIsMPTCP is TCP_IS_MPTCP (include/uapi/linux/tcp.h; not in x/sys/unix).
const tcpIsMPTCP = 43
