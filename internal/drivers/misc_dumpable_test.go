package drivers

import (
	"strings"
	"testing"

	"godwit/internal/model"
)

// TestDumpableRootRefused: a task the kernel made SUID_DUMP_ROOT (2) is
// refused by name at dump; 0 and 1 are kept.
func TestDumpableRootRefused(t *testing.T) {
	for _, v := range []uint64{0, 1, 2} {
		d := &Dump{Task: &model.Task{MM: &model.MM{}}}
		p, ok := dumpableDriver{}.PlanInjected(d, nil)
		if !ok {
			t.Fatal("dumpable: no plan")
		}
		err := p.Done([]uint64{v}, nil)
		switch {
		case v == 2 && (err == nil || !strings.Contains(err.Error(), "SUID_DUMP_ROOT")):
			t.Errorf("dumpable 2: %v, want a refusal naming SUID_DUMP_ROOT", err)
		case v < 2 && (err != nil || d.Task.MM.Dumpable == nil || *d.Task.MM.Dumpable != int32(v)):
			t.Errorf("dumpable %d: %v, kept %v", v, err, d.Task.MM.Dumpable)
		}
	}
}
