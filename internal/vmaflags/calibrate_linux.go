package vmaflags

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/uffd"
)

// Names says how smaps names the vm_flags bits on this kernel. smaps
// prints, for each set bit in ascending order, that bit's two-letter
// mnemonic (none for some bits): Calibrate learns the table from this
// process's own VMAs, with probe mappings made to carry the flags a dump
// reads, and checks it against every VMA it saw. A bit it never saw set
// stays unknown: flags with such a bit cannot be named (Mnemonics).
type Names struct {
	known uint64     // bits learnt (named or unnamed)
	names [64]string // "" for a known bit that smaps does not name
}

var calib struct {
	once sync.Once
	n    *Names
	err  error
}

// Calibrate returns the table of this kernel, learnt once per process
// (the first call loads the BPF program and costs ~0.2 s).
func Calibrate() (*Names, error) {
	calib.once.Do(func() {
		calib.n, calib.err = calibrate()
	})
	return calib.n, calib.err
}

// Mnemonics names flags as smaps would, or says it cannot (a set bit
// Calibrate never saw).
func (n *Names) Mnemonics(flags uint64) ([]string, bool) {
	if flags&^n.known != 0 {
		return nil, false
	}
	var out []string
	for f := flags; f != 0; f &= f - 1 {
		if s := n.names[bits.TrailingZeros64(f)]; s != "" {
			out = append(out, s)
		}
	}
	return out, true
}

// Known are the bits learnt.
func (n *Names) Known() uint64 { return n.known }

// pair is one VMA seen both ways.
type pair struct {
	flags uint64
	codes []string
}

func calibrate() (*Names, error) {
	if _, err := program(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	undo, err := probes()
	defer undo()
	if err != nil {
		return nil, fmt.Errorf("vmaflags: probe mappings: %w", err)
	}
	// Twice, and the two tables must agree: a VMA of this (running)
	// process that changed between the reads could mislead one learning.
	var prev *Names
	for range 2 {
		ps, err := observe(os.Getpid())
		if err != nil {
			return nil, err
		}
		n, err := learn(ps)
		if err != nil {
			return nil, err
		}
		if prev != nil && *prev != *n {
			return nil, errors.New("vmaflags: two calibrations disagree")
		}
		prev = n
	}
	return prev, nil
}

// observe reads pid's VMAs through the iterator, then smaps, then the
// iterator again, and keeps the VMAs that stayed the same.
func observe(pid int) ([]pair, error) {
	a, err := Read(pid)
	if err != nil {
		return nil, err
	}
	sm, err := procfs.ReadSmaps(pid)
	if err != nil {
		return nil, err
	}
	b, err := Read(pid)
	if err != nil {
		return nil, err
	}
	var out []pair
	for i := range sm {
		e := &sm[i]
		k := slices.IndexFunc(a, func(v VMA) bool { return v.Start == e.Start && v.End == e.End })
		if k < 0 || !slices.Contains(b, a[k]) {
			continue
		}
		out = append(out, pair{flags: a[k].Flags, codes: e.VmFlags})
	}
	return out, nil
}

// learn infers each bit's mnemonic from pairs: a bit's name is printed in
// every VMA with the bit and in none without it. Bits that always come
// together are told apart by smaps' order (ascending bits). The table
// must then reproduce every pair exactly.
func learn(ps []pair) (*Names, error) {
	var seen uint64
	for _, p := range ps {
		seen |= p.flags
	}
	cand := map[int][]string{}
	for b := range 64 {
		if seen&(1<<b) == 0 {
			continue
		}
		var in []string
		first := true
		excluded := map[string]bool{}
		for _, p := range ps {
			if p.flags&(1<<b) == 0 {
				for _, c := range p.codes {
					excluded[c] = true
				}
				continue
			}
			if first {
				in, first = slices.Clone(p.codes), false
				continue
			}
			in = slices.DeleteFunc(in, func(c string) bool { return !slices.Contains(p.codes, c) })
		}
		in = slices.DeleteFunc(in, func(c string) bool { return excluded[c] })
		cand[b] = in
	}
	n := &Names{}
	for b, cs := range cand {
		switch {
		case len(cs) <= 1:
		default:
			// The bits sharing exactly this candidate set, as many as
			// its names: the k-th lowest bit takes the k-th name in
			// smaps' order (any pair shows them in bit order).
			var group []int
			for b2, cs2 := range cand {
				if slices.Equal(cs, cs2) {
					group = append(group, b2)
				}
			}
			if len(group) != len(cs) {
				continue // ambiguous: stays unknown
			}
			slices.Sort(group)
			var order []string
			for _, p := range ps {
				if p.flags&(1<<b) != 0 {
					order = slices.DeleteFunc(slices.Clone(p.codes), func(c string) bool { return !slices.Contains(cs, c) })
					break
				}
			}
			n.names[b] = order[slices.Index(group, b)]
			n.known |= 1 << b
			continue
		}
		if len(cs) == 1 {
			n.names[b] = cs[0]
		}
		n.known |= 1 << b
	}
	// No name twice.
	used := map[string]int{}
	for b := range 64 {
		if s := n.names[b]; s != "" {
			if o, ok := used[s]; ok {
				return nil, fmt.Errorf("vmaflags: bits %d and %d both learnt as %q", o, b, s)
			}
			used[s] = b
		}
	}
	// Every pair the table can name must come out exactly as smaps
	// printed it; a bit in no such pair is not known after all.
	var proven uint64
	for _, p := range ps {
		got, ok := n.Mnemonics(p.flags)
		if !ok {
			continue
		}
		if !slices.Equal(got, p.codes) {
			return nil, fmt.Errorf("vmaflags: flags %#x: learnt %v, smaps says %v", p.flags, got, p.codes)
		}
		proven |= p.flags
	}
	n.known &= proven
	for b := range 64 {
		if n.known&(1<<b) == 0 {
			n.names[b] = ""
		}
	}
	return n, nil
}

// probes maps regions in this process that carry the flags a dump reads
// (madvise advice, mlock, growsdown, noreserve, shared, exec, droppable,
// userfaultfd registrations), each where the others cannot merge with it.
// Advice this kernel refuses is left out: such a bit stays unknown.
func probes() (func(), error) {
	var maps [][2]uintptr
	var closers []func()
	undo := func() {
		for _, c := range closers {
			c()
		}
		for _, m := range maps {
			_, _, _ = unix.Syscall(unix.SYS_MUNMAP, m[0], m[1], 0)
		}
	}
	const pg = 4096
	mk := func(prot, flags int) (uintptr, error) {
		// Two pages with a hole after: no merge with a neighbour.
		a, _, errno := unix.Syscall6(unix.SYS_MMAP, 0, 3*pg, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE, ^uintptr(0), 0)
		if errno != 0 {
			return 0, errno
		}
		maps = append(maps, [2]uintptr{a, 3 * pg})
		if _, _, errno := unix.Syscall6(unix.SYS_MMAP, a, 2*pg, uintptr(prot), uintptr(flags)|unix.MAP_FIXED|unix.MAP_ANONYMOUS, ^uintptr(0), 0); errno != 0 {
			return 0, errno
		}
		return a, nil
	}
	rw := unix.PROT_READ | unix.PROT_WRITE
	for _, adv := range []int{unix.MADV_DONTFORK, unix.MADV_WIPEONFORK, unix.MADV_DONTDUMP, unix.MADV_HUGEPAGE,
		unix.MADV_NOHUGEPAGE, unix.MADV_MERGEABLE, unix.MADV_SEQUENTIAL, unix.MADV_RANDOM, madvGuardInstall} {
		a, err := mk(rw, unix.MAP_PRIVATE)
		if err != nil {
			return undo, err
		}
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, a, pg, uintptr(adv))
	}
	for _, f := range []struct{ prot, flags int }{
		{rw, unix.MAP_PRIVATE},
		{unix.PROT_READ, unix.MAP_PRIVATE},
		{unix.PROT_READ | unix.PROT_EXEC, unix.MAP_PRIVATE},
		{rw, unix.MAP_SHARED},
		{unix.PROT_READ, unix.MAP_SHARED},
		{rw, unix.MAP_PRIVATE | unix.MAP_NORESERVE},
		{rw, unix.MAP_PRIVATE | unix.MAP_GROWSDOWN},
		{rw, unix.MAP_PRIVATE | unix.MAP_LOCKED},
		{rw, unix.MAP_DROPPABLE},
	} {
		if _, err := mk(f.prot, f.flags); err != nil && f.flags&(unix.MAP_DROPPABLE|unix.MAP_LOCKED) == 0 {
			return undo, err
		}
	}
	// The tracker's registration (write-protect, asynchronous) and the
	// lazy restore's (missing).
	for _, mode := range []uint64{uffd.ModeWP, uffd.ModeMissing, uffd.ModeWP | uffd.ModeMissing} {
		u, err := uffd.Open(0)
		if err != nil {
			return undo, nil // no userfaultfd: those bits stay unknown
		}
		closers = append(closers, func() { u.Close() })
		if _, err := u.API(uffd.FeatureWPAsync | uffd.FeatureWPUnpopulated); err != nil {
			return undo, nil
		}
		a, err := mk(rw, unix.MAP_PRIVATE)
		if err != nil {
			return undo, err
		}
		_, _ = u.Register(uint64(a), pg, mode)
	}
	return undo, nil
}

// madvGuardInstall is MADV_GUARD_INSTALL (include/uapi/asm-generic/mman-common.h, 6.13+).
const madvGuardInstall = 102
