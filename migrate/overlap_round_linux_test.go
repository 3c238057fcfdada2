package migrate

import (
	"context"
	"io"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"godwit/internal/logging"
)

// TestOverlapRoundWithoutLayout: a round that comes without a layout
// after the task was prepared writes nothing into it, so the pages the
// task holds may be stale: the overlap ends (the task killed), the
// restore uses the images alone.
func TestOverlapRoundWithoutLayout(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root")
	}
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	lm, err := layoutMsg(pid)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err != nil {
		t.Fatal(err)
	}
	l, err := layoutOf(lm, pid)
	if err != nil {
		t.Fatal(err)
	}
	in := &inbound{a: &Agent{cfg: AgentConfig{Log: logging.New(io.Discard, 0)}}}
	in.res.PID = pid
	t.Cleanup(func() {
		if in.pending != nil {
			in.pending.Abort()
		}
	})
	in.layout = l
	in.overlapRound(context.Background(), 1, t.TempDir()) // no pages of it: an empty round
	if in.pending == nil || in.overlapOff {
		t.Fatalf("round 1 with a layout: not prepared (%q)", in.overlap.State)
	}
	in.overlapRound(context.Background(), 2, t.TempDir())
	if in.pending != nil || !in.overlapOff || in.overlap.State != "round 2 without a layout" {
		t.Fatalf("round 2 without a layout: overlap on=%v off=%v state %q, want it off", in.pending != nil, in.overlapOff, in.overlap.State)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		t.Fatalf("prepared task %d left after the fallback", pid)
	}
}
