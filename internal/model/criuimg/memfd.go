package criuimg

import (
	"fmt"
	"sort"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
)

// memfds, as CRIU keeps them: each description (and each mapping's file)
// is a MEMFD entry of files.img naming an inode of memfd.img by inode_id;
// the inode's contents are the pages of pagemap-shmem-SHMID.img, with
// the offset in the file as address.

// MemfdImg holds the memfd inodes (MEMFD_INODE entries).
const MemfdImg = "memfd.img"

// memfdPagesBase is where the pages ids of memfd contents start: above
// any the dumper gives out (one per task and shared object, from 1).
const memfdPagesBase = 1 << 20

// maxMemfd bounds the size of a memfd in an image (shmem files are
// bounded by memory; a hostile image must not ask for more).
const maxMemfd = 1 << 40

// memfdInodes numbers the tree's memfd inodes from 1 in file id order.
func memfdInodes(t *model.Tree) (map[*model.MemfdState]uint32, []*model.MemfdState) {
	ids := map[*model.MemfdState]uint32{}
	var order []*model.MemfdState
	for _, id := range t.FileIDs() {
		ms := t.Files[id].Memfd
		if t.Files[id].Kind != model.Memfd || ms == nil {
			continue
		}
		if _, ok := ids[ms]; !ok {
			order = append(order, ms)
			ids[ms] = uint32(len(order))
		}
	}
	return ids, order
}

// memfdEntry is the files.img entry of a memfd description.
func memfdEntry(f *model.File, inode uint32) *fdinfo.FileEntry {
	id := proto.Uint32(uint32(f.ID))
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_MEMFD.Enum(), Id: id, Memfd: &memfd.MemfdFileEntry{
		Id: id, Flags: proto.Uint32(f.Flags), Pos: proto.Uint64(f.Pos), Fown: noFown(), InodeId: proto.Uint32(inode),
	}}
}

// writeMemfds writes memfd.img and each inode's contents. The shmid of
// an inode is its kernel inode number (memfds and shared anonymous
// memory are inodes of one shmem mount, so their shmids never clash).
func writeMemfds(d *images.Dir, order []*model.MemfdState, written func(string)) error {
	if len(order) == 0 {
		return nil
	}
	var es []proto.Message
	pagesID := uint32(memfdPagesBase)
	for i, ms := range order {
		if ms.Ino > 1<<32-1 || ms.Ino == 0 {
			return fmt.Errorf("memfd %s: inode %d does not fit a shmid", ms.Name, ms.Ino)
		}
		shmid := uint32(ms.Ino)
		es = append(es, &memfd.MemfdInodeEntry{
			Name: proto.String(ms.Name), Uid: proto.Uint32(ms.UID), Gid: proto.Uint32(ms.GID), Size: proto.Uint64(ms.Size),
			Shmid: proto.Uint32(shmid), Seals: proto.Uint32(ms.Seals), InodeId: proto.Uint64(uint64(i + 1)), Mode: proto.Uint32(ms.Mode),
		})
		if len(ms.Extents) == 0 {
			continue
		}
		for d.Exists(images.PagesImg(pagesID)) {
			pagesID++
		}
		name := images.PagemapShmemImg(uint64(shmid))
		if written != nil {
			written(name)
			written(images.PagesImg(pagesID))
		}
		if err := writeMemfdPages(d, name, pagesID, ms); err != nil {
			return fmt.Errorf("memfd %s: %w", ms.Name, err)
		}
		pagesID++
	}
	if written != nil {
		written(MemfdImg)
	}
	w, err := d.CreateImage(MemfdImg)
	if err != nil {
		return err
	}
	for _, e := range es {
		if err := w.Write(e); err != nil {
			w.Close()
			return err
		}
	}
	return w.Close()
}

// writeMemfdPages writes the extents as whole pages (the last one of the
// file padded with zeros, as the page cache holds it).
func writeMemfdPages(d *images.Dir, name string, pagesID uint32, ms *model.MemfdState) error {
	pw, err := images.CreatePages(d, name, pagesID)
	if err != nil {
		return err
	}
	for _, e := range ms.Extents {
		if e.Off%images.PageSize != 0 || len(e.Data) == 0 {
			pw.Abort()
			return fmt.Errorf("extent at %d of %d bytes not page aligned", e.Off, len(e.Data))
		}
		nr := (uint64(len(e.Data)) + images.PageSize - 1) / images.PageSize
		if err := pw.Add(e.Off, nr, images.PagePresent); err != nil {
			pw.Abort()
			return err
		}
		pad := make([]byte, nr*images.PageSize-uint64(len(e.Data)))
		_, err := pw.Write(e.Data)
		if err == nil {
			_, err = pw.Write(pad)
		}
		if err != nil {
			pw.Abort()
			return err
		}
	}
	return pw.Close()
}

// readMemfds reads memfd.img and the contents of each inode, and makes
// each MEMFD entry of files.img a Memfd file.
func readMemfds(d *images.Dir, entries []*fdinfo.FileEntry, files map[model.ID]*model.File) error {
	if len(entries) == 0 {
		return nil
	}
	es, err := images.ReadAll[*memfd.MemfdInodeEntry](d, MemfdImg)
	if err != nil {
		return imgErr(MemfdImg, err)
	}
	inodes := map[uint64]*model.MemfdState{}
	for _, e := range es {
		if _, dup := inodes[e.GetInodeId()]; dup {
			return fmt.Errorf("%s: inode %d twice", MemfdImg, e.GetInodeId())
		}
		ms, err := readMemfdInode(d, e)
		if err != nil {
			return fmt.Errorf("%s: inode %d: %w", MemfdImg, e.GetInodeId(), err)
		}
		inodes[e.GetInodeId()] = ms
	}
	for _, e := range entries {
		id := model.ID(e.GetId())
		m := e.GetMemfd()
		if m == nil {
			return fmt.Errorf("%s: file %d: MEMFD without its memfd entry", images.FilesImg, id)
		}
		ms := inodes[uint64(m.GetInodeId())]
		if ms == nil {
			return fmt.Errorf("%s: file %d: memfd inode %d is not in %s", images.FilesImg, id, m.GetInodeId(), MemfdImg)
		}
		files[id] = &model.File{ID: id, Kind: model.Memfd, Path: "/memfd:" + ms.Name, Flags: m.GetFlags(), Pos: m.GetPos(), MntID: -1, Memfd: ms}
	}
	return nil
}

func readMemfdInode(d *images.Dir, e *memfd.MemfdInodeEntry) (*model.MemfdState, error) {
	switch {
	case e.GetHugetlbFlag() != 0:
		return nil, fmt.Errorf("hugetlb memfd (flag %#x) is not supported yet", e.GetHugetlbFlag())
	case e.GetSize() > maxMemfd:
		return nil, fmt.Errorf("size %d over %d", e.GetSize(), uint64(maxMemfd))
	case len(e.GetName()) > 249:
		return nil, fmt.Errorf("name of %d bytes", len(e.GetName()))
	case e.GetSeals()&^uint32(unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_FUTURE_WRITE|unix.F_SEAL_EXEC) != 0:
		return nil, fmt.Errorf("unknown seals %#x", e.GetSeals())
	}
	for _, c := range []byte(e.GetName()) {
		if c == 0 || c == '/' {
			return nil, fmt.Errorf("name %q", e.GetName())
		}
	}
	mode := uint32(0o777) // CRIU before the mode field: memfd_create's
	if e.Mode != nil {
		mode = e.GetMode() & 0o7777
	}
	ms := &model.MemfdState{
		Dev: ^uint64(0), Ino: e.GetInodeId(), Name: e.GetName(), Size: e.GetSize(), Seals: e.GetSeals(), Mode: mode, UID: e.GetUid(), GID: e.GetGid(),
	}
	name := images.PagemapShmemImg(uint64(e.GetShmid()))
	if !d.Exists(name) {
		return ms, nil // never written to
	}
	pr, err := images.OpenPages(d, name)
	if err != nil {
		return nil, imgErr(name, err)
	}
	defer pr.Close()
	pst, err := pr.PagesFile().Stat()
	if err != nil {
		return nil, err
	}
	left := uint64(pst.Size()) // bounds what a bad pagemap can make us allocate
	for p := range pr.Ranges() {
		if !p.Present() {
			return nil, fmt.Errorf("%s: pages at %#x not in this image (flags %#x): parent images of memfds are not supported", name, p.Vaddr, p.Flags)
		}
		if p.Vaddr >= ms.Size {
			return nil, fmt.Errorf("%s: pages at %#x past the size %d", name, p.Vaddr, ms.Size)
		}
		if p.NrPages > left/images.PageSize {
			return nil, fmt.Errorf("%s: %d pages at %#x, more than its pages file holds", name, p.NrPages, p.Vaddr)
		}
		left -= p.NrPages * images.PageSize
		n := min(p.NrPages*images.PageSize, ms.Size-p.Vaddr)
		b := make([]byte, n)
		if _, err := pr.ReadAt(b, p.Vaddr); err != nil {
			return nil, err
		}
		ms.Extents = append(ms.Extents, model.MemfdExtent{Off: p.Vaddr, Data: b})
	}
	sort.Slice(ms.Extents, func(i, j int) bool { return ms.Extents[i].Off < ms.Extents[j].Off })
	return ms, nil
}
