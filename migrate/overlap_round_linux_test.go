package migrate

import (
	"context"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"godwit/internal/logging"
	"godwit/internal/procfs"
	pb "godwit/migrate/internal/proto"
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
	// Until sleep blocks in its nanosleep the loader still maps and
	// unmaps, and a mapping listed in maps can be gone from map_files.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if st, err := procfs.ReadStat(pid); err == nil && st.State == 'S' {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("sleep %d never blocked", pid)
		}
	}
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

// TestOverlapManyThreads: a layout naming more threads than the agent
// prepares a task with (from the network: up to the message's bound) is
// not prepared; the restore uses the images alone.
func TestOverlapManyThreads(t *testing.T) {
	in := &inbound{a: &Agent{cfg: AgentConfig{Log: logging.New(io.Discard, 0)}}}
	const pid = 1 << 21
	in.res.PID = pid
	t.Cleanup(func() {
		if in.pending != nil {
			in.pending.Abort()
		}
	})
	l := &pb.Layout{Pid: pid}
	for i := range maxPreparedThreads {
		l.Tids = append(l.Tids, int32(pid+1+i))
	}
	rl, err := layoutOf(l, pid)
	if err != nil {
		t.Fatal(err)
	}
	in.layout = rl
	in.overlapRound(context.Background(), 1, t.TempDir())
	if in.pending != nil || !in.overlapOff || !strings.Contains(in.overlap.State, "threads, more than") {
		t.Fatalf("a layout of %d threads: overlap on=%v off=%v state %q, want it off", len(l.Tids)+1, in.pending != nil, in.overlapOff, in.overlap.State)
	}
}
