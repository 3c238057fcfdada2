package testutil

import (
	"os"
	"testing"
	"time"
	"unsafe"
)

func TestFloors(t *testing.T) {
	const size = 8 << 20
	mem := make([]byte, size)
	for i := range mem {
		mem[i] = byte(i)
	}
	start := uint64(uintptr(unsafe.Pointer(&mem[0])))
	v := StartVmsplicer(t, size)
	for range 2 { // the vmsplicer serves more than one round
		d, how, err := DumpFloor(os.Getpid(), start, start+size, v, t.TempDir())
		if err != nil || d <= 0 || how == "" {
			t.Fatalf("DumpFloor: %v %q %v", d, how, err)
		}
	}
	f, err := os.CreateTemp(t.TempDir(), "src")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(mem); err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, size)
	d, how, err := RestoreFloor(f, size, os.Getpid(), uint64(uintptr(unsafe.Pointer(&dst[0]))))
	if err != nil || d <= 0 || how == "" {
		t.Fatalf("RestoreFloor: %v %q %v", d, how, err)
	}
	for i := range dst {
		if dst[i] != mem[i] {
			t.Fatalf("mmap+writev floor copied byte %d as %d, want %d", i, dst[i], mem[i])
		}
	}
}

func TestMedian(t *testing.T) {
	ms := func(v ...int) (out []time.Duration) {
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	if got := Median(ms(5, 1, 3)); got != 3*time.Millisecond {
		t.Errorf("Median odd = %v", got)
	}
	if got := Median(ms(4, 1, 3, 2)); got != 2500*time.Microsecond {
		t.Errorf("Median even = %v", got)
	}
	if got := MedianRatio(ms(2, 9, 3), ms(1, 3, 3)); got != 2 {
		t.Errorf("MedianRatio = %v", got)
	}
	if Median(nil) != 0 || MedianRatio(nil, nil) != 0 {
		t.Error("empty input")
	}
}
