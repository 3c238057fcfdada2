package restorer

import (
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/model/criuimg"
	"godwit/internal/pagexfer"
)

// thread is one dumped thread.
type thread = model.Thread

// taskImages is one process to restore, as the codec read it, and its
// page streams. The root's also lists every task of the tree.
type taskImages struct {
	pid     int
	tree    *model.Tree
	task    *model.Task
	threads []*thread // leader first; none for a dead task
	mm      *model.MM
	pages   *images.PageReader // nil when the dump has no private pages
	chain   *pagexfer.Chain    // pages resolved through the parent images; nil: none needed
	// shmem are the shared anonymous objects this task makes and fills
	// (the first task of the tree that maps each), by shmid.
	shmem map[uint64]*images.PageReader
	// shmChain resolves the objects of shmem whose pagemap keeps pages
	// in the parent images (an incremental dump).
	shmChain map[uint64]*pagexfer.Chain
	// shmOwner is the task that makes each shared anonymous object of
	// the tree, by shmid; shmSize its size (its largest mapped end).
	shmOwner map[uint64]int
	shmSize  map[uint64]uint64
	tasks    []*taskImages // the root's: every task, the root first
}

func (ti *taskImages) close() {
	if ti == nil {
		return
	}
	for _, t := range ti.tasks {
		if t != ti {
			t.closeOwn()
		}
	}
	ti.closeOwn()
}

func (ti *taskImages) closeOwn() {
	if ti.chain != nil {
		ti.chain.Close()
		ti.chain = nil
	}
	if ti.pages != nil {
		ti.pages.Close()
		ti.pages = nil
	}
	for id, c := range ti.shmChain {
		c.Close()
		delete(ti.shmChain, id)
	}
	for id, p := range ti.shmem {
		if p != nil {
			p.Close()
		}
		delete(ti.shmem, id)
	}
}

// leader returns the main thread.
func (ti *taskImages) leader() *thread { return ti.threads[0] }

// dead reports a task that was a zombie: it is restored as one.
func (ti *taskImages) dead() bool {
	return ti.task.State == model.Dead || ti.task.State == model.Zombie
}

// readImages reads and checks the images of the tree in d, and returns
// its root.
func readImages(d *images.Dir) (root *taskImages, err error) {
	tree, err := criuimg.Read(d)
	if err != nil {
		return nil, err
	}
	if err := checkTree(tree); err != nil {
		return nil, fmt.Errorf("%s: %w", images.PstreeImg, err)
	}
	shmOwner, shmSize := map[uint64]int{}, map[uint64]uint64{}
	for _, k := range tree.Tasks {
		if k.MM == nil {
			continue
		}
		for _, v := range k.MM.VMAs {
			if v.SharedAnon() {
				if _, ok := shmOwner[v.Shmid]; !ok {
					shmOwner[v.Shmid] = k.Pid
				}
				shmSize[v.Shmid] = max(shmSize[v.Shmid], v.Pgoff+v.End-v.Start)
			}
		}
	}
	var all, live []*taskImages
	defer func() {
		if err != nil {
			for _, t := range all {
				t.closeOwn()
			}
		}
	}()
	for _, k := range tree.Tasks {
		ti := &taskImages{pid: k.Pid, tree: tree, task: k, threads: k.Threads, mm: k.MM,
			shmem: map[uint64]*images.PageReader{}, shmOwner: shmOwner, shmSize: shmSize}
		all = append(all, ti)
		switch k.State {
		case model.Alive, model.Stopped:
		case model.Dead, model.Zombie:
			if k == tree.Root() {
				return nil, fmt.Errorf("%s: the root task %d is dead", images.CoreImg(k.Pid), k.Pid)
			}
			continue
		default:
			return nil, fmt.Errorf("%s: task state %v cannot be restored", images.CoreImg(k.Pid), k.State)
		}
		if k.MM == nil || k.FS == nil {
			return nil, fmt.Errorf("%s: task %d has no mm or fs", images.PstreeImg, k.Pid)
		}
		live = append(live, ti)
	}
	// Several tasks' page maps at once: each opens and checks its own.
	errs := make([]error, len(live))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(pageReaders, len(live)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(live); i = int(next.Add(1) - 1) {
				errs[i] = live[i].readPages(d)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	all[0].tasks = all
	return all[0], nil
}

// pageReaders is how many tasks' page maps readImages opens at once.
const pageReaders = 8

// checkTree refuses a tree whose links cannot be restored: a parent that
// is not an earlier task, a pid or tid used twice.
func checkTree(t *model.Tree) error {
	procs, ids := map[int]bool{}, map[int]bool{}
	for i, k := range t.Tasks {
		if i > 0 && !procs[k.Ppid] {
			return fmt.Errorf("task %d: parent %d is not an earlier task of the tree", k.Pid, k.Ppid)
		}
		if ids[k.Pid] {
			return fmt.Errorf("pid %d used twice", k.Pid)
		}
		ids[k.Pid], procs[k.Pid] = true, true
		for _, th := range k.Threads {
			if th.Tid == k.Pid {
				continue
			}
			if ids[th.Tid] || t.Task(th.Tid) != nil {
				return fmt.Errorf("task %d: tid %d used twice", k.Pid, th.Tid)
			}
			ids[th.Tid] = true
		}
	}
	return nil
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
	for _, v := range vmas {
		if v.Status&images.VmaAreaVdso != 0 {
			// CRIU's dump and godwit's record the vDSO's pages; the
			// restored task keeps this kernel's vDSO (moveVdso).
			if err := pr.Skip(v.Start, v.End); err != nil {
				return err
			}
		}
	}
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
		if !v.SharedAnon() || ti.shmOwner[v.Shmid] != ti.pid {
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
		if pagexfer.NeedsParent(spr) {
			c, err := pagexfer.OpenChain(d, sn, spr)
			if err != nil {
				return err
			}
			if ti.shmChain == nil {
				ti.shmChain = map[uint64]*pagexfer.Chain{}
			}
			ti.shmChain[id] = c
		}
	}
	return nil
}

// coveredPrivate reports whether [s, e) lies in private VMAs (sorted)
// that can hold dumped pages.
func coveredPrivate(vmas []model.VMA, s, e uint64) bool {
	i := sort.Search(len(vmas), func(i int) bool { return vmas[i].End > s })
	for ; s < e && i < len(vmas); i++ {
		v := &vmas[i]
		if v.Start > s || v.Status&(images.VmaAnonShared|images.VmaFileShared|images.VmaAreaSysvipc|images.VmaAreaVdso|images.VmaAreaVvar|images.VmaAreaVsyscall) != 0 {
			return false
		}
		s = v.End
	}
	return s >= e
}

// filePath returns the path of file id.
func (ti *taskImages) filePath(id model.ID) string { return ti.tree.Files[id].Path }
