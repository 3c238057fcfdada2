package criuimg

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	sk_netlink "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-netlink"
	sk_opts "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	"google.golang.org/protobuf/proto"

	"godwit/internal/model"
)

// Netlink sockets: files.img entries of type NETLINKSK (netlink_sk_entry).

// The states of a netlink socket in the image (the kernel's
// NETLINK_UNCONNECTED / NETLINK_CONNECTED, net/netlink/af_netlink.h).
const (
	netlinkUnconnected = 0
	netlinkConnected   = 1
)

// maxNetlinkGroupWords bounds an image's membership bitmap (the drivers'
// bound too).
const maxNetlinkGroupWords = 64

func netlinkEntry(f *model.File, e *fdinfo.FileEntry) error {
	n := f.Netlink
	if n == nil {
		return fmt.Errorf("file %d: no state for its kind", f.ID)
	}
	state := uint32(netlinkUnconnected)
	if n.DstPortID != 0 || n.DstGroup != 0 {
		state = netlinkConnected
	}
	o := &n.Opts
	e.Nlsk = &sk_netlink.NetlinkSkEntry{
		Id: proto.Uint32(uint32(f.ID)), Ino: proto.Uint32(n.Ino), Protocol: proto.Uint32(n.Protocol),
		State: proto.Uint32(state), Flags: proto.Uint32(f.Flags), Portid: proto.Uint32(n.PortID),
		Groups: append([]uint32(nil), n.Groups...), DstPortid: proto.Uint32(n.DstPortID), DstGroup: proto.Uint32(n.DstGroup),
		Fown: noFown(),
		Opts: &sk_opts.SkOptsEntry{
			SoSndbuf: proto.Uint32(o.SndBuf), SoRcvbuf: proto.Uint32(o.RcvBuf),
			SoSndTmoSec: proto.Uint64(o.SndTimeoSec), SoSndTmoUsec: proto.Uint64(o.SndTimeoUsec),
			SoRcvTmoSec: proto.Uint64(o.RcvTimeoSec), SoRcvTmoUsec: proto.Uint64(o.RcvTimeoUsec),
			SoPasscred: proto.Bool(o.PassCred), SoPasssec: proto.Bool(o.PassSec),
			SoPriority: proto.Uint32(o.Priority), SoRcvlowat: proto.Uint32(o.RcvLowat), SoMark: proto.Uint32(o.Mark),
		},
	}
	return nil
}

func readNetlink(e *fdinfo.FileEntry, f *model.File) error {
	p := e.GetNlsk()
	if p == nil {
		return fmt.Errorf("file %d: %v without its netlink entry", f.ID, e.GetType())
	}
	o := p.GetOpts()
	if o == nil {
		return fmt.Errorf("file %d: netlink socket without its socket options", f.ID)
	}
	if n := len(o.GetSoFilter()); n > 0 {
		return fmt.Errorf("file %d: netlink socket with a socket filter of %d instructions: not supported yet", f.ID, n)
	}
	if len(p.GetGroups()) > maxNetlinkGroupWords {
		return fmt.Errorf("file %d: netlink socket in %d words of groups", f.ID, len(p.GetGroups()))
	}
	n := &model.NetlinkSocketState{
		Ino: p.GetIno(), Protocol: p.GetProtocol(), PortID: p.GetPortid(),
		DstPortID: p.GetDstPortid(), DstGroup: p.GetDstGroup(),
		Opts: model.SocketOpts{
			SndBuf: o.GetSoSndbuf(), RcvBuf: o.GetSoRcvbuf(),
			SndTimeoSec: o.GetSoSndTmoSec(), SndTimeoUsec: o.GetSoSndTmoUsec(),
			RcvTimeoSec: o.GetSoRcvTmoSec(), RcvTimeoUsec: o.GetSoRcvTmoUsec(),
			PassCred: o.GetSoPasscred(), PassSec: o.GetSoPasssec(),
			Priority: o.GetSoPriority(), RcvLowat: o.GetSoRcvlowat(), Mark: o.GetSoMark(),
		},
	}
	if len(p.GetGroups()) > 0 {
		n.Groups = append([]uint32(nil), p.GetGroups()...)
	}
	if n.Opts.SndTimeoUsec >= 1e6 || n.Opts.RcvTimeoUsec >= 1e6 || n.Opts.SndTimeoSec > 1<<62 || n.Opts.RcvTimeoSec > 1<<62 {
		return fmt.Errorf("file %d: socket timeouts out of range", f.ID)
	}
	if p.GetState() != netlinkUnconnected && p.GetState() != netlinkConnected {
		return fmt.Errorf("file %d: netlink socket in state %d", f.ID, p.GetState())
	}
	if (p.GetState() == netlinkConnected) != (n.DstPortID != 0 || n.DstGroup != 0) {
		return fmt.Errorf("file %d: netlink socket state %d does not match its destination", f.ID, p.GetState())
	}
	if p.GetNsId() != 0 {
		return fmt.Errorf("file %d: netlink socket of another network namespace (ns_id %d): not supported", f.ID, p.GetNsId())
	}
	f.Kind, f.Flags = model.NetlinkSocket, p.GetFlags()
	f.Netlink = n
	return nil
}
