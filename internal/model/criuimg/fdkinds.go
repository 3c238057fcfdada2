package criuimg

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventpoll"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fh"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fifo"
	file_lock "github.com/checkpoint-restore/go-criu/v8/crit/images/file-lock"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fsnotify"
	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pidfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pipe"
	pipe_data "github.com/checkpoint-restore/go-criu/v8/crit/images/pipe-data"
	remap_file_path "github.com/checkpoint-restore/go-criu/v8/crit/images/remap-file-path"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/signalfd"
	sk_opts "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	sk_packet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-packet"
	sk_unix "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
	criu_timeval "github.com/checkpoint-restore/go-criu/v8/crit/images/time"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timerfd"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
)

// The files.img entries of the fd kinds other than regular files, both
// ways, and pipes-data.img.

// PipesDataImg holds the bytes queued in each pipe: an entry, then its
// bytes.
const PipesDataImg = "pipes-data.img"

// maxPipeData bounds one pipe's saved bytes (pipes are at most 1 GiB
// even with CAP_SYS_RESOURCE; pipe-max-size is 1 MiB here).
const maxPipeData = 1 << 30

// epollTargetsMax bounds the targets of one epoll instance in an image
// (max_user_watches is around 1/25 of low memory in pages; a bound keeps
// a hostile image from asking for more).
const epollTargetsMax = 1 << 22

// fdType is the files.img and fdinfo type of f: a Path file with pipe
// state is a FIFO.
func fdType(f *model.File) fdinfo.FdTypes {
	if f.Kind == model.Path && f.Pipe != nil {
		return fdinfo.FdTypes_FIFO
	}
	switch f.Kind {
	case model.Pipe:
		return fdinfo.FdTypes_PIPE
	case model.EventFD:
		return fdinfo.FdTypes_EVENTFD
	case model.SignalFD:
		return fdinfo.FdTypes_SIGNALFD
	case model.TimerFD:
		return fdinfo.FdTypes_TIMERFD
	case model.Epoll:
		return fdinfo.FdTypes_EVENTPOLL
	case model.UnixSocket:
		return fdinfo.FdTypes_UNIXSK
	case model.NetlinkSocket:
		return fdinfo.FdTypes_NETLINKSK
	case model.InetSocket:
		return fdinfo.FdTypes_INETSK
	case model.Inotify:
		return fdinfo.FdTypes_INOTIFY
	case model.Memfd:
		return fdinfo.FdTypes_MEMFD
	case model.Tty:
		return fdinfo.FdTypes_TTY
	case model.Pidfd:
		return fdinfo.FdTypes_PIDFD
	case model.Namespace:
		return fdinfo.FdTypes_NS
	case model.Fanotify:
		return fdinfo.FdTypes_FANOTIFY
	case model.Tun:
		return fdinfo.FdTypes_TUNF
	}
	return fdinfo.FdTypes_REG
}

func noFown() *fown.FownEntry {
	return &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)}
}

// kindEntry is the files.img entry of a file of a kind other than Path.
func kindEntry(f *model.File) (*fdinfo.FileEntry, error) {
	id := proto.Uint32(uint32(f.ID))
	e := &fdinfo.FileEntry{Type: fdType(f).Enum(), Id: id}
	missing := func() (*fdinfo.FileEntry, error) {
		return nil, fmt.Errorf("file %d: no state for its kind", f.ID)
	}
	switch f.Kind {
	case model.Pipe:
		if f.Pipe == nil {
			return missing()
		}
		e.Pipe = &pipe.PipeEntry{Id: id, PipeId: proto.Uint32(uint32(f.Pipe.ID)), Flags: proto.Uint32(f.Flags), Fown: noFown()}
	case model.EventFD:
		if f.EventFD == nil {
			return missing()
		}
		fl := f.Flags
		if f.EventFD.Semaphore {
			// EFD_SEMAPHORE is bit 0, never set in an eventfd's
			// f_flags (it is O_RDWR), as CRIU stores it.
			fl |= unix.EFD_SEMAPHORE
		}
		e.Efd = &eventfd.EventfdFileEntry{Id: id, Flags: proto.Uint32(fl), Fown: noFown(), Counter: proto.Uint64(f.EventFD.Counter)}
	case model.SignalFD:
		if f.SignalFD == nil {
			return missing()
		}
		e.Sgfd = &signalfd.SignalfdEntry{Id: id, Flags: proto.Uint32(f.Flags), Fown: noFown(), Sigmask: proto.Uint64(f.SignalFD.Mask)}
	case model.TimerFD:
		t := f.TimerFD
		if t == nil {
			return missing()
		}
		e.Tfd = &timerfd.TimerfdEntry{
			Id: id, Flags: proto.Uint32(f.Flags), Fown: noFown(),
			Clockid: proto.Uint32(uint32(t.Clock)), Ticks: proto.Uint64(t.Ticks), SettimeFlags: proto.Uint32(t.SettimeFlags),
			Vsec: proto.Uint64(t.ValueSec), Vnsec: proto.Uint64(t.ValueNsec), Isec: proto.Uint64(t.IntervalSec), Insec: proto.Uint64(t.IntervalNsec),
		}
	case model.Epoll:
		if f.Epoll == nil {
			return missing()
		}
		ep := &eventpoll.EventpollFileEntry{Id: id, Flags: proto.Uint32(f.Flags), Fown: noFown()}
		for _, t := range f.Epoll.Targets {
			ep.Tfd = append(ep.Tfd, &eventpoll.EventpollTfdEntry{
				Id: id, Tfd: proto.Uint32(uint32(t.FD)), Events: proto.Uint32(t.Events), Data: proto.Uint64(t.Data),
			})
		}
		e.Epfd = ep
	case model.UnixSocket:
		u := f.Unix
		if u == nil {
			return missing()
		}
		o := &u.Opts
		e.Usk = &sk_unix.UnixSkEntry{
			Id: id, Ino: proto.Uint32(u.Ino), Type: proto.Uint32(u.Type), State: proto.Uint32(u.State),
			Flags: proto.Uint32(f.Flags), Uflags: proto.Uint32(0), Backlog: proto.Uint32(u.Backlog), Peer: proto.Uint32(u.Peer),
			Fown: noFown(),
			Opts: &sk_opts.SkOptsEntry{
				SoSndbuf: proto.Uint32(o.SndBuf), SoRcvbuf: proto.Uint32(o.RcvBuf),
				SoSndTmoSec: proto.Uint64(o.SndTimeoSec), SoSndTmoUsec: proto.Uint64(o.SndTimeoUsec),
				SoRcvTmoSec: proto.Uint64(o.RcvTimeoSec), SoRcvTmoUsec: proto.Uint64(o.RcvTimeoUsec),
				SoPasscred: proto.Bool(o.PassCred), SoPasssec: proto.Bool(o.PassSec),
				SoPriority: proto.Uint32(o.Priority), SoRcvlowat: proto.Uint32(o.RcvLowat), SoMark: proto.Uint32(o.Mark),
				SoKeepalive: proto.Bool(u.KeepAlive), Reuseaddr: proto.Bool(u.ReuseAddr),
				SoReuseport: proto.Bool(u.ReusePort), SoBroadcast: proto.Bool(u.Broadcast),
			},
			Name:     append([]byte{}, u.Name...),
			Shutdown: sk_opts.SkShutdown(u.Shutdown & 3).Enum(),
		}
		if u.OOBInline {
			e.Usk.Opts.SoOobinline = proto.Uint32(1)
		}
		if u.LingerOn {
			e.Usk.Opts.SoLinger = proto.Uint32(u.Linger)
		}
		if u.Deleted {
			e.Usk.Deleted = proto.Bool(true)
		}
		if u.FileMode != 0 {
			e.Usk.FilePerms = &sk_unix.FilePermsEntry{Mode: proto.Uint32(u.FileMode), Uid: proto.Uint32(0), Gid: proto.Uint32(0)}
		}
	case model.InetSocket:
		if f.Inet == nil {
			return missing()
		}
		e.Isk = inetEntry(f, id)
	case model.Inotify:
		if f.Inotify == nil {
			return missing()
		}
		ify := &fsnotify.InotifyFileEntry{Id: id, Flags: proto.Uint32(f.Flags), Fown: noFown()}
		for _, w := range f.Inotify.Watches {
			h := &fh.FhEntry{Bytes: proto.Uint32(uint32(len(w.Handle))), Type: proto.Uint32(w.HandleType), Path: proto.String(w.Path)}
			for i := 0; i < len(w.Handle); i += 8 {
				var b [8]byte
				copy(b[:], w.Handle[i:])
				h.Handle = append(h.Handle, binary.LittleEndian.Uint64(b[:]))
			}
			ify.Wd = append(ify.Wd, &fsnotify.InotifyWdEntry{
				Id: id, IIno: proto.Uint64(w.Ino), Mask: proto.Uint32(w.Mask), IgnoredMask: proto.Uint32(w.IgnoredMask),
				SDev: proto.Uint32(w.Dev), Wd: proto.Uint32(w.Wd), FHandle: h,
			})
		}
		e.Ify = ify
	case model.NetlinkSocket:
		if err := netlinkEntry(f, e); err != nil {
			return nil, err
		}
	case model.Fanotify:
		st := f.Fanotify
		if st == nil {
			return missing()
		}
		fe := &fsnotify.FanotifyFileEntry{Id: id, Flags: proto.Uint32(f.Flags), Fown: noFown(), Faflags: proto.Uint32(st.Flags), Evflags: proto.Uint32(st.EventFlags)}
		for _, m := range st.Marks {
			me := &fsnotify.FanotifyMarkEntry{Id: id, Type: fsnotify.MarkType_INODE.Enum(), Mflags: proto.Uint32(m.Mflags),
				Mask: proto.Uint32(m.Mask), IgnoredMask: proto.Uint32(m.IgnoredMask), SDev: proto.Uint32(m.Dev)}
			if m.Mount {
				me.Type = fsnotify.MarkType_MOUNT.Enum()
				me.Me = &fsnotify.FanotifyMountMarkEntry{MntId: proto.Uint32(uint32(m.MntID)), Path: proto.String(m.Path)}
			} else {
				me.Ie = &fsnotify.FanotifyInodeMarkEntry{IIno: proto.Uint64(m.Ino), FHandle: fhEntry(m.HandleType, m.Handle, m.Path)}
			}
			fe.Mark = append(fe.Mark, me)
		}
		e.Ffy = fe
	case model.Pidfd:
		p := f.Pidfd
		if p == nil {
			return missing()
		}
		// CRIU's ino is 32 bits: it only groups the pidfds of one gone
		// process, which the low bits of the pidfs inode still do.
		e.Pidfd = &pidfd.PidfdEntry{Id: id, Ino: proto.Uint32(uint32(p.Ino)), Flags: proto.Uint32(f.Flags), Nspid: proto.Int32(int32(p.Pid)), Fown: noFown()}
	default:
		return nil, fmt.Errorf("file %d: kind %d has no image entry", f.ID, f.Kind)
	}
	return e, nil
}

// SkQueuesImg holds the messages queued on sockets: an entry naming the
// socket (its file id) and the length, then the bytes.
const SkQueuesImg = "sk-queues.img"

// writeSkQueues writes every unix socket's queue (no image when all are
// empty).
func writeSkQueues(d *images.Dir, t *model.Tree, written func(string)) error {
	var w *images.EntryWriter
	for _, id := range t.FileIDs() {
		u := t.Files[id].Unix
		if u == nil {
			continue
		}
		for _, m := range u.Queue {
			if w == nil {
				if written != nil {
					written(SkQueuesImg)
				}
				var err error
				if w, err = d.CreateImage(SkQueuesImg); err != nil {
					return err
				}
			}
			if err := w.Write(&sk_packet.SkPacketEntry{IdFor: proto.Uint32(uint32(id)), Length: proto.Uint32(uint32(len(m)))}); err != nil {
				w.Close()
				return err
			}
			if err := w.WritePayload(m); err != nil {
				w.Close()
				return err
			}
		}
	}
	if w == nil {
		return nil
	}
	return w.Close()
}

// checkUnixPeers refuses a tree in which a connected unix socket's peer is
// not a socket of the tree.
func checkUnixPeers(t *model.Tree) error {
	inos := map[uint32]bool{}
	for _, k := range t.Tasks {
		for _, fd := range k.FDs {
			if f := t.Files[fd.File]; f != nil && f.Unix != nil {
				inos[f.Unix.Ino] = true
			}
		}
	}
	for _, k := range t.Tasks {
		for _, fd := range k.FDs {
			if f := t.Files[fd.File]; f != nil && f.Unix != nil && f.Unix.Peer != 0 && !inos[f.Unix.Peer] && !f.Unix.External {
				return fmt.Errorf("task %d fd %d: unix socket %d: its peer (socket %d) is not in the dump (a peer outside the tree, --ext-unix-sk, is not supported yet)", k.Pid, fd.Num, f.Unix.Ino, f.Unix.Peer)
			}
		}
	}
	return nil
}

// FifoDataImg holds the bytes queued in each named FIFO, as
// pipes-data.img does for pipes.
const FifoDataImg = "fifo-data.img"

// writePipesData writes every pipe's queued bytes once, in pipes-data.img,
// and every FIFO's in fifo-data.img (no image when there is nothing to
// write).
func writePipesData(d *images.Dir, t *model.Tree, written func(string)) error {
	for _, img := range []struct {
		name string
		fifo bool
	}{{PipesDataImg, false}, {FifoDataImg, true}} {
		done := map[uint64]bool{}
		var pipes []*model.PipeState
		for _, id := range t.FileIDs() {
			f := t.Files[id]
			p := f.Pipe
			if p == nil || done[p.ID] || (f.Kind == model.Path) != img.fifo {
				continue
			}
			done[p.ID] = true
			if len(p.Data) > 0 || p.Size != 0 {
				pipes = append(pipes, p)
			}
		}
		if len(pipes) == 0 {
			continue
		}
		if err := writeData(d, img.name, pipes, written); err != nil {
			return err
		}
	}
	return nil
}

func writeData(d *images.Dir, name string, pipes []*model.PipeState, written func(string)) error {
	if written != nil {
		written(name)
	}
	w, err := d.CreateImage(name)
	if err != nil {
		return err
	}
	for _, p := range pipes {
		e := &pipe_data.PipeDataEntry{PipeId: proto.Uint32(uint32(p.ID)), Bytes: proto.Uint32(uint32(len(p.Data)))}
		if p.Size != 0 {
			e.Size = proto.Uint32(p.Size)
		}
		if err := w.Write(e); err != nil {
			w.Close()
			return err
		}
		if err := w.WritePayload(p.Data); err != nil {
			w.Close()
			return err
		}
	}
	return w.Close()
}

// fifoEntries are the files.img entries of a named FIFO: its REG entry
// (under a fresh id, regID) and the FIFO entry naming it, as CRIU writes.
func fifoEntries(f *model.File, regID uint32) (*fdinfo.FileEntry, *fdinfo.FileEntry) {
	reg := fileEntry(f)
	reg.Id, reg.Reg.Id = proto.Uint32(regID), proto.Uint32(regID)
	return reg, &fdinfo.FileEntry{
		Type: fdinfo.FdTypes_FIFO.Enum(), Id: proto.Uint32(uint32(f.ID)),
		Fifo: &fifo.FifoEntry{Id: proto.Uint32(uint32(f.ID)), PipeId: proto.Uint32(uint32(f.Pipe.ID)), RegfId: proto.Uint32(regID)},
	}
}

// resolveFIFOs turns each FIFO entry into a Path file with the path,
// flags and offset of the REG entry it names, and pipe state.
func resolveFIFOs(fifos []*fdinfo.FileEntry, files map[model.ID]*model.File) error {
	for _, e := range fifos {
		id := model.ID(e.GetId())
		ff := e.GetFifo()
		if ff == nil {
			return fmt.Errorf("file %d: FIFO without its fifo entry", id)
		}
		reg := files[model.ID(ff.GetRegfId())]
		if reg == nil || reg.Kind != model.Path || reg.Pipe != nil {
			return fmt.Errorf("file %d: FIFO names file %d, not a regular entry", id, ff.GetRegfId())
		}
		f := *reg
		f.ID = id
		f.Pipe = &model.PipeState{ID: uint64(ff.GetPipeId())}
		files[id] = &f
	}
	return nil
}

// readKind reads a files.img entry of a kind other than REG; known is
// false for a kind godwit does not restore (refused where an fd names it).
func readKind(e *fdinfo.FileEntry) (f *model.File, known bool, err error) {
	id := model.ID(e.GetId())
	bad := func(what string) (*model.File, bool, error) {
		return nil, true, fmt.Errorf("file %d: %v without its %s entry", id, e.GetType(), what)
	}
	f = &model.File{ID: id, MntID: -1}
	switch e.GetType() {
	case fdinfo.FdTypes_PIPE:
		p := e.GetPipe()
		if p == nil {
			return bad("pipe")
		}
		f.Kind, f.Flags = model.Pipe, p.GetFlags()
		if m := f.Flags & unix.O_ACCMODE; m != unix.O_RDONLY && m != unix.O_WRONLY {
			return nil, true, fmt.Errorf("file %d: pipe end with access mode %#o", id, m)
		}
		f.Pipe = &model.PipeState{ID: uint64(p.GetPipeId())}
	case fdinfo.FdTypes_EVENTFD:
		p := e.GetEfd()
		if p == nil {
			return bad("eventfd")
		}
		f.Kind, f.Flags = model.EventFD, p.GetFlags()&^unix.EFD_SEMAPHORE
		if p.GetCounter() == ^uint64(0) {
			return nil, true, fmt.Errorf("file %d: eventfd counter %#x over its maximum", id, p.GetCounter())
		}
		f.EventFD = &model.EventFDState{Counter: p.GetCounter(), Semaphore: p.GetFlags()&unix.EFD_SEMAPHORE != 0}
	case fdinfo.FdTypes_SIGNALFD:
		p := e.GetSgfd()
		if p == nil {
			return bad("signalfd")
		}
		f.Kind, f.Flags = model.SignalFD, p.GetFlags()
		f.SignalFD = &model.SignalFDState{Mask: p.GetSigmask()}
	case fdinfo.FdTypes_TIMERFD:
		p := e.GetTfd()
		if p == nil {
			return bad("timerfd")
		}
		f.Kind, f.Flags = model.TimerFD, p.GetFlags()
		t := &model.TimerFDState{
			Clock: int32(p.GetClockid()), Ticks: p.GetTicks(), SettimeFlags: p.GetSettimeFlags(),
			ValueSec: p.GetVsec(), ValueNsec: p.GetVnsec(), IntervalSec: p.GetIsec(), IntervalNsec: p.GetInsec(),
		}
		if t.ValueNsec >= 1e9 || t.IntervalNsec >= 1e9 || t.ValueSec > 1<<62 || t.IntervalSec > 1<<62 {
			return nil, true, fmt.Errorf("file %d: timerfd times out of range", id)
		}
		f.TimerFD = t
	case fdinfo.FdTypes_NETLINKSK:
		if err := readNetlink(e, f); err != nil {
			return nil, true, err
		}
	case fdinfo.FdTypes_UNIXSK:
		p := e.GetUsk()
		if p == nil {
			return bad("unix socket")
		}
		if p.GetUflags() != 0 && p.GetUflags() != uskExtern || p.NameDir != nil {
			return nil, true, fmt.Errorf("file %d: unix socket with flags %#x or a relative name: not supported", id, p.GetUflags())
		}
		o := p.GetOpts()
		if o == nil {
			return bad("socket options")
		}
		if n := len(o.GetSoFilter()); n > 0 {
			return nil, true, fmt.Errorf("file %d: unix socket with a socket filter of %d instructions: not supported yet", id, n)
		}
		f.Kind, f.Flags = model.UnixSocket, p.GetFlags()
		u := &model.UnixSocketState{
			Ino: p.GetIno(), Type: p.GetType(), State: p.GetState(), Backlog: p.GetBacklog(), Peer: p.GetPeer(),
			Shutdown: uint32(p.GetShutdown()),
			Opts: model.SocketOpts{
				SndBuf: o.GetSoSndbuf(), RcvBuf: o.GetSoRcvbuf(),
				SndTimeoSec: o.GetSoSndTmoSec(), SndTimeoUsec: o.GetSoSndTmoUsec(),
				RcvTimeoSec: o.GetSoRcvTmoSec(), RcvTimeoUsec: o.GetSoRcvTmoUsec(),
				PassCred: o.GetSoPasscred(), PassSec: o.GetSoPasssec(),
				Priority: o.GetSoPriority(), RcvLowat: o.GetSoRcvlowat(), Mark: o.GetSoMark(),
			},
			ReuseAddr: o.GetReuseaddr(), ReusePort: o.GetSoReuseport(), Broadcast: o.GetSoBroadcast(),
			KeepAlive: o.GetSoKeepalive(), OOBInline: o.GetSoOobinline() != 0,
			LingerOn: o.SoLinger != nil, Linger: o.GetSoLinger(),
		}
		if u.Linger > 1<<30 {
			return nil, true, fmt.Errorf("file %d: unix socket SO_LINGER of %d seconds out of range", id, u.Linger)
		}
		if len(p.GetName()) > 0 {
			u.Name = append([]byte{}, p.GetName()...)
			if len(u.Name) > 108 {
				return nil, true, fmt.Errorf("file %d: unix socket name of %d bytes", id, len(u.Name))
			}
			// CRIU keeps a path name as the kernel reports it, with
			// its terminating NUL; the path ends there (an abstract
			// name, which starts with NUL, keeps every byte).
			if i := bytes.IndexByte(u.Name, 0); i > 0 {
				u.Name = u.Name[:i]
			}
		}
		if fp := p.GetFilePerms(); fp != nil {
			u.FileMode = fp.GetMode()
		}
		u.Deleted = p.GetDeleted()
		if u.Deleted && (len(u.Name) == 0 || u.Name[0] != '/') {
			return nil, true, fmt.Errorf("file %d: unix socket marked deleted without a path name", id)
		}
		if p.GetUflags() == uskExtern {
			u.External = true // an outside peer's entry (resolveExternPeers)
		}
		if u.Opts.SndTimeoUsec >= 1e6 || u.Opts.RcvTimeoUsec >= 1e6 || u.Opts.SndTimeoSec > 1<<62 || u.Opts.RcvTimeoSec > 1<<62 {
			return nil, true, fmt.Errorf("file %d: socket timeouts out of range", id)
		}
		f.Unix = u
	case fdinfo.FdTypes_INETSK:
		if e.GetIsk() == nil {
			return bad("inet socket")
		}
		f, err := readInet(uint32(id), e.GetIsk())
		return f, true, err
	case fdinfo.FdTypes_INOTIFY:
		p := e.GetIfy()
		if p == nil {
			return bad("inotify")
		}
		if len(p.GetWd()) > epollTargetsMax {
			return nil, true, fmt.Errorf("file %d: %d inotify watches", id, len(p.GetWd()))
		}
		f.Kind, f.Flags = model.Inotify, p.GetFlags()
		st := &model.InotifyState{}
		for _, w := range p.GetWd() {
			h := w.GetFHandle()
			n := h.GetBytes()
			if h == nil || n > 128 || uint64(len(h.GetHandle()))*8 < uint64(n) || !strings.HasPrefix(h.GetPath(), "/") {
				return nil, true, fmt.Errorf("file %d: inotify watch %d: bad handle, or no path (restoring by handle alone is not supported)", id, w.GetWd())
			}
			var hb []byte
			for _, x := range h.GetHandle() {
				hb = binary.LittleEndian.AppendUint64(hb, x)
			}
			st.Watches = append(st.Watches, model.InotifyWatch{
				Wd: w.GetWd(), Mask: w.GetMask(), IgnoredMask: w.GetIgnoredMask(), Ino: w.GetIIno(), Dev: w.GetSDev(),
				HandleType: h.GetType(), Handle: hb[:n], Path: h.GetPath(),
			})
		}
		// CRIU writes the watches as fdinfo lists them, newest first;
		// the model keeps them by rising wd.
		slices.SortFunc(st.Watches, func(a, b model.InotifyWatch) int { return cmp.Compare(a.Wd, b.Wd) })
		for i := 1; i < len(st.Watches); i++ {
			if st.Watches[i].Wd == st.Watches[i-1].Wd {
				return nil, true, fmt.Errorf("file %d: inotify watch %d twice", id, st.Watches[i].Wd)
			}
		}
		f.Inotify = st
	case fdinfo.FdTypes_FANOTIFY:
		p := e.GetFfy()
		if p == nil {
			return bad("fanotify")
		}
		if len(p.GetMark()) > epollTargetsMax {
			return nil, true, fmt.Errorf("file %d: %d fanotify marks", id, len(p.GetMark()))
		}
		f.Kind, f.Flags = model.Fanotify, p.GetFlags()
		st := &model.FanotifyState{Flags: p.GetFaflags(), EventFlags: p.GetEvflags()}
		for i, m := range p.GetMark() {
			fm := model.FanotifyMark{Mflags: m.GetMflags(), Mask: m.GetMask(), IgnoredMask: m.GetIgnoredMask(), Dev: m.GetSDev()}
			switch {
			case m.GetType() == fsnotify.MarkType_MOUNT && m.GetMe() != nil:
				fm.Mount, fm.MntID, fm.Path = true, int(m.GetMe().GetMntId()&0x7fffffff), m.GetMe().GetPath()
			case m.GetType() == fsnotify.MarkType_INODE && m.GetIe() != nil:
				ht, hb, path, err := fhOf(m.GetIe().GetFHandle())
				if err != nil {
					return nil, true, fmt.Errorf("file %d: fanotify mark %d: %w", id, i, err)
				}
				fm.Ino, fm.HandleType, fm.Handle, fm.Path = m.GetIe().GetIIno(), ht, hb, path
			default:
				return nil, true, fmt.Errorf("file %d: fanotify mark %d of type %v without its entry", id, i, m.GetType())
			}
			if !strings.HasPrefix(fm.Path, "/") {
				return nil, true, fmt.Errorf("file %d: fanotify mark %d: no path (restoring by handle or mount id alone is not supported)", id, i)
			}
			st.Marks = append(st.Marks, fm)
		}
		f.Fanotify = st
	case fdinfo.FdTypes_NS:
		p := e.GetNsf()
		if p == nil {
			return bad("namespace")
		}
		link := nsLink(p.GetNsCflag())
		if link == "" {
			return nil, true, fmt.Errorf("file %d: namespace fd of type %#x", id, p.GetNsCflag())
		}
		f.Kind, f.Flags = model.Namespace, p.GetFlags()
		f.NS = &model.NamespaceState{Link: link}
	case fdinfo.FdTypes_PIDFD:
		p := e.GetPidfd()
		if p == nil {
			return bad("pidfd")
		}
		if p.GetNspid() < -1 || p.GetNspid() == 0 || p.GetNspid() > maxPid {
			return nil, true, fmt.Errorf("file %d: pidfd of pid %d", id, p.GetNspid())
		}
		if p.GetFlags()&^uint32(unix.O_RDWR|unix.O_NONBLOCK|unix.O_EXCL|unix.O_LARGEFILE) != 0 {
			return nil, true, fmt.Errorf("file %d: pidfd flags %#o", id, p.GetFlags())
		}
		f.Kind, f.Flags = model.Pidfd, p.GetFlags()
		f.Pidfd = &model.PidfdState{Pid: int(p.GetNspid()), Ino: uint64(p.GetIno())}
	case fdinfo.FdTypes_EVENTPOLL:
		p := e.GetEpfd()
		if p == nil {
			return bad("eventpoll")
		}
		if len(p.GetTfd()) > epollTargetsMax {
			return nil, true, fmt.Errorf("file %d: %d epoll targets", id, len(p.GetTfd()))
		}
		f.Kind, f.Flags = model.Epoll, p.GetFlags()
		st := &model.EpollState{}
		for _, t := range p.GetTfd() {
			if t.GetTfd() > 1<<20 {
				return nil, true, fmt.Errorf("file %d: epoll target fd %d", id, t.GetTfd())
			}
			st.Targets = append(st.Targets, model.EpollTarget{FD: int(t.GetTfd()), Events: t.GetEvents(), Data: t.GetData()})
		}
		f.Epoll = st
	default:
		return nil, false, nil
	}
	return f, true, nil
}

// readPipesData attaches each pipe's and FIFO's size and bytes to its
// ends.
func readPipesData(d *images.Dir, files map[model.ID]*model.File) error {
	if err := readData(d, PipesDataImg, files, false); err != nil {
		return err
	}
	return readData(d, FifoDataImg, files, true)
}

func readData(d *images.Dir, name string, files map[model.ID]*model.File, fifos bool) error {
	ends := map[uint64][]*model.File{}
	for _, f := range files {
		if f.Pipe != nil && (f.Kind == model.Path) == fifos {
			ends[f.Pipe.ID] = append(ends[f.Pipe.ID], f)
		}
	}
	if len(ends) == 0 || !d.Exists(name) {
		return nil
	}
	r, err := d.OpenImage(name)
	if err != nil {
		return imgErr(name, err)
	}
	defer r.Close()
	seen := map[uint64]bool{}
	for {
		var e pipe_data.PipeDataEntry
		if err := r.Next(&e); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return imgErr(name, err)
		}
		id, n := uint64(e.GetPipeId()), e.GetBytes()
		if seen[id] || n > maxPipeData || e.GetSize() > maxPipeData || (e.Size != nil && n > e.GetSize()) {
			return fmt.Errorf("%s: pipe %d: duplicate, or %d bytes in a pipe of %d", name, id, n, e.GetSize())
		}
		seen[id] = true
		// In steps, so that a lying count costs only what the image holds.
		var data []byte
		for left := int(n); left > 0; {
			step := min(left, 1<<20)
			data = append(data, make([]byte, step)...)
			if err := r.ReadPayload(data[len(data)-step:]); err != nil {
				return imgErr(name, err)
			}
			left -= step
		}
		for _, f := range ends[id] {
			f.Pipe.Size, f.Pipe.Data = e.GetSize(), data
		}
	}
}

// maxSkQueue bounds the bytes of one socket's queue in an image.
const maxSkQueue = 1 << 30

// readSkQueues attaches each queued message to its socket.
func readSkQueues(d *images.Dir, files map[model.ID]*model.File) error {
	if !d.Exists(SkQueuesImg) {
		return nil
	}
	r, err := d.OpenImage(SkQueuesImg)
	if err != nil {
		return imgErr(SkQueuesImg, err)
	}
	defer r.Close()
	total := map[model.ID]int{}
	for {
		var e sk_packet.SkPacketEntry
		if err := r.Next(&e); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return imgErr(SkQueuesImg, err)
		}
		id := model.ID(e.GetIdFor())
		f := files[id]
		if f == nil || f.Unix == nil {
			return fmt.Errorf("%s: queue of file %d, not a unix socket", SkQueuesImg, id)
		}
		if len(e.GetScm()) > 0 {
			return fmt.Errorf("%s: socket %d: queued control messages are not supported", SkQueuesImg, id)
		}
		n := int(e.GetLength())
		if total[id] += n; total[id] > maxSkQueue {
			return fmt.Errorf("%s: socket %d: over %d bytes queued", SkQueuesImg, id, maxSkQueue)
		}
		var data []byte
		for left := n; left > 0; {
			step := min(left, 1<<20)
			data = append(data, make([]byte, step)...)
			if err := r.ReadPayload(data[len(data)-step:]); err != nil {
				return imgErr(SkQueuesImg, err)
			}
			left -= step
		}
		if data == nil {
			data = []byte{}
		}
		f.Unix.Queue = append(f.Unix.Queue, data)
	}
}

// RemapFpathImg maps files restored from something other than their path
// (CRIU's remaps); godwit writes the GHOST ones: deleted files.
const RemapFpathImg = "remap-fpath.img"

// GhostFileImg holds a deleted file's attributes and contents.
func GhostFileImg(id uint32) string { return fmt.Sprintf("ghost-file-%x.img", id) }

// maxGhost bounds a deleted file's contents in an image.
const maxGhost = 1 << 32

// writeGhosts writes the REG entries' remaps and one ghost-file image per
// deleted inode (named by the id of its first file).
// A file --link-remap linked back is a LINKED remap to the REG entry of
// its link (linkIDs).
func writeGhosts(d *images.Dir, t *model.Tree, linkIDs map[*model.GhostState]uint32, written func(string)) error {
	var remaps []*remap_file_path.RemapFilePathEntry
	ghostID := map[*model.GhostState]uint32{}
	for _, id := range t.FileIDs() {
		f := t.Files[id]
		if f.Kind != model.Ghost {
			continue
		}
		g := f.Ghost
		if lid, ok := linkIDs[g]; ok {
			remaps = append(remaps, &remap_file_path.RemapFilePathEntry{
				OrigId: proto.Uint32(uint32(id)), RemapId: proto.Uint32(lid), RemapType: remap_file_path.RemapType_LINKED.Enum(),
			})
			continue
		}
		gid, ok := ghostID[g]
		if !ok {
			gid = uint32(id)
			ghostID[g] = gid
			if err := writeGhost(d, gid, g, written); err != nil {
				return err
			}
		}
		remaps = append(remaps, &remap_file_path.RemapFilePathEntry{
			OrigId: proto.Uint32(uint32(id)), RemapId: proto.Uint32(gid), RemapType: remap_file_path.RemapType_GHOST.Enum(),
		})
	}
	if len(remaps) == 0 {
		return nil
	}
	if written != nil {
		written(RemapFpathImg)
	}
	return images.Write(d, RemapFpathImg, remaps...)
}

func timeval(ts unix.Timespec) *criu_timeval.Timeval {
	return &criu_timeval.Timeval{TvSec: proto.Uint64(uint64(ts.Sec)), TvUsec: proto.Uint64(uint64(ts.Nsec / 1000))}
}

func writeGhost(d *images.Dir, id uint32, g *model.GhostState, written func(string)) error {
	name := GhostFileImg(id)
	if written != nil {
		written(name)
	}
	w, err := d.CreateImage(name)
	if err != nil {
		return err
	}
	e := &ghost_file.GhostFileEntry{
		Uid: proto.Uint32(g.UID), Gid: proto.Uint32(g.GID), Mode: proto.Uint32(g.Mode),
		Dev: proto.Uint32(uint32(unix.Major(g.Dev)<<20 | unix.Minor(g.Dev))), Ino: proto.Uint64(g.Ino),
		Atim: timeval(g.Atime), Mtim: timeval(g.Mtime), Chunks: proto.Bool(g.Holes), Size: proto.Uint64(g.Size),
	}
	if err := w.Write(e); err != nil {
		w.Close()
		return err
	}
	if !g.Holes {
		if uint64(len(g.Data)) != g.Size {
			w.Close()
			return fmt.Errorf("%s: %d bytes saved of %d", name, len(g.Data), g.Size)
		}
		if err := w.WritePayload(g.Data); err != nil {
			w.Close()
			return err
		}
		return w.Close()
	}
	// CRIU's layout of a file with holes: each chunk's entry, then its
	// bytes.
	data := g.Data
	for _, c := range g.Chunks {
		if uint64(len(data)) < c.Len {
			w.Close()
			return fmt.Errorf("%s: chunk %d+%d: only %d bytes saved", name, c.Off, c.Len, len(data))
		}
		if err := w.Write(&ghost_file.GhostChunkEntry{Off: proto.Uint64(c.Off), Len: proto.Uint64(c.Len)}); err != nil {
			w.Close()
			return err
		}
		if err := w.WritePayload(data[:c.Len]); err != nil {
			w.Close()
			return err
		}
		data = data[c.Len:]
	}
	return w.Close()
}

// readGhosts makes Ghost files of the REG entries remap-fpath.img maps to
// ghost files; any other remap is refused (restoring such a file by its
// path would restore another file).
func readGhosts(d *images.Dir, files map[model.ID]*model.File) error {
	if !d.Exists(RemapFpathImg) {
		return nil
	}
	es, err := images.ReadAll[*remap_file_path.RemapFilePathEntry](d, RemapFpathImg)
	if err != nil {
		return imgErr(RemapFpathImg, err)
	}
	ghosts := map[uint32]*model.GhostState{}
	links := map[uint32]*model.GhostState{}
	for _, e := range es {
		f := files[model.ID(e.GetOrigId())]
		if f == nil || f.Kind != model.Path {
			return fmt.Errorf("%s: remap of file %d, not a regular entry", RemapFpathImg, e.GetOrigId())
		}
		if e.GetRemapType() == remap_file_path.RemapType_LINKED {
			g, ok := links[e.GetRemapId()]
			if !ok {
				l := files[model.ID(e.GetRemapId())]
				if l == nil || l.Kind != model.Path || l.Pipe != nil || !strings.HasPrefix(l.Path, "/") || e.GetRemapId() == e.GetOrigId() {
					return fmt.Errorf("%s: file %d (%s): linked remap to %d, not a regular entry", RemapFpathImg, f.ID, f.Path, e.GetRemapId())
				}
				// The link's entry id stands for the inode (one link
				// per inode): the restore shares what it opens by it.
				g = &model.GhostState{Ino: uint64(e.GetRemapId()), Mode: l.Mode, Linked: l.Path}
				links[e.GetRemapId()] = g
			}
			f.Kind, f.Ghost, f.Size, f.BuildID = model.Ghost, g, nil, nil
			continue
		}
		if e.GetRemapType() != remap_file_path.RemapType_GHOST {
			return fmt.Errorf("%s: file %d (%s): %v remaps are not supported", RemapFpathImg, f.ID, f.Path, e.GetRemapType())
		}
		g, ok := ghosts[e.GetRemapId()]
		if !ok {
			if g, err = readGhost(d, e.GetRemapId()); err != nil {
				return err
			}
			ghosts[e.GetRemapId()] = g
		}
		f.Kind, f.Ghost, f.Size, f.BuildID = model.Ghost, g, nil, nil
	}
	for id := range links {
		if f := files[model.ID(id)]; f != nil && f.Kind == model.Path {
			delete(files, model.ID(id)) // the link is no file of the tree
		}
	}
	return nil
}

func readGhost(d *images.Dir, id uint32) (*model.GhostState, error) {
	name := GhostFileImg(id)
	r, err := d.OpenImage(name)
	if err != nil {
		return nil, imgErr(name, err)
	}
	defer r.Close()
	var e ghost_file.GhostFileEntry
	if err := r.Next(&e); err != nil {
		return nil, imgErr(name, err)
	}
	if e.GetMode()&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s: deleted file of mode %#o: only regular files are supported", name, e.GetMode())
	}
	// Three layouts: godwit's (size, then the contents), CRIU's for
	// files under 12 KiB (no size: the contents are the rest of the
	// image) and CRIU's for larger ones (chunks: size, then entries
	// {off, len} each followed by len bytes; holes between them).
	size := e.GetSize()
	switch {
	case e.Size == nil && !e.GetChunks():
		size = uint64(r.Remaining())
		if r.Remaining() < 0 {
			return nil, fmt.Errorf("%s: no size, and the image's length is unknown", name)
		}
	case e.Size == nil:
		return nil, fmt.Errorf("%s: chunks without a size", name)
	}
	if size > maxGhost {
		return nil, fmt.Errorf("%s: %d bytes, over %d", name, size, uint64(maxGhost))
	}
	g := &model.GhostState{
		Dev: unix.Mkdev(e.GetDev()>>20, e.GetDev()&0xfffff), Ino: e.GetIno(), Mode: e.GetMode(), UID: e.GetUid(), GID: e.GetGid(), Size: size,
		Atime: unix.Timespec{Sec: int64(e.GetAtim().GetTvSec()), Nsec: int64(e.GetAtim().GetTvUsec()) * 1000},
		Mtime: unix.Timespec{Sec: int64(e.GetMtim().GetTvSec()), Nsec: int64(e.GetMtim().GetTvUsec()) * 1000},
	}
	if g.Atime.Nsec >= 1e9 || g.Mtime.Nsec >= 1e9 || g.Atime.Sec < 0 || g.Mtime.Sec < 0 {
		return nil, fmt.Errorf("%s: times out of range", name)
	}
	if !e.GetChunks() {
		g.Data, err = readGhostData(r, nil, size)
		if err != nil {
			return nil, imgErr(name, err)
		}
		return g, nil
	}
	// Only the chunks' bytes are kept; the rest stays holes.
	g.Holes, g.Chunks, g.Data = true, []model.GhostChunk{}, []byte{}
	var end uint64 // where the previous chunk ended
	for {
		var c ghost_file.GhostChunkEntry
		err := r.Next(&c)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, imgErr(name, err)
		}
		off, n := c.GetOff(), c.GetLen()
		if c.Off == nil || c.Len == nil || off < end || n > size || off > size-n {
			return nil, fmt.Errorf("%s: chunk %d+%d out of order or past the size %d", name, off, n, size)
		}
		if rest := r.Remaining(); rest >= 0 && uint64(rest) < n {
			return nil, fmt.Errorf("%s: chunk %d+%d: only %d bytes left in the image", name, off, n, rest)
		}
		if g.Data, err = readGhostData(r, g.Data, n); err != nil {
			return nil, imgErr(name, err)
		}
		if n > 0 {
			g.Chunks = append(g.Chunks, model.GhostChunk{Off: off, Len: n})
		}
		end = off + n
	}
	return g, nil
}

// readGhostData appends n bytes of payload to data, growing it as the
// bytes arrive (a lying size costs what the image holds, no more).
func readGhostData(r *images.EntryReader, data []byte, n uint64) ([]byte, error) {
	if data == nil {
		data = []byte{}
	}
	for left := n; left > 0; {
		step := min(left, 1<<20)
		data = append(data, make([]byte, step)...)
		if err := r.ReadPayload(data[uint64(len(data))-step:]); err != nil {
			return nil, err
		}
		left -= step
	}
	return data, nil
}

// FileLocksImg holds the file locks: each names its owner task and an fd
// through which it is restored.
const FileLocksImg = "filelocks.img"

// maxLocks bounds the lock entries of an image.
const maxLocks = 1 << 20

func lockEntry(l model.FileLock, pid, fd int) *file_lock.FileLockEntry {
	typ := uint32(unix.F_RDLCK)
	if l.Write {
		typ = unix.F_WRLCK
	}
	flag := l.Kind
	if flag == model.LockOFD {
		flag = criuFlOFD
	}
	return &file_lock.FileLockEntry{
		Flag: proto.Uint32(flag), Type: proto.Uint32(typ), Pid: proto.Int32(int32(pid)), Fd: proto.Int32(int32(fd)),
		Start: proto.Int64(l.Start), Len: proto.Int64(l.Len),
	}
}

// CRIU's file_lock_entry.flag values (criu/include/file-lock.h): POSIX
// and flock are the kernel's FL_* bits, OFD is CRIU's own 4, not the
// kernel's FL_OFDLCK (1024), and CRIU's restore refuses any other value
// ("Unknown file lock style!").
const (
	criuFlOFD     = 4
	kernelFlOFDLK = 1024 // what godwit wrote for OFD locks before: still read
)

// writeLocks writes the tasks' POSIX locks and the descriptions' flock
// and OFD locks (each through the first fd that holds its description).
func writeLocks(d *images.Dir, t *model.Tree, written func(string)) error {
	var es []*file_lock.FileLockEntry
	done := map[model.ID]bool{}
	for _, k := range t.Tasks {
		for _, fd := range k.FDs {
			for _, l := range fd.Locks {
				es = append(es, lockEntry(l, k.Pid, fd.Num))
			}
			if f := t.Files[fd.File]; f != nil && len(f.Locks) > 0 && !done[f.ID] {
				done[f.ID] = true
				for _, l := range f.Locks {
					es = append(es, lockEntry(l, k.Pid, fd.Num))
				}
			}
		}
	}
	if len(es) == 0 {
		return nil
	}
	if written != nil {
		written(FileLocksImg)
	}
	return images.Write(d, FileLocksImg, es...)
}

// readLocks gives each lock to its fd (POSIX) or to the file of that fd.
func readLocks(d *images.Dir, t *model.Tree) error {
	if !d.Exists(FileLocksImg) {
		return nil
	}
	es, err := images.ReadAll[*file_lock.FileLockEntry](d, FileLocksImg)
	if err != nil {
		return imgErr(FileLocksImg, err)
	}
	if len(es) > maxLocks {
		return fmt.Errorf("%s: %d locks", FileLocksImg, len(es))
	}
	for i, e := range es {
		k := t.Task(int(e.GetPid()))
		var fd *model.FD
		if k != nil {
			for j := range k.FDs {
				if k.FDs[j].Num == int(e.GetFd()) {
					fd = &k.FDs[j]
				}
			}
		}
		if fd == nil {
			return fmt.Errorf("%s: lock %d: no fd %d in task %d", FileLocksImg, i, e.GetFd(), e.GetPid())
		}
		l := model.FileLock{Kind: e.GetFlag(), Start: e.GetStart(), Len: e.GetLen()}
		if l.Kind == criuFlOFD || l.Kind == kernelFlOFDLK {
			l.Kind = model.LockOFD
		}
		switch e.GetType() {
		case unix.F_RDLCK:
		case unix.F_WRLCK:
			l.Write = true
		default:
			return fmt.Errorf("%s: lock %d: type %d (a lease being broken, or unknown): not supported", FileLocksImg, i, e.GetType())
		}
		if l.Kind == model.LockLease && (l.Start != 0 || l.Len != 0) {
			return fmt.Errorf("%s: lock %d: a lease with range %d+%d", FileLocksImg, i, l.Start, l.Len)
		}
		if l.Start < 0 || l.Len < 0 {
			return fmt.Errorf("%s: lock %d: range %d+%d", FileLocksImg, i, l.Start, l.Len)
		}
		switch l.Kind {
		case model.LockPOSIX:
			fd.Locks = append(fd.Locks, l)
		case model.LockFlock, model.LockOFD, model.LockLease:
			f := t.Files[fd.File]
			f.Locks = append(f.Locks, l)
		default:
			return fmt.Errorf("%s: lock %d: kind %#x (leases and others are not supported)", FileLocksImg, i, l.Kind)
		}
	}
	return nil
}

// nsLinks are the /proc/PID/ns links of the namespace types (clone
// flags) a namespace fd can be of.
var nsLinks = map[uint32]string{
	unix.CLONE_NEWCGROUP: "cgroup", unix.CLONE_NEWIPC: "ipc", unix.CLONE_NEWNS: "mnt", unix.CLONE_NEWNET: "net",
	unix.CLONE_NEWPID: "pid", unix.CLONE_NEWTIME: "time", unix.CLONE_NEWUSER: "user", unix.CLONE_NEWUTS: "uts",
}

func nsLink(flag uint32) string { return nsLinks[flag] }

// nsOf is the type (clone flag) of namespace fd f and the id of that
// namespace among the dump's: the one of the first task that holds f
// (the fd is of its own namespace).
func nsOf(t *model.Tree, f *model.File) (flag, id uint32) {
	for fl, l := range nsLinks {
		if l == f.NS.Link {
			flag = fl
		}
	}
	for _, k := range t.Tasks {
		for _, e := range k.FDs {
			if e.File != f.ID {
				continue
			}
			n := k.IDs.NS
			switch flag {
			case unix.CLONE_NEWCGROUP:
				return flag, n.Cgroup
			case unix.CLONE_NEWIPC:
				return flag, n.IPC
			case unix.CLONE_NEWNS:
				return flag, n.Mnt
			case unix.CLONE_NEWNET:
				return flag, n.Net
			case unix.CLONE_NEWPID:
				return flag, n.Pid
			case unix.CLONE_NEWTIME:
				return flag, n.Time
			case unix.CLONE_NEWUSER:
				return flag, n.User
			case unix.CLONE_NEWUTS:
				return flag, n.UTS
			}
		}
	}
	return flag, 0
}

// fhEntry is CRIU's fh entry of a file handle (its bytes as 64-bit words)
// with a path that reached the file.
func fhEntry(typ uint32, handle []byte, path string) *fh.FhEntry {
	h := &fh.FhEntry{Bytes: proto.Uint32(uint32(len(handle))), Type: proto.Uint32(typ), Path: proto.String(path)}
	for i := 0; i < len(handle); i += 8 {
		var b [8]byte
		copy(b[:], handle[i:])
		h.Handle = append(h.Handle, binary.LittleEndian.Uint64(b[:]))
	}
	return h
}

// fhOf reads an fh entry back: type, handle bytes, path.
func fhOf(h *fh.FhEntry) (uint32, []byte, string, error) {
	n := h.GetBytes()
	if h == nil || n > 128 || uint64(len(h.GetHandle()))*8 < uint64(n) {
		return 0, nil, "", fmt.Errorf("bad file handle")
	}
	var hb []byte
	for _, x := range h.GetHandle() {
		hb = binary.LittleEndian.AppendUint64(hb, x)
	}
	return h.GetType(), hb[:n], h.GetPath(), nil
}

// uskExtern is CRIU's USK_EXTERN (criu/include/sockets.h): the entry of a
// socket outside the dump, the peer of one of the tree's.
const uskExtern = 1

// externPeerEntry is the UNIXSK entry, under a fresh id, of the outside
// peer of u (an External socket of the tree), as CRIU writes one.
func externPeerEntry(u *model.UnixSocketState, id uint32) *fdinfo.FileEntry {
	e := &sk_unix.UnixSkEntry{
		Id: proto.Uint32(id), Ino: proto.Uint32(u.Peer), Type: proto.Uint32(u.Type), State: proto.Uint32(7), // TCP_CLOSE
		Flags: proto.Uint32(unix.O_RDWR), Uflags: proto.Uint32(uskExtern), Backlog: proto.Uint32(0), Peer: proto.Uint32(0),
		Fown: noFown(), Opts: &sk_opts.SkOptsEntry{SoSndbuf: proto.Uint32(0), SoRcvbuf: proto.Uint32(0),
			SoSndTmoSec: proto.Uint64(0), SoSndTmoUsec: proto.Uint64(0), SoRcvTmoSec: proto.Uint64(0), SoRcvTmoUsec: proto.Uint64(0)},
		Name: append([]byte{}, u.PeerName...),
	}
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_UNIXSK.Enum(), Id: proto.Uint32(id), Usk: e}
}

// resolveExternPeers drops the outside peers' entries from files and
// marks each socket connected to one External, with the peer's name. A
// socket connected to a peer neither in the dump nor outside it is left
// for checkUnixPeers-like checks where it is used.
func resolveExternPeers(files map[model.ID]*model.File) error {
	ext := map[uint32][]byte{}
	for id, f := range files {
		if f.Unix != nil && f.Unix.External && f.Kind == model.UnixSocket && f.Unix.Peer == 0 && f.Flags == unix.O_RDWR && f.Unix.State == 7 {
			ext[f.Unix.Ino] = f.Unix.Name
			delete(files, id)
		} else if f.Unix != nil && f.Unix.External {
			return fmt.Errorf("file %d: unix socket %d marked external but not an outside peer's entry", id, f.Unix.Ino)
		}
	}
	byIno := map[uint32]*model.UnixSocketState{}
	for _, f := range files {
		if f.Unix != nil {
			byIno[f.Unix.Ino] = f.Unix
		}
	}
	for _, f := range files {
		u := f.Unix
		if u == nil || u.Peer == 0 {
			continue
		}
		if p := byIno[u.Peer]; p != nil && (len(u.Name) > 0 || len(p.Name) > 0) {
			// Connected through a name inside the dump (connect and
			// accept): the peer's name, as the dump saw it.
			u.PeerName = append([]byte{}, p.Name...)
			continue
		}
		name, ok := ext[u.Peer]
		if !ok {
			continue
		}
		u.External = true
		if len(name) > 0 || len(u.Name) > 0 {
			u.PeerName = append([]byte{}, name...)
		}
	}
	return nil
}
