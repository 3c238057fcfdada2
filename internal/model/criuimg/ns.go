package criuimg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	ipc_desc "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-desc"
	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	ipc_var "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-var"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/utsns"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
)

// The namespace images, named by the namespace's id (CRIU's
// criu/image-desc.c names).
func utsnsImg(id uint32) string   { return fmt.Sprintf("utsns-%d.img", id) }
func ipcVarImg(id uint32) string  { return fmt.Sprintf("ipcns-var-%d.img", id) }
func ipcShmImg(id uint32) string  { return fmt.Sprintf("ipcns-shm-%d.img", id) }
func ipcSemImg(id uint32) string  { return fmt.Sprintf("ipcns-sem-%d.img", id) }
func ipcMsgImg(id uint32) string  { return fmt.Sprintf("ipcns-msg-%d.img", id) }
func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }

// Payload layouts after each entry, as CRIU writes them (criu/ipc_ns.c):
// a segment's bytes padded to 4 (in_pagemaps false), a set's u16 values
// padded to 8, and each queued message as a size-prefixed ipc_msg then
// its text padded to 8.
const (
	shmPad = 4
	semPad = 8
	msgPad = 8
)

// Bounds on what one object's payload may claim, so that a corrupt
// image cannot make the reader allocate without bound (ReadPayload also
// refuses more than the file holds): a segment of at most 64 GiB, a set
// of at most 2^20 semaphores, at most 2^24 messages of at most 64 MiB.
const (
	maxShmSize = 64 << 30
	// sysvPagesBase is where the pages ids of SysV segments' contents
	// start: above the dump's own and memfds' (memfdPagesBase).
	sysvPagesBase = 1 << 21
	maxSems       = 1 << 20
	maxMsgSize    = 64 << 20
	maxMsgs       = 1 << 24
)

func writeNamespaces(d *images.Dir, t *model.Tree, written func(string), put func(string, ...proto.Message) error, create func(string) (*images.EntryWriter, error)) error {
	if u := t.UTS; u != nil {
		if err := put(utsnsImg(u.ID), &utsns.UtsnsEntry{Nodename: proto.String(u.Nodename), Domainname: proto.String(u.Domainname)}); err != nil {
			return err
		}
	}
	ns := t.IPC
	if ns == nil {
		return nil
	}
	if err := put(ipcVarImg(ns.ID), ipcVarEntry(&ns.Var)); err != nil {
		return err
	}
	w, err := create(ipcShmImg(ns.ID))
	if err != nil {
		return err
	}
	pagesID := uint32(sysvPagesBase)
	for i := range ns.Shm {
		s := &ns.Shm[i]
		if err := s.CheckPages(pageSize); err != nil {
			w.Close()
			return err
		}
		// CRIU's in_pagemaps layout keeps only the pages the segment
		// held; the inline one (kept for a pagemap-shmem name some shared
		// mapping already took) streams the zeros between them.
		name := images.PagemapShmemImg(uint64(uint32(s.Desc.ID)))
		inPagemaps := !d.Exists(name)
		e := &ipc_shm.IpcShmEntry{Desc: descEntry(&s.Desc), Size: proto.Uint64(s.Size), InPagemaps: proto.Bool(inPagemaps)}
		if err := w.Write(e); err != nil {
			w.Close()
			return err
		}
		if inPagemaps {
			if len(s.Pages) == 0 {
				continue // no pagemap: every page zero
			}
			for d.Exists(images.PagesImg(pagesID)) {
				pagesID++
			}
			if written != nil {
				written(name)
				written(images.PagesImg(pagesID))
			}
			if err := writeShmPages(d, name, pagesID, s); err != nil {
				w.Close()
				return fmt.Errorf("shm segment %d: %w", s.Desc.ID, err)
			}
			pagesID++
			continue
		}
		if err := writeShmInline(w, s); err != nil {
			w.Close()
			return fmt.Errorf("shm segment %d: %w", s.Desc.ID, err)
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := writeGodwitIPC(d, ns, written); err != nil {
		return err
	}
	if w, err = create(ipcSemImg(ns.ID)); err != nil {
		return err
	}
	for i := range ns.Sem {
		s := &ns.Sem[i]
		if err := w.Write(&ipc_sem.IpcSemEntry{Desc: descEntry(&s.Desc), Nsems: proto.Uint32(uint32(len(s.Values)))}); err != nil {
			w.Close()
			return err
		}
		b := make([]byte, 0, 2*len(s.Values))
		for _, v := range s.Values {
			b = binary.LittleEndian.AppendUint16(b, v)
		}
		if err := w.WritePayload(padded(b, semPad)); err != nil {
			w.Close()
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if w, err = create(ipcMsgImg(ns.ID)); err != nil {
		return err
	}
	for i := range ns.Msg {
		q := &ns.Msg[i]
		e := &ipc_msg.IpcMsgEntry{Desc: descEntry(&q.Desc), Qbytes: proto.Uint32(q.QBytes), Qnum: proto.Uint32(uint32(len(q.Msgs)))}
		if err := w.Write(e); err != nil {
			w.Close()
			return err
		}
		for _, m := range q.Msgs {
			// ipc_msg is not the image's entry type: its framing is
			// written here.
			b, err := proto.Marshal(&ipc_msg.IpcMsg{Mtype: proto.Uint64(uint64(m.Type)), Msize: proto.Uint32(uint32(len(m.Data)))})
			if err != nil {
				w.Close()
				return err
			}
			b = append(binary.LittleEndian.AppendUint32(nil, uint32(len(b))), b...)
			if err := w.WritePayload(append(b, padded(m.Data, msgPad)...)); err != nil {
				w.Close()
				return err
			}
		}
	}
	return w.Close()
}

func padded(b []byte, to uint64) []byte {
	return append(b[:len(b):len(b)], make([]byte, roundUp(uint64(len(b)), to)-uint64(len(b)))...)
}

func descEntry(d *model.IPCDesc) *ipc_desc.IpcDescEntry {
	return &ipc_desc.IpcDescEntry{Key: proto.Uint32(uint32(d.Key)), Uid: proto.Uint32(d.UID), Gid: proto.Uint32(d.GID),
		Cuid: proto.Uint32(d.CUID), Cgid: proto.Uint32(d.CGID), Mode: proto.Uint32(d.Mode), Id: proto.Uint32(uint32(d.ID))}
}

func modelDesc(e *ipc_desc.IpcDescEntry, name string) (model.IPCDesc, error) {
	if e == nil {
		return model.IPCDesc{}, fmt.Errorf("%s: object without desc", name)
	}
	d := model.IPCDesc{Key: int32(e.GetKey()), UID: e.GetUid(), GID: e.GetGid(), CUID: e.GetCuid(), CGID: e.GetCgid(), Mode: e.GetMode(), ID: int32(e.GetId())}
	if d.Mode&^0777 != 0 || d.ID < 0 {
		return d, fmt.Errorf("%s: object %d: mode %#o", name, d.ID, d.Mode)
	}
	return d, nil
}

func ipcVarEntry(v *model.IPCVar) *ipc_var.IpcVarEntry {
	return &ipc_var.IpcVarEntry{
		SemCtls: v.SemCtls[:], MsgCtlmax: proto.Uint32(v.MsgCtlmax), MsgCtlmnb: proto.Uint32(v.MsgCtlmnb),
		MsgCtlmni: proto.Uint32(v.MsgCtlmni), AutoMsgmni: proto.Uint32(v.AutoMsgmni),
		ShmCtlmax: proto.Uint64(v.ShmCtlmax), ShmCtlall: proto.Uint64(v.ShmCtlall), ShmCtlmni: proto.Uint32(v.ShmCtlmni),
		ShmRmidForced: proto.Uint32(v.ShmRmidForced), MqQueuesMax: proto.Uint32(v.MqQueuesMax),
		MqMsgMax: proto.Uint32(v.MqMsgMax), MqMsgsizeMax: proto.Uint32(v.MqMsgsizeMax),
		MqMsgDefault: proto.Uint32(v.MqMsgDefault), MqMsgsizeDefault: proto.Uint32(v.MqMsgsizeDefault),
		MsgNextId: nextID(v.MsgNextID), SemNextId: nextID(v.SemNextID), ShmNextId: nextID(v.ShmNextID),
	}
}

// nextID is a *_next_id knob for the image: left out when unset (-1),
// which CRIU's restore would write, and the kernel refuses.
func nextID(v int32) *uint32 {
	if v < 0 {
		return nil
	}
	return proto.Uint32(uint32(v))
}

// readNamespaces reads the root's own UTS and IPC namespaces, if the dump
// has their images.
func readNamespaces(d *images.Dir, t *model.Tree) error {
	root := t.Root()
	if root == nil {
		return nil
	}
	if id := root.IDs.NS.UTS; id != 0 && d.Exists(utsnsImg(id)) {
		e, err := images.ReadOne[*utsns.UtsnsEntry](d, utsnsImg(id))
		if err != nil {
			return imgErr(utsnsImg(id), err)
		}
		t.UTS = &model.UTSNamespace{ID: id, Nodename: e.GetNodename(), Domainname: e.GetDomainname()}
	}
	if id := root.IDs.NS.IPC; id != 0 && d.Exists(ipcVarImg(id)) {
		ns, err := readIPC(d, id)
		if err != nil {
			return err
		}
		t.IPC = ns
	}
	return checkSysVMappings(t)
}

// checkSysVMappings refuses a SysV shm mapping that does not lie in a
// segment of the tree's own IPC namespace: the restore attaches it there.
func checkSysVMappings(t *model.Tree) error {
	size := map[uint64]uint64{}
	if t.IPC != nil {
		for _, s := range t.IPC.Shm {
			size[uint64(uint32(s.Desc.ID))] = roundUp(s.Size, pageSize)
		}
	}
	for _, k := range t.Tasks {
		if k.MM == nil {
			continue
		}
		for _, v := range k.MM.VMAs {
			if !v.SysV() {
				continue
			}
			sz, ok := size[v.Shmid]
			if !ok {
				return fmt.Errorf("%s: vma %#x-%#x: sysv shm segment %d is not in the dump's IPC namespace", images.MmImg(k.Pid), v.Start, v.End, v.Shmid)
			}
			if v.Pgoff > sz || v.End-v.Start > sz-v.Pgoff {
				return fmt.Errorf("%s: vma %#x-%#x: offset %#x past the end of sysv shm segment %d (%d bytes)", images.MmImg(k.Pid), v.Start, v.End, v.Pgoff, v.Shmid, sz)
			}
		}
	}
	return nil
}

func readIPC(d *images.Dir, id uint32) (*model.IPCNamespace, error) {
	ns := &model.IPCNamespace{ID: id}
	v, err := images.ReadOne[*ipc_var.IpcVarEntry](d, ipcVarImg(id))
	if err != nil {
		return nil, imgErr(ipcVarImg(id), err)
	}
	if len(v.GetSemCtls()) != 4 {
		return nil, fmt.Errorf("%s: %d sem_ctls, want 4", ipcVarImg(id), len(v.GetSemCtls()))
	}
	next := func(p *uint32) int32 {
		if p == nil {
			return -1
		}
		return int32(*p)
	}
	ns.Var = model.IPCVar{
		MsgCtlmax: v.GetMsgCtlmax(), MsgCtlmnb: v.GetMsgCtlmnb(), MsgCtlmni: v.GetMsgCtlmni(), AutoMsgmni: v.GetAutoMsgmni(),
		ShmCtlmax: v.GetShmCtlmax(), ShmCtlall: v.GetShmCtlall(), ShmCtlmni: v.GetShmCtlmni(), ShmRmidForced: v.GetShmRmidForced(),
		MqQueuesMax: v.GetMqQueuesMax(), MqMsgMax: v.GetMqMsgMax(), MqMsgsizeMax: v.GetMqMsgsizeMax(),
		MqMsgDefault: v.GetMqMsgDefault(), MqMsgsizeDefault: v.GetMqMsgsizeDefault(),
		MsgNextID: next(v.MsgNextId), SemNextID: next(v.SemNextId), ShmNextID: next(v.ShmNextId),
	}
	copy(ns.Var.SemCtls[:], v.GetSemCtls())
	if err := eachEntry(d, ipcShmImg(id), func(r *images.EntryReader) error {
		e := &ipc_shm.IpcShmEntry{}
		if err := r.Next(e); err != nil {
			return err
		}
		desc, err := modelDesc(e.GetDesc(), r.Name())
		if err != nil {
			return err
		}
		if e.GetHugetlbFlag() != 0 {
			return fmt.Errorf("%s: segment %d: hugetlb segment: not supported", r.Name(), desc.ID)
		}
		size := e.GetSize()
		if size == 0 || size > maxShmSize {
			return fmt.Errorf("%s: segment %d: size %d", r.Name(), desc.ID, size)
		}
		shm := model.SysVShm{Desc: desc, Size: size}
		if e.GetInPagemaps() {
			// CRIU's own layout: the pages in pagemap-shmem-ID.img.
			shm.Pages, err = sysvShmPages(d, desc.ID, size)
		} else {
			shm.Pages, err = sysvShmInline(r, size)
		}
		if err != nil {
			return err
		}
		ns.Shm = append(ns.Shm, shm)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := eachEntry(d, ipcSemImg(id), func(r *images.EntryReader) error {
		e := &ipc_sem.IpcSemEntry{}
		if err := r.Next(e); err != nil {
			return err
		}
		desc, err := modelDesc(e.GetDesc(), r.Name())
		if err != nil {
			return err
		}
		n := uint64(e.GetNsems())
		if n > maxSems {
			return fmt.Errorf("%s: set %d: %d semaphores", r.Name(), desc.ID, n)
		}
		b := make([]byte, roundUp(2*n, semPad))
		if err := r.ReadPayload(b); err != nil {
			return err
		}
		vals := make([]uint16, n)
		for i := range vals {
			vals[i] = binary.LittleEndian.Uint16(b[2*i:])
		}
		ns.Sem = append(ns.Sem, model.SysVSem{Desc: desc, Values: vals})
		return nil
	}); err != nil {
		return nil, err
	}
	if err := eachEntry(d, ipcMsgImg(id), func(r *images.EntryReader) error {
		e := &ipc_msg.IpcMsgEntry{}
		if err := r.Next(e); err != nil {
			return err
		}
		desc, err := modelDesc(e.GetDesc(), r.Name())
		if err != nil {
			return err
		}
		q := model.SysVMsgQueue{Desc: desc, QBytes: e.GetQbytes()}
		if e.GetQnum() > maxMsgs {
			return fmt.Errorf("%s: queue %d: %d messages", r.Name(), desc.ID, e.GetQnum())
		}
		for i := uint32(0); i < e.GetQnum(); i++ {
			var sz [4]byte
			if err := r.ReadPayload(sz[:]); err != nil {
				return err
			}
			n := binary.LittleEndian.Uint32(sz[:])
			if n > 64 {
				return fmt.Errorf("%s: queue %d: message %d header of %d bytes", r.Name(), desc.ID, i, n)
			}
			hb := make([]byte, n)
			if err := r.ReadPayload(hb); err != nil {
				return err
			}
			m := &ipc_msg.IpcMsg{}
			if err := proto.Unmarshal(hb, m); err != nil {
				return fmt.Errorf("%s: queue %d: message %d: %w", r.Name(), desc.ID, i, err)
			}
			if m.Mtype == nil || m.Msize == nil || m.GetMsize() > maxMsgSize || int64(m.GetMtype()) <= 0 {
				return fmt.Errorf("%s: queue %d: message %d: type %d, size %d", r.Name(), desc.ID, i, int64(m.GetMtype()), m.GetMsize())
			}
			b := make([]byte, roundUp(uint64(m.GetMsize()), msgPad))
			if err := r.ReadPayload(b); err != nil {
				return err
			}
			q.Msgs = append(q.Msgs, model.SysVMsg{Type: int64(m.GetMtype()), Data: b[:m.GetMsize():m.GetMsize()]})
		}
		ns.Msg = append(ns.Msg, q)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := readGodwitIPC(d, ns); err != nil {
		return nil, err
	}
	return ns, nil
}

// sysvShmPages reads the contents of segment id, size bytes, from its
// pagemap (CRIU's in_pagemaps): pages it does not list are zero. Each run
// is allocated as listed, and OpenPages has checked that the pages file
// holds them all: a corrupt size claims nothing.
func sysvShmPages(d *images.Dir, id int32, size uint64) ([]model.SysVShmPages, error) {
	name := images.PagemapShmemImg(uint64(uint32(id)))
	if !d.Exists(name) {
		return nil, nil
	}
	pr, err := images.OpenPages(d, name)
	if err != nil {
		return nil, imgErr(name, err)
	}
	defer pr.Close()
	end := roundUp(size, pageSize)
	var out []model.SysVShmPages
	for p := range pr.Ranges() {
		if !p.Present() || p.Vaddr > end || p.NrPages > (end-p.Vaddr)/pageSize {
			return nil, fmt.Errorf("%s: pages %#x+%d: not in the image, or past the end of segment %d (%d bytes)", name, p.Vaddr, p.NrPages, id, size)
		}
		b := make([]byte, p.NrPages*pageSize)
		if _, err := pr.ReadAt(b, p.Vaddr); err != nil {
			return nil, imgErr(name, err)
		}
		if p.End() > size {
			b = b[:size-p.Vaddr] // the segment's last page, past its end
		}
		out = append(out, model.SysVShmPages{Off: p.Vaddr, Data: b})
	}
	return out, nil
}

// sysvShmInline reads a segment's size bytes that follow its entry
// (in_pagemaps false), checking first that the image holds them, and
// keeps the pages that are not all zeros.
func sysvShmInline(r *images.EntryReader, size uint64) ([]model.SysVShmPages, error) {
	padded := roundUp(size, shmPad)
	if rem := r.Remaining(); rem >= 0 && uint64(rem) < padded {
		return nil, fmt.Errorf("%s: segment of %d bytes, %d left in the image", r.Name(), size, rem)
	}
	var out []model.SysVShmPages
	chunk := make([]byte, 1<<20)
	for off := uint64(0); off < padded; {
		n := min(uint64(len(chunk)), padded-off)
		if err := r.ReadPayload(chunk[:n]); err != nil {
			return nil, err
		}
		for p := uint64(0); p < n && off+p < size; p += pageSize {
			pg := chunk[p:min(p+pageSize, n, size-off)]
			if allZero(pg) {
				continue
			}
			if k := len(out) - 1; k >= 0 && out[k].Off+uint64(len(out[k].Data)) == off+p {
				out[k].Data = append(out[k].Data, pg...)
			} else {
				out = append(out, model.SysVShmPages{Off: off + p, Data: append([]byte(nil), pg...)})
			}
		}
		off += n
	}
	return out, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// writeShmPages writes the segment's pages as CRIU's pagemap-shmem-ID
// (whole pages: the last one padded with zeros).
func writeShmPages(d *images.Dir, name string, pagesID uint32, s *model.SysVShm) error {
	pw, err := images.CreatePages(d, name, pagesID)
	if err != nil {
		return err
	}
	for _, p := range s.Pages {
		nr := roundUp(uint64(len(p.Data)), pageSize) / pageSize
		if err := pw.Add(p.Off, nr, images.PagePresent); err != nil {
			pw.Abort()
			return err
		}
		_, err := pw.Write(p.Data)
		if err == nil {
			_, err = pw.Write(make([]byte, nr*pageSize-uint64(len(p.Data))))
		}
		if err != nil {
			pw.Abort()
			return err
		}
	}
	return pw.Close()
}

// writeShmInline writes the segment's size bytes after its entry, padded
// to shmPad, zeros streamed between its pages.
func writeShmInline(w *images.EntryWriter, s *model.SysVShm) error {
	zeros := make([]byte, 1<<16)
	fill := func(n uint64) error {
		for n > 0 {
			k := min(n, uint64(len(zeros)))
			if err := w.WritePayload(zeros[:k]); err != nil {
				return err
			}
			n -= k
		}
		return nil
	}
	var at uint64
	for _, p := range s.Pages {
		if err := fill(p.Off - at); err != nil {
			return err
		}
		if err := w.WritePayload(p.Data); err != nil {
			return err
		}
		at = p.Off + uint64(len(p.Data))
	}
	return fill(roundUp(s.Size, shmPad) - at)
}

// eachEntry calls one for each entry (with its payload) of name, until
// the end of the file.
func eachEntry(d *images.Dir, name string, one func(r *images.EntryReader) error) error {
	r, err := d.OpenImage(name)
	if err != nil {
		return imgErr(name, err)
	}
	defer r.Close()
	for r.Remaining() != 0 {
		if err := one(r); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return imgErr(name, err)
		}
	}
	return nil
}
