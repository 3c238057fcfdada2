package restorer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/ptrace"
)

// TestRestoreManyGroups: 8250 supplementary groups (33000 bytes, more
// than the scratch holds below the batch tables) come back exactly, as
// the program checks with getgroups; never a list with table words in it.
func TestRestoreManyGroups(t *testing.T) {
	roundTrip(t, "groups", func(pid int) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if g, ok := strings.CutPrefix(l, "Groups:"); ok {
				f := strings.Fields(g)
				if len(f) != 8250 || f[0] != "100000" || f[len(f)-1] != "108249" {
					t.Fatalf("restored %d: %d groups, %v .. %v", pid, len(f), f[:min(3, len(f))], f[max(0, len(f)-3):])
				}
				return
			}
		}
		t.Fatalf("restored %d: no Groups line", pid)
	})
}

// TestRestoreBigSeccomp: a 4000-instruction filter (32000 bytes, more
// than the scratch holds below the batch tables) is restored identical,
// as PTRACE_SECCOMP_GET_FILTER reads it, and still kills at sethostname.
func TestRestoreBigSeccomp(t *testing.T) {
	w, log, dir := gapWorkload(t, "bigseccomp")
	before := seccompFilters(t, w.Pid)
	if len(before) != 1 || len(before[0].Prog) != 4000*8 {
		t.Fatalf("workload's filters: %d, want one of 4000 instructions", len(before))
	}
	// The program the workload built: loads, sethostname kills.
	want := make([]byte, 0, 4000*8)
	insn := func(code uint16, jt, jf uint8, k uint32) {
		want = binary.LittleEndian.AppendUint16(want, code)
		want = append(want, jt, jf)
		want = binary.LittleEndian.AppendUint32(want, k)
	}
	for range 4000 - 3 {
		insn(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, 0, 0, 0)
	}
	insn(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, 0, 1, unix.SYS_SETHOSTNAME)
	insn(unix.BPF_RET|unix.BPF_K, 0, 0, unix.SECCOMP_RET_KILL_PROCESS)
	insn(unix.BPF_RET|unix.BPF_K, 0, 0, unix.SECCOMP_RET_ALLOW)
	if !bytes.Equal(before[0].Prog, want) {
		t.Fatal("workload's filter is not the program it was meant to install")
	}
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	r := restore(t, imgs, nil)
	after := seccompFilters(t, r.PID())
	if len(after) != 1 || after[0].Flags != before[0].Flags || !bytes.Equal(after[0].Prog, want) {
		t.Fatalf("restored filters differ: %d filters", len(after))
	}
	killedAfter(t, r, log, unix.SIGSYS, "done bigseccomp")
}

// seccompFilters reads the filters of pid with PTRACE_SECCOMP_GET_FILTER,
// leaving it untraced.
func seccompFilters(t *testing.T, pid int) []ptrace.SeccompFilter {
	t.Helper()
	tr := ptrace.New()
	defer tr.Close()
	if _, err := tr.Attach(pid, 0); err != nil {
		t.Fatal(err)
	}
	fs, err := tr.SeccompFilters(pid)
	if derr := tr.Detach(pid, 0); derr != nil {
		t.Fatal(derr)
	}
	if err != nil {
		t.Fatal(err)
	}
	return fs
}
