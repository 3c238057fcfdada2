package linux

import (
	"testing"
	"unsafe"
)

// The Go structures must have the kernel's sizes, or the syscalls that
// take them read past or short of what we pass.
func TestSizes(t *testing.T) {
	if s := unsafe.Sizeof(CloneArgs{}); s != CloneArgsSize {
		t.Errorf("CloneArgs is %d bytes, want %d", s, CloneArgsSize)
	}
	if s := unsafe.Sizeof(PrctlMmMap{}); s != SizeofPrctlMmMap {
		t.Errorf("PrctlMmMap is %d bytes, want %d", s, SizeofPrctlMmMap)
	}
	if s := unsafe.Sizeof(KcmpEpollSlot{}); s != 12 {
		t.Errorf("KcmpEpollSlot is %d bytes, want 12", s)
	}
}
