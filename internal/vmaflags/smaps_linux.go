package vmaflags

import (
	"errors"
	"fmt"
	"slices"

	"godwit/internal/procfs"
)

// ErrUnnamed says a VMA carries a flag Calibrate never saw, or one whose
// smaps counters a dump needs (hugetlb: its page size): read smaps.
var ErrUnnamed = errors.New("vmaflags: a VMA has flags not learnt on this kernel")

// Smaps is /proc/PID/smaps without its page walk: /proc/PID/maps for the
// mappings, the iterator for their flags, named as smaps names them. The
// entries have no counters (Fields is empty). The process must be frozen
// (its VMAs cannot change between the two reads); the two lists must
// then be the same VMAs, or it fails. ErrUnnamed (wrapped) means smaps
// must be read instead.
func Smaps(pid int, n *Names) ([]procfs.SmapsEntry, error) {
	ms, err := procfs.ReadMaps(pid)
	if err != nil {
		return nil, err
	}
	vs, err := Read(pid)
	if err != nil {
		return nil, err
	}
	out := make([]procfs.SmapsEntry, 0, len(ms))
	j := 0
	for _, m := range ms {
		e := procfs.SmapsEntry{Mapping: m, Fields: map[string]uint64{}}
		if m.Path == "[vsyscall]" {
			// The gate area: no VMA of the mm, always "rd ex" (or
			// none when not readable), never read by a dump.
			out = append(out, e)
			continue
		}
		if j >= len(vs) || vs[j].Start != m.Start || vs[j].End != m.End {
			return nil, fmt.Errorf("vmaflags: pid %d: maps has %#x-%#x, the iterator does not: not frozen?", pid, m.Start, m.End)
		}
		codes, ok := n.Mnemonics(vs[j].Flags)
		if !ok {
			return nil, fmt.Errorf("%w: %#x-%#x has flags %#x (known %#x)", ErrUnnamed, m.Start, m.End, vs[j].Flags, n.Known())
		}
		if slices.Contains(codes, "ht") {
			return nil, fmt.Errorf("%w: %#x-%#x is hugetlb", ErrUnnamed, m.Start, m.End)
		}
		e.VmFlags = codes
		out = append(out, e)
		j++
	}
	if j != len(vs) {
		return nil, fmt.Errorf("vmaflags: pid %d: the iterator has %d VMAs more than maps: not frozen?", pid, len(vs)-j)
	}
	return out, nil
}
