package restorer

import (
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/model/criuimg"
	"godwit/internal/pagexfer"
)

// thread is one dumped thread.
type thread = model.Thread

// taskImages is the one process to restore, as the codec read it, and its
// page streams.
type taskImages struct {
	pid     int
	tree    *model.Tree
	task    *model.Task
	threads []*thread // leader first
	mm      *model.MM
	pages   *images.PageReader // nil when the dump has no private pages
	chain   *pagexfer.Chain    // pages resolved through the parent images; nil: none needed
	shmem   map[uint64]*images.PageReader
}

func (ti *taskImages) close() {
	if ti == nil {
		return
	}
	if ti.chain != nil {
		ti.chain.Close()
	}
	if ti.pages != nil {
		ti.pages.Close()
	}
	for _, p := range ti.shmem {
		if p != nil {
			p.Close()
		}
	}
}

// leader returns the main thread.
func (ti *taskImages) leader() *thread { return ti.threads[0] }

// readImages reads and checks the images of the one process in d.
func readImages(d *images.Dir) (ti *taskImages, err error) {
	tree, err := criuimg.Read(d)
	if err != nil {
		return nil, err
	}
	if len(tree.Tasks) > 1 {
		var pids []string
		for _, k := range tree.Tasks[1:] {
			pids = append(pids, fmt.Sprint(k.Pid))
		}
		return nil, fmt.Errorf("%s: process trees are not supported yet: %d has children %s",
			images.PstreeImg, tree.Root().Pid, strings.Join(pids, ","))
	}
	k := tree.Root()
	switch k.State {
	case model.Alive, model.Stopped:
	default:
		return nil, fmt.Errorf("%s: task state %v cannot be restored", images.CoreImg(k.Pid), k.State)
	}
	if k.MM == nil || k.FS == nil {
		return nil, fmt.Errorf("%s: task %d has no mm or fs", images.PstreeImg, k.Pid)
	}
	ti = &taskImages{pid: k.Pid, tree: tree, task: k, threads: k.Threads, mm: k.MM, shmem: map[uint64]*images.PageReader{}}
	built := ti
	defer func() {
		if err != nil {
			built.close()
		}
	}()
	if err := ti.readPages(d); err != nil {
		return nil, err
	}
	return ti, nil
}

// imgErr names the image in err unless it already does.
func imgErr(name string, err error) error {
	if strings.Contains(err.Error(), name) {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}

// vmaKind names a VMA's kind for messages.
func vmaKind(v *model.VMA) string { return criuimg.VMAKind(v.Status) }

func (ti *taskImages) readPages(d *images.Dir) error {
	name := images.PagemapImg(ti.pid)
	pr, err := images.OpenPages(d, name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !d.Exists(name) {
			return fmt.Errorf("%s: %w", name, err)
		}
		return imgErr(name, err)
	}
	ti.pages = pr
	vmas := ti.mm.VMAs
	inParent := false
	for p := range pr.Ranges() {
		inParent = inParent || p.Flags&images.PageInParent != 0
		if !coveredPrivate(vmas, p.Vaddr, p.End()) {
			return fmt.Errorf("%s: pages %#x-%#x lie outside the private VMAs of %s", name, p.Vaddr, p.End(), images.MmImg(ti.pid))
		}
	}
	if inParent {
		// An incremental dump: PARENT entries read through "parent".
		if ti.chain, err = pagexfer.OpenChain(d, name, pr); err != nil {
			return err
		}
	}
	for _, v := range vmas {
		if !v.SharedAnon() {
			continue
		}
		id := v.Shmid
		if _, ok := ti.shmem[id]; ok {
			continue
		}
		sn := images.PagemapShmemImg(id)
		if !d.Exists(sn) {
			ti.shmem[id] = nil // never written to: zero pages
			continue
		}
		spr, err := images.OpenPages(d, sn)
		if err != nil {
			return imgErr(sn, err)
		}
		ti.shmem[id] = spr
	}
	return nil
}

// coveredPrivate reports whether [s, e) lies in private VMAs (sorted)
// that can hold dumped pages.
func coveredPrivate(vmas []model.VMA, s, e uint64) bool {
	i := sort.Search(len(vmas), func(i int) bool { return vmas[i].End > s })
	for ; s < e && i < len(vmas); i++ {
		v := &vmas[i]
		if v.Start > s || v.Status&(images.VmaAnonShared|images.VmaFileShared|images.VmaAreaVdso|images.VmaAreaVvar|images.VmaAreaVsyscall) != 0 {
			return false
		}
		s = v.End
	}
	return s >= e
}

// filePath returns the path of file id.
func (ti *taskImages) filePath(id model.ID) string { return ti.tree.Files[id].Path }
