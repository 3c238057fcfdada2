package criuimg

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"

	sk_inet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	sk_opts "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	tcp_stream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
)

// TCPStreamImg names the image of the established connection of the
// inet socket with inode ino, as CRIU names it.
func TCPStreamImg(ino uint32) string { return fmt.Sprintf("tcp-stream-%x.img", ino) }

// addrWords is an address as CRIU's src_addr/dst_addr keep it: the
// address's bytes read as host-order 32-bit words (s6_addr32, s_addr).
func addrWords(a netip.Addr, family uint32) []uint32 {
	if !a.IsValid() {
		if family == unix.AF_INET6 {
			return []uint32{0, 0, 0, 0}
		}
		return []uint32{0}
	}
	var b []byte
	if family == unix.AF_INET {
		b4 := a.Unmap().As4()
		b = b4[:]
	} else {
		b16 := a.As16()
		b = b16[:]
	}
	var w []uint32
	for i := 0; i < len(b); i += 4 {
		w = append(w, binary.NativeEndian.Uint32(b[i:]))
	}
	return w
}

func addrOfWords(w []uint32, family uint32) (netip.Addr, error) {
	var b []byte
	for _, x := range w {
		b = binary.NativeEndian.AppendUint32(b, x)
	}
	switch {
	case family == unix.AF_INET && len(b) == 4:
		return netip.AddrFrom4([4]byte(b)), nil
	case family == unix.AF_INET6 && len(b) == 16:
		return netip.AddrFrom16([16]byte(b)), nil
	}
	return netip.Addr{}, fmt.Errorf("address of %d words for family %d", len(w), family)
}

func inetEntry(f *model.File, id *uint32) *sk_inet.InetSkEntry {
	s := f.Inet
	o := &s.Opts
	io := &s.Inet
	e := &sk_inet.InetSkEntry{
		Id: id, Ino: proto.Uint32(s.Ino), Family: proto.Uint32(s.Family), Type: proto.Uint32(s.Type),
		Proto: proto.Uint32(s.Proto), State: proto.Uint32(s.State),
		SrcPort: proto.Uint32(uint32(s.Src.Port())), DstPort: proto.Uint32(uint32(s.Dst.Port())),
		Flags: proto.Uint32(f.Flags), Backlog: proto.Uint32(s.Backlog),
		SrcAddr: addrWords(s.Src.Addr(), s.Family), DstAddr: addrWords(s.Dst.Addr(), s.Family),
		Fown: noFown(),
		Opts: &sk_opts.SkOptsEntry{
			SoSndbuf: proto.Uint32(o.SndBuf), SoRcvbuf: proto.Uint32(o.RcvBuf),
			SoSndTmoSec: proto.Uint64(o.SndTimeoSec), SoSndTmoUsec: proto.Uint64(o.SndTimeoUsec),
			SoRcvTmoSec: proto.Uint64(o.RcvTimeoSec), SoRcvTmoUsec: proto.Uint64(o.RcvTimeoUsec),
			SoPasscred: proto.Bool(o.PassCred), SoPasssec: proto.Bool(o.PassSec),
			SoPriority: proto.Uint32(o.Priority), SoRcvlowat: proto.Uint32(o.RcvLowat), SoMark: proto.Uint32(o.Mark),
			Reuseaddr: proto.Bool(io.ReuseAddr), SoReuseport: proto.Bool(io.ReusePort),
			SoBroadcast: proto.Bool(io.Broadcast), SoKeepalive: proto.Bool(io.KeepAlive),
			SoFilter: soFilterWords(o.Filter),
		},
		IpOpts:   &sk_inet.IpOptsEntry{Freebind: proto.Bool(io.Freebind), Pktinfo: proto.Bool(io.Pktinfo), Tos: proto.Uint32(io.TOS)},
		Shutdown: sk_opts.SkShutdown(s.Shutdown & 3).Enum(),
	}
	if io.OOBInline {
		e.Opts.SoOobinline = proto.Uint32(1)
	}
	if io.LingerOn {
		e.Opts.SoLinger = proto.Uint32(io.Linger)
	}
	if io.TTL != 0 {
		e.IpOpts.Ttl = proto.Uint32(io.TTL)
	}
	if s.BindDev != "" {
		e.Opts.SoBoundDev = proto.String(s.BindDev)
	}
	if s.Family == unix.AF_INET6 {
		e.V6Only = proto.Bool(s.V6Only)
	}
	if r := io.Raw; r != nil {
		e.IpOpts.Raw = &sk_inet.IpOptsRawEntry{Hdrincl: proto.Bool(r.HdrIncl), Nodefrag: proto.Bool(r.NoDefrag),
			Checksum: proto.Bool(r.Checksum), IcmpvFilter: r.ICMPFilter}
	}
	if s.Type == unix.SOCK_STREAM {
		e.TcpOpts = &tcp_stream.TcpOptsEntry{
			Cork: proto.Bool(io.Cork), Nodelay: proto.Bool(io.NoDelay),
			Keepcnt: proto.Uint32(io.KeepCnt), Keepidle: proto.Uint32(io.KeepIdle), Keepintvl: proto.Uint32(io.KeepIntvl),
		}
	}
	return e
}

// readInet reads an INETSK entry.
func readInet(id uint32, p *sk_inet.InetSkEntry) (*model.File, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("file %d: inet socket: %s", id, fmt.Sprintf(format, a...))
	}
	fam := p.GetFamily()
	if fam != unix.AF_INET && fam != unix.AF_INET6 {
		return nil, bad("family %d", fam)
	}
	if p.GetSrcPort() > 0xffff || p.GetDstPort() > 0xffff {
		return nil, bad("port %d or %d", p.GetSrcPort(), p.GetDstPort())
	}
	if p.GetNsId() != 0 {
		return nil, bad("in network namespace %d: network namespaces are not supported yet", p.GetNsId())
	}
	src, err := addrOfWords(p.GetSrcAddr(), fam)
	if err != nil {
		return nil, bad("%v", err)
	}
	dst, err := addrOfWords(p.GetDstAddr(), fam)
	if err != nil {
		return nil, bad("%v", err)
	}
	o := p.GetOpts()
	if o == nil {
		return nil, bad("no options")
	}
	filter, err := sockFilterOfWords(o.GetSoFilter())
	if err != nil {
		return nil, bad("%v", err)
	}
	s := &model.InetSocketState{
		Ino: p.GetIno(), Family: fam, Type: p.GetType(), Proto: p.GetProto(), State: p.GetState(),
		Src: netip.AddrPortFrom(src, uint16(p.GetSrcPort())), Dst: netip.AddrPortFrom(dst, uint16(p.GetDstPort())),
		Backlog: p.GetBacklog(), V6Only: p.GetV6Only(), Shutdown: uint32(p.GetShutdown()), BindDev: o.GetSoBoundDev(),
		Opts: model.SocketOpts{
			SndBuf: o.GetSoSndbuf(), RcvBuf: o.GetSoRcvbuf(),
			SndTimeoSec: o.GetSoSndTmoSec(), SndTimeoUsec: o.GetSoSndTmoUsec(),
			RcvTimeoSec: o.GetSoRcvTmoSec(), RcvTimeoUsec: o.GetSoRcvTmoUsec(),
			PassCred: o.GetSoPasscred(), PassSec: o.GetSoPasssec(),
			Priority: o.GetSoPriority(), RcvLowat: o.GetSoRcvlowat(), Mark: o.GetSoMark(),
			Filter: filter,
		},
		Inet: model.InetOpts{
			ReuseAddr: o.GetReuseaddr(), ReusePort: o.GetSoReuseport(), KeepAlive: o.GetSoKeepalive(),
			Broadcast: o.GetSoBroadcast(), OOBInline: o.GetSoOobinline() != 0,
			LingerOn: o.SoLinger != nil, Linger: o.GetSoLinger(),
			Freebind: p.GetIpOpts().GetFreebind(), Pktinfo: p.GetIpOpts().GetPktinfo(), TOS: p.GetIpOpts().GetTos(), TTL: p.GetIpOpts().GetTtl(),
		},
	}
	if r := p.GetIpOpts().GetRaw(); r != nil || s.Type == unix.SOCK_RAW {
		if s.Type != unix.SOCK_RAW {
			return nil, bad("raw socket options on a socket of type %d", s.Type)
		}
		f := r.GetIcmpvFilter()
		if n := len(f); n != 0 && !(n == 1 && s.Proto == unix.IPPROTO_ICMP && fam == unix.AF_INET ||
			n == 8 && s.Proto == unix.IPPROTO_ICMPV6 && fam == unix.AF_INET6) {
			return nil, bad("an ICMP filter of %d words on a raw socket of protocol %d", n, s.Proto)
		}
		s.Inet.Raw = &model.RawOpts{HdrIncl: r.GetHdrincl(), NoDefrag: r.GetNodefrag(), Checksum: r.GetChecksum(), ICMPFilter: f}
	}
	if t := p.GetTcpOpts(); t != nil {
		s.Inet.NoDelay, s.Inet.Cork = t.GetNodelay(), t.GetCork()
		s.Inet.KeepCnt, s.Inet.KeepIdle, s.Inet.KeepIntvl = t.GetKeepcnt(), t.GetKeepidle(), t.GetKeepintvl()
	} else {
		// Older CRIU images keep them in sk_opts.
		s.Inet.KeepCnt, s.Inet.KeepIdle, s.Inet.KeepIntvl = o.GetTcpKeepcnt(), o.GetTcpKeepidle(), o.GetTcpKeepintvl()
	}
	return &model.File{ID: model.ID(id), Kind: model.InetSocket, Flags: p.GetFlags(), MntID: -1, Inet: s}, nil
}

// writeTCPStreams writes each established connection's stream image.
// A dump may hold thousands of connections and CRIU's format is a file
// for each: two writers share them (the files are independent, and
// making one costs more in the kernel than building it), each building
// every image in one reused buffer, then writing it with one open,
// write and close (no per-file buffers).
func writeTCPStreams(d *images.Dir, t *model.Tree, written func(string)) error {
	kind, err := images.KindOf(TCPStreamImg(0))
	if err != nil {
		return err
	}
	var todo []*model.InetSocketState
	for _, id := range t.FileIDs() {
		s := t.Files[id].Inet
		if s == nil || s.Stream == nil {
			continue
		}
		if written != nil {
			written(TCPStreamImg(s.Ino))
		}
		todo = append(todo, s)
	}
	const writers = 2
	if len(todo) < 64 {
		return writeTCPStreamRange(d, kind, todo)
	}
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		lo, hi := len(todo)*w/writers, len(todo)*(w+1)/writers
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = writeTCPStreamRange(d, kind, todo[lo:hi])
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err // the first image's in order, as one writer would
		}
	}
	return nil
}

func writeTCPStreamRange(d *images.Dir, kind images.Kind, todo []*model.InetSocketState) error {
	var buf bytes.Buffer
	bw := bufio.NewWriterSize(&buf, 64<<10)
	for _, s := range todo {
		st := s.Stream
		name := TCPStreamImg(s.Ino)
		buf.Reset()
		// bw is a bufio.Writer already: the entry writer uses it as is.
		w, err := images.NewEntryWriter(bw, name, kind)
		if err != nil {
			return err
		}
		e := &tcp_stream.TcpStreamEntry{
			InqLen: proto.Uint32(uint32(len(st.InQ))), InqSeq: proto.Uint32(st.InSeq),
			OutqLen: proto.Uint32(uint32(len(st.OutQ))), OutqSeq: proto.Uint32(st.OutSeq),
			OptMask: proto.Uint32(st.OptMask), SndWscale: proto.Uint32(st.SndWscale), MssClamp: proto.Uint32(st.MSSClamp),
			RcvWscale: proto.Uint32(st.RcvWscale), Timestamp: proto.Uint32(st.Timestamp),
			UnsqLen: proto.Uint32(st.Unsent),
		}
		if st.HasWindow {
			e.SndWl1, e.SndWnd, e.MaxWindow = proto.Uint32(st.SndWl1), proto.Uint32(st.SndWnd), proto.Uint32(st.MaxWnd)
			e.RcvWnd, e.RcvWup = proto.Uint32(st.RcvWnd), proto.Uint32(st.RcvWup)
		}
		err = w.Write(e)
		if err == nil {
			err = w.WritePayload(st.InQ)
		}
		if err == nil {
			err = w.WritePayload(st.OutQ)
		}
		if err == nil {
			err = w.Flush()
		}
		if err == nil {
			err = writeWhole(d, name, buf.Bytes())
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// writeWhole creates name in d holding b (in a dump's staging directory,
// straight in the images directory when it is new there: Dir.WriteBulk).
func writeWhole(d *images.Dir, name string, b []byte) error {
	// A dump writes into a fresh directory: no file to replace.
	err := d.WriteBulk(name, b)
	if !errors.Is(err, unix.EEXIST) {
		if err != nil {
			return fmt.Errorf("images: %w", err)
		}
		return nil
	}
	f, err := d.Create(name)
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// readTCPStreams reads the stream of each connected TCP socket: CRIU
// writes one for every TCP socket in a connected state.
func readTCPStreams(d *images.Dir, files map[model.ID]*model.File) error {
	var todo []*model.InetSocketState
	for _, f := range files {
		s := f.Inet
		if s == nil || s.Type != unix.SOCK_STREAM || s.State == 7 || s.State == 10 { // TCP_CLOSE, TCP_LISTEN
			continue
		}
		todo = append(todo, s)
	}
	// Two readers share thousands of images (as two writers made them).
	const readers = 2
	if len(todo) < 64 {
		return readTCPStreamRange(d, todo)
	}
	errs := make([]error, readers)
	var wg sync.WaitGroup
	for w := range readers {
		lo, hi := len(todo)*w/readers, len(todo)*(w+1)/readers
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = readTCPStreamRange(d, todo[lo:hi])
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func readTCPStreamRange(d *images.Dir, todo []*model.InetSocketState) error {
	br := bufio.NewReaderSize(nil, 64<<10)
	for _, s := range todo {
		st, err := readTCPStream(d, TCPStreamImg(s.Ino), br)
		if errors.Is(err, os.ErrNotExist) {
			continue // dumped without --tcp-established: restore refuses it
		}
		if err != nil {
			return err
		}
		s.Stream = st
	}
	return nil
}

// readTCPStream reads the image name through br, a buffer reused for
// every connection (a dump may hold thousands). A missing image is
// os.ErrNotExist.
func readTCPStream(d *images.Dir, name string, br *bufio.Reader) (*model.TCPStream, error) {
	f, err := d.OpenRead(name)
	if err != nil {
		return nil, imgErr(name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, imgErr(name, err)
	}
	br.Reset(f)
	// br is a bufio.Reader already: the entry reader reads through it.
	r, err := images.NewEntryReader(br, name, fi.Size())
	if err != nil {
		return nil, imgErr(name, err)
	}
	var e tcp_stream.TcpStreamEntry
	if err := r.Next(&e); err != nil {
		return nil, imgErr(name, err)
	}
	if uint64(e.GetInqLen())+uint64(e.GetOutqLen()) > maxSkQueue || e.GetUnsqLen() > e.GetOutqLen() {
		return nil, fmt.Errorf("%s: queues of %d and %d bytes, %d unsent", name, e.GetInqLen(), e.GetOutqLen(), e.GetUnsqLen())
	}
	st := &model.TCPStream{
		InSeq: e.GetInqSeq(), OutSeq: e.GetOutqSeq(), Unsent: e.GetUnsqLen(), OptMask: e.GetOptMask(),
		SndWscale: e.GetSndWscale(), RcvWscale: e.GetRcvWscale(), MSSClamp: e.GetMssClamp(), Timestamp: e.GetTimestamp(),
		HasWindow: e.RcvWup != nil, SndWl1: e.GetSndWl1(), SndWnd: e.GetSndWnd(), MaxWnd: e.GetMaxWindow(),
		RcvWnd: e.GetRcvWnd(), RcvWup: e.GetRcvWup(),
	}
	if st.SndWscale > 14 || st.RcvWscale > 14 {
		return nil, fmt.Errorf("%s: window scale %d/%d", name, st.SndWscale, st.RcvWscale)
	}
	for _, q := range []*[]byte{&st.InQ, &st.OutQ} {
		n := e.GetInqLen()
		if q == &st.OutQ {
			n = e.GetOutqLen()
		}
		*q = make([]byte, 0, min(n, 1<<20))
		for left := int(n); left > 0; {
			step := min(left, 1<<20)
			*q = append(*q, make([]byte, step)...)
			if err := r.ReadPayload((*q)[len(*q)-step:]); err != nil {
				return nil, imgErr(name, err)
			}
			left -= step
		}
	}
	var extra tcp_stream.TcpStreamEntry
	if err := r.Next(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: more than one stream", name)
	}
	return st, nil
}
