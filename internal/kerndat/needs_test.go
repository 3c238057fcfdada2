package kerndat

import (
	"errors"
	"strings"
	"testing"
)

// A feature whose command is not built is never reported supported; the
// text says the kernel has it. A kernel failure is reported as such.
func TestNeedsGateProbe(t *testing.T) {
	ok := func() error { return nil }
	kernelErr := errors.New("no such thing in this kernel")
	fail := func() error { return kernelErr }

	r := Feature{Name: "pidfd_store", probe: ok}.Probe()
	var nb *NotBuiltError
	if !errors.As(r.Err, &nb) || nb.Feature != "pidfd_store" || r.OK() ||
		!strings.Contains(r.Err.Error(), "kernel supports it") || !strings.Contains(r.Err.Error(), "pidfd_store_sk") {
		t.Errorf("pidfd_store with a working kernel: %v", r.Err)
	}
	if r := (Feature{Name: "mem_dirty_track", probe: fail}).Probe(); r.Err != kernelErr {
		t.Errorf("mem_dirty_track with a failing kernel: %v", r.Err)
	}
	if r := (Feature{Name: "kcmp", probe: ok}).Probe(); !r.OK() {
		t.Errorf("kcmp serves dump/restore, yet: %v", r.Err)
	}

	// Flipping the command's Built flips the answer: one line per command.
	saved := cmdPidfdStore.Built
	cmdPidfdStore.Built = true
	defer func() { cmdPidfdStore.Built = saved }()
	if r := (Feature{Name: "pidfd_store", probe: ok}).Probe(); !r.OK() {
		t.Errorf("pidfd_store once built: %v", r.Err)
	}
	// Lazy restore is built: the kernel's answer is godwit's.
	if r := (Feature{Name: "lazy_pages", probe: ok}).Probe(); !r.OK() {
		t.Errorf("lazy_pages: %v", r.Err)
	}
}

func TestNeedsNotBuilt(t *testing.T) {
	// pidfd_store_sk does not exist in godwit yet; when it lands, its
	// test lands with it and this list shrinks.
	for _, name := range []string{"pidfd_store"} {
		c, ok := Needs(name)
		if !ok || c.Built {
			t.Errorf("%s: Needs = %+v, %v; want a command not built yet", name, c, ok)
		}
	}
	if _, ok := Needs("kcmp"); ok {
		t.Error("kcmp needs no command beyond dump/restore")
	}
}

// pre-dump is built: its features are reported from the kernel alone.
func TestNeedsPreDumpBuilt(t *testing.T) {
	for _, name := range []string{"mem_dirty_track", "soft_dirty"} {
		if c, ok := Needs(name); !ok || !c.Built {
			t.Errorf("%s: Needs = %+v, %v; want pre-dump, built", name, c, ok)
		}
	}
}
