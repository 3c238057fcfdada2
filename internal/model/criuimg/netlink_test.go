package criuimg

import (
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

func TestNetlinkRoundTrip(t *testing.T) {
	for _, n := range []*model.NetlinkSocketState{
		{Ino: 7, Protocol: unix.NETLINK_GENERIC, Opts: model.SocketOpts{SndBuf: 212992, RcvBuf: 212992, RcvLowat: 1}},
		{Ino: 8, Protocol: unix.NETLINK_ROUTE, PortID: 4242, Groups: []uint32{0x11, 0, 1},
			Opts: model.SocketOpts{SndBuf: 4096, RcvBuf: 1 << 20, RcvLowat: 1, Mark: 5, RcvTimeoSec: 3}},
		{Ino: 9, Protocol: unix.NETLINK_ROUTE, PortID: 77, DstPortID: 0, DstGroup: 1, Opts: model.SocketOpts{RcvLowat: 1}},
	} {
		f := &model.File{ID: 3, Kind: model.NetlinkSocket, Flags: unix.O_RDWR | unix.O_NONBLOCK, MntID: -1, Netlink: n}
		e, err := kindEntry(f)
		if err != nil {
			t.Fatal(err)
		}
		got, known, err := readKind(e)
		if err != nil || !known {
			t.Fatalf("readKind: %v (known %v)", err, known)
		}
		if !reflect.DeepEqual(got, f) {
			t.Fatalf("round trip:\n got %+v %+v\nwant %+v %+v", got, got.Netlink, f, f.Netlink)
		}
	}
}

func TestNetlinkBadEntries(t *testing.T) {
	f := &model.File{ID: 3, Kind: model.NetlinkSocket, Flags: unix.O_RDWR, MntID: -1,
		Netlink: &model.NetlinkSocketState{Ino: 1, PortID: 5, DstPortID: 9}}
	for _, name := range []string{"state", "groups", "timeout", "ns"} {
		e, err := kindEntry(f)
		if err != nil {
			t.Fatal(err)
		}
		switch name {
		case "state":
			e.Nlsk.State = new(uint32) // unconnected, with a destination
		case "groups":
			e.Nlsk.Groups = make([]uint32, maxNetlinkGroupWords+1)
		case "timeout":
			us := uint64(1e6)
			e.Nlsk.Opts.SoRcvTmoUsec = &us
		case "ns":
			ns := uint32(3)
			e.Nlsk.NsId = &ns
		}
		if _, _, err := readKind(e); err == nil {
			t.Errorf("%s: bad entry accepted", name)
		}
	}
}
