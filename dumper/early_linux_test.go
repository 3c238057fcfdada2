package dumper

import (
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
)

// The early private dump stands only if smaps shows the mappings it
// walked: any difference in what the walk looks at fails the dump.
func TestEarlyPrivateCheck(t *testing.T) {
	anon := VMA{Start: 0x10000, End: 0x20000, Prot: unix.PROT_READ | unix.PROT_WRITE, Status: images.VmaAreaRegular | images.VmaAnonPrivate}
	heap := VMA{Start: 0x30000, End: 0x31000, Prot: unix.PROT_READ | unix.PROT_WRITE, Path: "[heap]", Status: images.VmaAreaRegular | images.VmaAnonPrivate}
	file := VMA{Start: 0x40000, End: 0x41000, Prot: unix.PROT_READ, Path: "/bin/true", Status: images.VmaAreaRegular | images.VmaFilePrivate}
	vdso := VMA{Start: 0x50000, End: 0x52000, Prot: unix.PROT_READ | unix.PROT_EXEC, Path: "[vdso]", Status: images.VmaAreaRegular | images.VmaAreaVdso}
	e := &earlyPrivate{vmas: []VMA{anon, heap, file, vdso}}
	// smaps' VMAs carry more (flags, madvise): not looked at by the walk.
	smaps := []VMA{anon, heap, file, vdso}
	smaps[0].Madv = 1
	if err := e.check(smaps); err != nil {
		t.Fatalf("same mappings: %v", err)
	}
	moved := []VMA{anon, heap, file}
	moved[0].End += 4096
	ro := []VMA{anon, heap, file}
	ro[1].Prot = 0
	named := []VMA{anon, heap, file}
	named[1].Path = "[stack]x" // no longer plain anonymous memory
	for name, vs := range map[string][]VMA{"missing": {anon, file}, "moved": moved, "protection": ro, "kind": named} {
		if err := e.check(vs); err == nil {
			t.Errorf("%s: check passed", name)
		}
	}
}

func TestPlainAnon(t *testing.T) {
	for _, c := range []struct {
		v    VMA
		want bool
	}{
		{VMA{Status: images.VmaAnonPrivate}, true},
		{VMA{Status: images.VmaAnonPrivate, Path: "[anon:buf]"}, true},
		{VMA{Status: images.VmaAnonPrivate, Path: "[stack]"}, true},
		{VMA{Status: images.VmaAnonPrivate, Path: "[uprobes]"}, false},
		{VMA{Status: images.VmaAnonPrivate | images.VmaAreaVdso, Path: "[vdso]"}, false},
		{VMA{Status: images.VmaAnonPrivate, Path: "/anon_hugepage", HugePage: 2 << 20}, false},
		{VMA{Status: images.VmaFilePrivate, Path: "/bin/true"}, false},
		{VMA{Status: images.VmaAnonShared}, false},
	} {
		if got := plainAnon(&c.v); got != c.want {
			t.Errorf("plainAnon(%+v) = %v", c.v, got)
		}
	}
}
