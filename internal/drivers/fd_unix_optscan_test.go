package drivers

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// unixNotCompared: the int options of a new unix socket that unixOpts
// does not compare with a new socket's (unixUncarried), and why.
var unixNotCompared = map[int]string{
	unix.SO_TYPE:             "read-only",
	unix.SO_ERROR:            "read-only (a pending error is cleared by reading it)",
	unix.SO_SNDBUF:           "carried",
	unix.SO_RCVBUF:           "carried",
	unix.SO_KEEPALIVE:        "carried",
	unix.SO_OOBINLINE:        "carried",
	unix.SO_PRIORITY:         "carried",
	unix.SO_LINGER:           "carried",
	unix.SO_BSDCOMPAT:        "no effect (always 0)",
	unix.SO_PASSCRED:         "carried",
	unix.SO_PEERCRED:         "read-only",
	unix.SO_RCVLOWAT:         "carried",
	unix.SO_SNDLOWAT:         "read-only (always 1)",
	unix.SO_RCVTIMEO:         "carried",
	unix.SO_SNDTIMEO:         "carried",
	unix.SO_RCVTIMEO_NEW:     "carried (SO_RCVTIMEO)",
	unix.SO_SNDTIMEO_NEW:     "carried (SO_SNDTIMEO)",
	unix.SO_GET_FILTER:       "refused when a filter is attached (socketTimeoutsFilter)",
	unix.SO_ACCEPTCONN:       "read-only (the state)",
	unix.SO_PASSSEC:          "carried",
	unix.SO_MARK:             "carried",
	unix.SO_PROTOCOL:         "read-only",
	unix.SO_DOMAIN:           "read-only",
	unix.SO_BPF_EXTENSIONS:   "read-only",
	unix.SO_INCOMING_CPU:     "set by the kernel as packets arrive",
	unix.SO_INCOMING_NAPI_ID: "read-only",
	unix.SO_MEMINFO:          "read-only",
	unix.SO_COOKIE:           "read-only",
	unix.SO_BUF_LOCK:         "follows SO_SNDBUF/SO_RCVBUF, which are carried",
	unix.SO_REUSEADDR:        "carried",
	unix.SO_REUSEPORT:        "carried",
	unix.SO_BROADCAST:        "carried",
	unix.SO_BINDTODEVICE:     "no effect on a unix socket",
	unix.SO_BINDTOIFINDEX:    "no effect on a unix socket",
}

// Every int option a new unix stream, datagram or seqpacket socket of
// this kernel answers at SOL_SOCKET is either compared with a new
// socket's (unixUncarried) or classified in unixNotCompared: an option a
// newer kernel adds fails this test instead of being lost with exit 0.
func TestUnixOptsAllClassified(t *testing.T) {
	compared := map[int]bool{}
	for _, o := range unixUncarried {
		if o.level != unix.SOL_SOCKET {
			t.Errorf("%s: not a socket-level option", o.name)
		}
		compared[o.opt] = true
	}
	for k := range unixNotCompared {
		if compared[k] {
			t.Errorf("option %d is both compared and in unixNotCompared", k)
		}
	}
	readable := 0
	for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET} {
		s, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		for opt := 0; opt < 256; opt++ {
			if !readableInt(s, unix.SOL_SOCKET, opt) {
				continue
			}
			readable++
			if !compared[opt] && unixNotCompared[opt] == "" {
				t.Errorf("type %d: option %d is readable but neither compared with a new socket's nor classified", typ, opt)
			}
		}
		unix.Close(s)
	}
	if readable < 60 {
		t.Fatalf("only %d options readable: the scan is broken", readable)
	}
}

// unixOpts refuses an uncarried option set, and reads the carried ones.
func TestUnixOptsRefusedAndRead(t *testing.T) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sp[0])
	defer unix.Close(sp[1])
	st := &model.UnixSocketState{Type: unix.SOCK_STREAM}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(unix.SetsockoptInt(sp[0], unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1))
	must(unix.SetsockoptLinger(sp[0], unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 7}))
	must(unix.SetsockoptInt(sp[0], unix.SOL_SOCKET, unix.SO_REUSEADDR, 1))
	must(unixOpts(sp[0], st))
	if st.ReusePort || !st.ReuseAddr || st.Broadcast || !st.KeepAlive || !st.LingerOn || st.Linger != 7 || st.OOBInline {
		t.Fatalf("read %+v", st)
	}
	for _, o := range []struct {
		opt, v int
		name   string
	}{{unix.SO_PASSRIGHTS, 0, "SO_PASSRIGHTS"}, {unix.SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS"}, {unix.SO_PASSPIDFD, 1, "SO_PASSPIDFD"}} {
		if err := unix.SetsockoptInt(sp[1], unix.SOL_SOCKET, o.opt, o.v); err != nil {
			t.Fatalf("%s: %v", o.name, err)
		}
		err := unixOpts(sp[1], st)
		if err == nil || !strings.Contains(err.Error(), o.name) {
			t.Errorf("%s set: %v", o.name, err)
		}
		if err := unix.SetsockoptInt(sp[1], unix.SOL_SOCKET, o.opt, 1-o.v); err != nil {
			t.Fatal(err)
		}
	}
}
