package drivers

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// TestClassifyVMAKinds: the mapping kinds of the task-state items are
// classified (droppable, private hugetlb, shared file mappings reopened
// by VM_MAYWRITE) or refused by name (AIO rings, shared hugetlb).
func TestClassifyVMAKinds(t *testing.T) {
	const mb2 = 2 << 20
	m := func(path string, shared, write, deleted bool, ino uint64, flags ...string) *procfs.SmapsEntry {
		return &procfs.SmapsEntry{
			Mapping: procfs.Mapping{Start: 16 * mb2, End: 17 * mb2, Read: true, Write: write, Shared: shared, Path: path, Deleted: deleted, Inode: ino},
			Fields:  map[string]uint64{"KernelPageSize": mb2},
			VmFlags: flags,
		}
	}
	v, err := classifyVMA(1, m("", false, true, false, 0, "rd", "wr", "nr", "wf", "dd", "dp"), nil)
	if err != nil || !v.Droppable || !v.Private() {
		t.Errorf("droppable: %+v %v", v, err)
	}
	v, err = classifyVMA(1, m("/anon_hugepage", false, true, true, 5, "rd", "wr", "ht"), nil)
	if err != nil || v.HugePage != mb2 || !v.Private() || v.Flags&unix.MAP_ANONYMOUS == 0 {
		t.Errorf("private hugetlb: %+v %v", v, err)
	}
	for _, c := range []struct {
		e    *procfs.SmapsEntry
		want string
	}{
		{m("/[aio]", true, true, true, 9, "rd", "wr", "sh"), "AIO ring"},
		{m("/anon_hugepage", true, true, true, 5, "rd", "wr", "sh", "ht"), "hugetlb"},
		{m("/memfd:x", true, true, true, 5, "rd", "wr", "sh", "ht"), "hugetlb"},
	} {
		if _, err := classifyVMA(1, c.e, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.e.Path, err, c.want)
		}
	}
}
