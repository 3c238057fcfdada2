package criuimg

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
)

// ptys, as CRIU keeps them: each description is a TTY entry of files.img
// naming a tty-info.img entry (one per end of a pty: the master, rdev
// 5:2, and the slave, rdev 136+N/256:N%256, both with the pty's index)
// and a REG entry with the end's path. The mode of /dev/pts/N, which
// CRIU's entries have no field for, is in godwit-tty.json.
//
// The other ttys are a tty-info entry each, of CRIU's type for them
// (CTTY for /dev/tty, CONSOLE, VT, SERIAL, EXT_TTY for one left out with
// --external), with the device (rdev; and dev for an external one), the
// termios and window size of a line, and a REG entry with the path; the
// device an alias reaches (TIOCGDEV), which CRIU keeps no field for, is
// in godwit-tty.json.

// TtyInfoImg holds the tty-info entries.
const TtyInfoImg = "tty-info.img"

// GodwitTtyImg holds the mode of each pty's /dev/pts/N (godwit image).
const GodwitTtyImg = "godwit-tty.json"

// maxPtys bounds the pty index in an image (NR_UNIX98_PTY_MAX).
const maxPtys = 1 << 20

type ttyEnd struct {
	pty    *model.PtyState
	master bool
	other  *model.TtyOther
}

func endOf(t *model.TtyFile) ttyEnd {
	if t.Pty == nil {
		return ttyEnd{other: t.Other}
	}
	return ttyEnd{pty: t.Pty, master: t.Master}
}

// otherTypes are CRIU's tty types of the ttys that are not ptys.
var otherTypes = map[model.TtyKind]tty.TtyType{
	model.TtyCtty: tty.TtyType_CTTY, model.TtyConsole: tty.TtyType_CONSOLE, model.TtyVT: tty.TtyType_VT,
	model.TtySerial: tty.TtyType_SERIAL, model.TtyExternal: tty.TtyType_EXT_TTY,
}

// ttyInfos numbers the ends of the tree's ptys from 1, in file id order.
func ttyInfos(t *model.Tree) (map[ttyEnd]uint32, []ttyEnd) {
	ids := map[ttyEnd]uint32{}
	var order []ttyEnd
	for _, id := range t.FileIDs() {
		f := t.Files[id]
		if f.Kind != model.Tty || f.Tty == nil || f.Tty.Pty == nil && f.Tty.Other == nil {
			continue
		}
		e := endOf(f.Tty)
		if _, ok := ids[e]; !ok {
			order = append(order, e)
			ids[e] = uint32(len(order))
		}
	}
	return ids, order
}

// ttyRdev is the device of a pty end, as CRIU records it (glibc's
// encoding, which fits 32 bits for these numbers).
func ttyRdev(e ttyEnd) uint32 {
	if e.other != nil {
		return uint32(e.other.Rdev)
	}
	if e.master {
		return uint32(unix.Mkdev(5, 2))
	}
	return uint32(unix.Mkdev(136+e.pty.Index/256, e.pty.Index%256))
}

// ttyEntries are the files.img entries of a pty description: its REG
// entry (under a fresh id, regID) and the TTY entry.
func ttyEntries(f *model.File, regID, infoID uint32) (*fdinfo.FileEntry, *fdinfo.FileEntry) {
	reg := fileEntry(f)
	reg.Id, reg.Reg.Id = proto.Uint32(regID), proto.Uint32(regID)
	id := proto.Uint32(uint32(f.ID))
	return reg, &fdinfo.FileEntry{Type: fdinfo.FdTypes_TTY.Enum(), Id: id, Tty: &tty.TtyFileEntry{
		Id: id, TtyInfoId: proto.Uint32(infoID), Flags: proto.Uint32(f.Flags), Fown: noFown(), RegfId: proto.Uint32(regID),
	}}
}

func termiosEntry(t *unix.Termios) *tty.TermiosEntry {
	e := &tty.TermiosEntry{
		CIflag: proto.Uint32(t.Iflag), COflag: proto.Uint32(t.Oflag), CCflag: proto.Uint32(t.Cflag), CLflag: proto.Uint32(t.Lflag),
		CLine: proto.Uint32(uint32(t.Line)), CIspeed: proto.Uint32(t.Ispeed), COspeed: proto.Uint32(t.Ospeed),
	}
	for _, c := range t.Cc {
		e.CCc = append(e.CCc, uint32(c))
	}
	return e
}

func termiosOf(e *tty.TermiosEntry) (unix.Termios, error) {
	var t unix.Termios
	if e == nil {
		return t, fmt.Errorf("no termios")
	}
	if len(e.GetCCc()) != len(t.Cc) || e.GetCLine() > 255 {
		return t, fmt.Errorf("termios with %d control characters, line %d", len(e.GetCCc()), e.GetCLine())
	}
	t.Iflag, t.Oflag, t.Cflag, t.Lflag = e.GetCIflag(), e.GetCOflag(), e.GetCCflag(), e.GetCLflag()
	t.Line, t.Ispeed, t.Ospeed = uint8(e.GetCLine()), e.GetCIspeed(), e.GetCOspeed()
	for i, c := range e.GetCCc() {
		if c > 255 {
			return t, fmt.Errorf("termios control character %d", c)
		}
		t.Cc[i] = uint8(c)
	}
	return t, nil
}

// writeTtys writes tty-info.img and godwit-tty.json.
func writeTtys(d *images.Dir, order []ttyEnd, written func(string)) error {
	if len(order) == 0 {
		return nil
	}
	var es []proto.Message
	modes := map[uint32]uint32{}
	real := map[uint32]uint64{}
	members := map[uint32]bool{}
	for i, e := range order {
		if o := e.other; o != nil {
			typ, ok := otherTypes[o.Kind]
			if !ok || o.Rdev>>32 != 0 || o.Dev>>32 != 0 {
				return fmt.Errorf("tty of kind %d, device %#x on %#x", o.Kind, o.Rdev, o.Dev)
			}
			te := &tty.TtyInfoEntry{
				Id: proto.Uint32(uint32(i + 1)), Type: typ.Enum(),
				Locked: proto.Bool(false), Exclusive: proto.Bool(false), PacketMode: proto.Bool(false),
				Sid: proto.Uint32(0), Pgrp: proto.Uint32(0), Rdev: proto.Uint32(uint32(o.Rdev)), Dev: proto.Uint32(uint32(o.Dev)),
			}
			if o.Kind != model.TtyCtty && o.Kind != model.TtyExternal {
				te.Termios, te.Winsize = termiosEntry(&o.Termios), winsizeEntry(&o.Winsize)
			}
			if o.Real != 0 {
				real[uint32(i+1)] = o.Real
			}
			es = append(es, te)
			continue
		}
		p := e.pty
		if p.Sid < 0 || p.Pgrp < 0 || p.Index >= maxPtys {
			return fmt.Errorf("pty %d: session %d, group %d", p.Index, p.Sid, p.Pgrp)
		}
		es = append(es, &tty.TtyInfoEntry{
			Id: proto.Uint32(uint32(i + 1)), Type: tty.TtyType_PTY.Enum(),
			Locked: proto.Bool(p.Locked), Exclusive: proto.Bool(p.Exclusive), PacketMode: proto.Bool(p.Packet),
			Sid: proto.Uint32(uint32(p.Sid)), Pgrp: proto.Uint32(uint32(p.Pgrp)), Rdev: proto.Uint32(ttyRdev(e)),
			Termios: termiosEntry(&p.Termios), TermiosLocked: termiosEntry(&p.LockedTermios),
			Winsize: winsizeEntry(&p.Winsize),
			Pty:     &tty.TtyPtyEntry{Index: proto.Uint32(p.Index)},
			Uid:     proto.Uint32(p.UID), Gid: proto.Uint32(p.GID),
		})
		if p.ModeKnown {
			modes[p.Index] = p.Mode
		}
		if p.MembersCtty {
			members[p.Index] = true
		}
	}
	if written != nil {
		written(TtyInfoImg)
	}
	w, err := d.CreateImage(TtyInfoImg)
	if err != nil {
		return err
	}
	for _, e := range es {
		if err := w.Write(e); err != nil {
			w.Close()
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if written != nil {
		written(GodwitTtyImg)
	}
	b, err := json.Marshal(godwitTtys{Version: godwitVersion, Modes: modes, Real: real, Members: members})
	if err != nil {
		return err
	}
	f, err := d.Create(GodwitTtyImg)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type godwitTtys struct {
	Version int               `json:"version"`
	Modes   map[uint32]uint32 `json:"modes"`          // /dev/pts/N's mode, by N
	Real    map[uint32]uint64 `json:"real,omitempty"` // the device an alias reaches, by tty-info id
	// Members are the ptys whose session's members have them as their
	// controlling terminal too, by index.
	Members map[uint32]bool `json:"members,omitempty"`
}

func winsizeEntry(w *unix.Winsize) *tty.WinsizeEntry {
	return &tty.WinsizeEntry{WsRow: proto.Uint32(uint32(w.Row)), WsCol: proto.Uint32(uint32(w.Col)),
		WsXpixel: proto.Uint32(uint32(w.Xpixel)), WsYpixel: proto.Uint32(uint32(w.Ypixel))}
}

// winsizeOf reads a window size entry.
func winsizeOf(ws *tty.WinsizeEntry) (unix.Winsize, bool) {
	if ws == nil || ws.GetWsRow() > 0xffff || ws.GetWsCol() > 0xffff || ws.GetWsXpixel() > 0xffff || ws.GetWsYpixel() > 0xffff {
		return unix.Winsize{}, false
	}
	return unix.Winsize{Row: uint16(ws.GetWsRow()), Col: uint16(ws.GetWsCol()), Xpixel: uint16(ws.GetWsXpixel()), Ypixel: uint16(ws.GetWsYpixel())}, true
}

// readTtys makes each TTY entry of files.img a Tty file, from the
// tty-info entry and the REG entry it names.
func readTtys(d *images.Dir, entries []*fdinfo.FileEntry, files map[model.ID]*model.File) error {
	if len(entries) == 0 {
		return nil
	}
	es, err := images.ReadAll[*tty.TtyInfoEntry](d, TtyInfoImg)
	if err != nil {
		return imgErr(TtyInfoImg, err)
	}
	modes := map[uint32]uint32{}
	var real map[uint32]uint64
	var members map[uint32]bool
	if d.Exists(GodwitTtyImg) {
		f, err := d.OpenRead(GodwitTtyImg)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(io.LimitReader(f, maxGodwitImg+1))
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", GodwitTtyImg, err)
		}
		var g godwitTtys
		if len(b) > maxGodwitImg || json.Unmarshal(b, &g) != nil || g.Version < 1 || g.Version > godwitVersion {
			return fmt.Errorf("%s: not a godwit tty image of version 1 to %d", GodwitTtyImg, godwitVersion)
		}
		modes, real, members = g.Modes, g.Real, g.Members
	}
	ptys := map[uint32]*model.PtyState{}
	infos := map[uint32]ttyEnd{}
	for _, e := range es {
		if _, dup := infos[e.GetId()]; dup {
			return fmt.Errorf("%s: tty %d twice", TtyInfoImg, e.GetId())
		}
		if e.GetType() != tty.TtyType_PTY {
			o, err := readOther(e, real[e.GetId()])
			if err != nil {
				return fmt.Errorf("%s: tty %d: %w", TtyInfoImg, e.GetId(), err)
			}
			infos[e.GetId()] = ttyEnd{other: o}
			continue
		}
		if e.GetPty() == nil {
			return fmt.Errorf("%s: tty %d: %v ttys are not supported yet (only ptys)", TtyInfoImg, e.GetId(), e.GetType())
		}
		idx := e.GetPty().GetIndex()
		if idx >= maxPtys || e.GetSid() > maxPid || e.GetPgrp() > maxPid {
			return fmt.Errorf("%s: tty %d: index %d, session %d, group %d", TtyInfoImg, e.GetId(), idx, e.GetSid(), e.GetPgrp())
		}
		master := false
		switch maj, min := unix.Major(uint64(e.GetRdev())), unix.Minor(uint64(e.GetRdev())); {
		case maj == 5 && min == 2:
			master = true
		case maj == 136+idx/256 && min == idx%256:
		default:
			return fmt.Errorf("%s: tty %d: device %d:%d is not an end of pty %d", TtyInfoImg, e.GetId(), maj, min, idx)
		}
		p := ptys[idx]
		if p == nil {
			p = &model.PtyState{Index: idx}
			ptys[idx] = p
		}
		t, err := termiosOf(e.GetTermios())
		if err != nil {
			return fmt.Errorf("%s: tty %d: %w", TtyInfoImg, e.GetId(), err)
		}
		p.Termios = t
		if e.TermiosLocked != nil {
			if p.LockedTermios, err = termiosOf(e.GetTermiosLocked()); err != nil {
				return fmt.Errorf("%s: tty %d: locked %w", TtyInfoImg, e.GetId(), err)
			}
		}
		ws, ok := winsizeOf(e.GetWinsize())
		if !ok {
			return fmt.Errorf("%s: tty %d: bad or no window size", TtyInfoImg, e.GetId())
		}
		p.Winsize = ws
		p.UID, p.GID = e.GetUid(), e.GetGid()
		if m, ok := modes[idx]; ok {
			p.Mode, p.ModeKnown = m&0o7777, true
		}
		if master {
			if p.HasMaster {
				return fmt.Errorf("%s: pty %d: two masters", TtyInfoImg, idx)
			}
			p.HasMaster, p.Locked, p.Packet = true, e.GetLocked(), e.GetPacketMode()
			p.Sid, p.Pgrp = int(e.GetSid()), int(e.GetPgrp())
			p.MembersCtty = members[idx]
		} else {
			p.Slave, p.Exclusive = true, e.GetExclusive()
		}
		infos[e.GetId()] = ttyEnd{pty: p, master: master}
	}
	for _, e := range entries {
		id := model.ID(e.GetId())
		te := e.GetTty()
		if te == nil {
			return fmt.Errorf("%s: file %d: TTY without its tty entry", images.FilesImg, id)
		}
		end, ok := infos[te.GetTtyInfoId()]
		if !ok {
			return fmt.Errorf("%s: file %d: tty %d is not in %s", images.FilesImg, id, te.GetTtyInfoId(), TtyInfoImg)
		}
		if end.other != nil {
			reg := files[model.ID(te.GetRegfId())]
			if te.RegfId == nil || reg == nil || reg.Kind != model.Path || !strings.HasPrefix(reg.Path, "/") {
				return fmt.Errorf("%s: file %d: tty names file %d, not a regular entry with its path", images.FilesImg, id, te.GetRegfId())
			}
			files[id] = &model.File{ID: id, Kind: model.Tty, Path: reg.Path, Flags: te.GetFlags(), MntID: -1,
				Tty: &model.TtyFile{Other: end.other}}
			continue
		}
		want := "/dev/ptmx"
		if !end.master {
			want = fmt.Sprintf("/dev/pts/%d", end.pty.Index)
		}
		if te.RegfId != nil {
			reg := files[model.ID(te.GetRegfId())]
			if reg == nil || reg.Kind != model.Path || reg.Path != want {
				return fmt.Errorf("%s: file %d: tty names file %d, not a regular entry of %s", images.FilesImg, id, te.GetRegfId(), want)
			}
		}
		files[id] = &model.File{ID: id, Kind: model.Tty, Path: want, Flags: te.GetFlags(), MntID: -1,
			Tty: &model.TtyFile{Master: end.master, Pty: end.pty}}
	}
	// A pty whose slave was open nowhere: the dump saw it hung up.
	for _, p := range ptys {
		p.SlaveClosed = p.HasMaster && !p.Slave
	}
	return nil
}

// readOther reads the tty-info entry of a tty that is not a pty; real is
// the device an alias reached (godwit-tty.json), 0 when unknown.
func readOther(e *tty.TtyInfoEntry, real uint64) (*model.TtyOther, error) {
	var kind model.TtyKind
	for k, t := range otherTypes {
		if t == e.GetType() {
			kind = k
		}
	}
	if kind == 0 {
		return nil, fmt.Errorf("%v ttys are not supported", e.GetType())
	}
	o := &model.TtyOther{Kind: kind, Rdev: uint64(e.GetRdev()), Dev: uint64(e.GetDev()), Real: real}
	if kind == model.TtyCtty || kind == model.TtyConsole || kind == model.TtyVT && unix.Minor(o.Rdev) == 0 {
		if real == 0 {
			return nil, fmt.Errorf("%v %d:%d without the device it reaches (%s)", e.GetType(), unix.Major(o.Rdev), unix.Minor(o.Rdev), GodwitTtyImg)
		}
	}
	if kind == model.TtyCtty || kind == model.TtyExternal {
		return o, nil
	}
	t, err := termiosOf(e.GetTermios())
	if err != nil {
		return nil, err
	}
	ws, ok := winsizeOf(e.GetWinsize())
	if !ok {
		return nil, fmt.Errorf("bad or no window size")
	}
	o.Termios, o.Winsize = t, ws
	return o, nil
}
