package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// targetState is what an interrupted dump must leave as it found it in
// the target: its mappings, its fds, every thread's blocked signals, and
// no tracer.
type targetState struct {
	maps   string
	fds    []string
	sigBlk []string
}

func readTargetState(t *testing.T, pid int) targetState {
	t.Helper()
	p := "/proc/" + strconv.Itoa(pid)
	maps, err := os.ReadFile(p + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	s := targetState{maps: string(maps)}
	ents, err := os.ReadDir(p + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		l, _ := os.Readlink(p + "/fd/" + e.Name())
		s.fds = append(s.fds, e.Name()+" -> "+l)
	}
	tasks, err := os.ReadDir(p + "/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tasks {
		b, _ := os.ReadFile(p + "/task/" + e.Name() + "/status")
		for _, ln := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(ln, "SigBlk:") {
				s.sigBlk = append(s.sigBlk, e.Name()+" "+ln)
			}
		}
	}
	slices.Sort(s.fds)
	slices.Sort(s.sigBlk)
	return s
}

// stableState is the baseline a dump is judged against, taken once the
// program ticks, from two reads that agree and in which no thread blocks
// every signal (SigBlk fffffffffffbfeff): libc holds that mask only for a
// moment, around thread and process creation (a thread just created keeps
// it until it first runs, which under load can be longer than any two
// reads apart), and the programs tested never hold it otherwise, so it
// must not become the baseline.
func (w *workload) stableState(t *testing.T) targetState {
	t.Helper()
	w.waitTicks(2)
	transient := func(s targetState) bool {
		for _, b := range s.sigBlk {
			if strings.HasSuffix(b, "\tfffffffffffbfeff") {
				return true
			}
		}
		return false
	}
	prev := readTargetState(t, w.pid)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		cur := readTargetState(t, w.pid)
		if cur.maps == prev.maps && slices.Equal(cur.fds, prev.fds) && slices.Equal(cur.sigBlk, prev.sigBlk) && !transient(cur) {
			return cur
		}
		prev = cur
	}
	t.Fatalf("pid %d: state never the same twice in a row: %v", w.pid, prev.sigBlk)
	return prev
}

// checkUntouched asserts pid runs untraced, ticks, and shows want.
func (w *workload) checkUntouched(t *testing.T, what string, want targetState) {
	t.Helper()
	if !alive(w.pid) {
		t.Fatalf("%s: the program is gone\n%s", what, w.tail())
	}
	var tracer int
	for i := 0; i < 100; i++ {
		if tracer = tracerOf(w.pid); tracer == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if tracer != 0 {
		t.Fatalf("%s: still traced by %d", what, tracer)
	}
	w.waitTicks(2)
	got := readTargetState(t, w.pid)
	for i := 0; i < 20 && !slices.Equal(got.sigBlk, want.sigBlk); i++ {
		// A mask the program holds for a moment (see stableState); one
		// the dump left behind stays.
		time.Sleep(20 * time.Millisecond)
		got = readTargetState(t, w.pid)
	}
	if got.maps != want.maps {
		t.Fatalf("%s: mappings changed:\n%s\nwas:\n%s", what, got.maps, want.maps)
	}
	if !slices.Equal(got.fds, want.fds) {
		t.Fatalf("%s: fds changed: %v, was %v", what, got.fds, want.fds)
	}
	if !slices.Equal(got.sigBlk, want.sigBlk) {
		t.Fatalf("%s: blocked signals changed: %v, was %v", what, got.sigBlk, want.sigBlk)
	}
}

// dirState names every entry of an images directory with its inode, size
// and mtime: a failed dump must leave all three as they were (the staging
// directory never touches the files in place).
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, e.Name()), &st); err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fmt.Sprintf("ino %d size %d mtime %d.%09d", st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
	}
	return out
}

func sameDir(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// freezerCgroup makes a v1 freezer cgroup holding pid, removed at cleanup.
func freezerCgroup(t *testing.T) string {
	t.Helper()
	cg := filepath.Join("/sys/fs/cgroup/freezer", fmt.Sprintf("godwit-e2e-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("freezer cgroup: %v", err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(cg, "freezer.state"), []byte("THAWED"), 0)
		if b, err := os.ReadFile(filepath.Join(cg, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				_ = os.WriteFile("/sys/fs/cgroup/freezer/cgroup.procs", []byte(f), 0)
			}
		}
		_ = os.Remove(cg)
	})
	return cg
}

func joinCgroup(t *testing.T, cg string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatalf("join cgroup: %v", err)
	}
}

func cgroupThawed(t *testing.T, cg string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cg, "freezer.state"))
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(string(b)); s != "THAWED" {
		t.Fatalf("cgroup left %s", s)
	}
}

// startDump starts `godwit dump` of pid into dir, logging to logPath.
func startDump(t *testing.T, pid int, dir, logPath string, args ...string) (*exec.Cmd, chan error) {
	t.Helper()
	cmd := exec.Command(godwitBin, append([]string{"dump", "-t", strconv.Itoa(pid), "-D", dir, "-v4", "-o", logPath}, args...)...)
	cmd.Stderr = new(bytes.Buffer)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // by PID; a no-op once it exited
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})
	return cmd, done
}

func waitDump(t *testing.T, done chan error) error {
	t.Helper()
	select {
	case err := <-done:
		done <- err
		return err
	case <-time.After(90 * time.Second):
		t.Fatal("godwit dump did not end")
		return nil
	}
}

// TestDumpInterrupted sends SIGTERM to `godwit dump` at points spread over
// the dump of a 384 MiB two-thread program (with -R, without, and with
// --freeze-cgroup), into a directory that holds an earlier dump. After
// each interrupted dump the program must run on untouched (mappings, fds,
// blocked signals, no tracer, cgroup thawed), the earlier dump must be
// intact, and at the end the program's own check of its memory must pass.
func TestDumpInterrupted(t *testing.T) {
	needRoot(t)
	// Both page transfers: readv (the default) and vmsplice, whose
	// pipes and scratch stay in the target through the transfer.
	for _, method := range []string{"readv", "vmsplice"} {
		t.Run(method, func(t *testing.T) {
			testDumpInterrupted(t, method)
		})
	}
}

func testDumpInterrupted(t *testing.T, method string) {
	cg := freezerCgroup(t)
	logs := t.TempDir()
	dir := t.TempDir()
	var w *workload
	var base targetState
	var earlier map[string]string
	var took time.Duration
	fresh := func() {
		w = startC(t, false, "-m", "384", "-t", "2")
		joinCgroup(t, cg, w.pid)
		// The earlier dump that no failed dump may harm.
		t0 := time.Now()
		if code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-R", "-o", filepath.Join(logs, "earlier.log")); code != 0 {
			t.Fatalf("earlier dump: exit %d: %s", code, out)
		}
		took = time.Since(t0)
		earlier = dirState(t, dir)
		base = w.stableState(t)
	}
	fresh()
	// Points spread over the time a whole dump takes here (the first
	// few land before the freeze, the last ones after the dump).
	const rounds = 18
	t.Logf("a whole dump takes %v", took)
	midDump := 0
	for i := 0; i < rounds; i++ {
		ms := int(took.Milliseconds()) * i / (rounds - 4)
		args := []string{"--page-transfer", method}
		mode := "without -R"
		switch i % 3 {
		case 1:
			args, mode = append(args, "-R"), "-R"
		case 2:
			args, mode = append(args, "-R", "--freeze-cgroup", cg), "-R --freeze-cgroup"
		}
		what := fmt.Sprintf("SIGTERM %d ms into a dump %s", ms, mode)
		logPath := filepath.Join(logs, fmt.Sprintf("dump-%d.log", i))
		cmd, done := startDump(t, w.pid, dir, logPath, args...)
		time.Sleep(time.Duration(ms) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		err := waitDump(t, done)
		log := readFile(logPath)
		stderr := cmd.Stderr.(*bytes.Buffer).String()
		if ee, ok := err.(*exec.ExitError); ok && !ee.Exited() {
			// Killed by the SIGTERM before Go installed its handler,
			// before touching anything.
			t.Logf("%s: godwit died before its signal handling started", what)
		} else if err != nil && !strings.Contains(stderr, "interrupted") {
			t.Fatalf("%s: the dump failed for another reason: %s\n%s", what, stderr, log)
		}
		if err == nil {
			// It finished first: a whole dump, in place.
			t.Logf("%s: the dump had finished", what)
			if _, ok := dirState(t, dir)["inventory.img"]; !ok {
				t.Fatalf("%s: a successful dump left no inventory.img", what)
			}
			if mode == "without -R" {
				w.reapKilled(t)
				fresh()
				continue
			}
		} else {
			if strings.Contains(log, "froze") {
				midDump++
			}
			if !sameDir(dirState(t, dir), earlier) {
				t.Fatalf("%s: the earlier dump changed: %v, was %v\n%s", what, dirState(t, dir), earlier, log)
			}
		}
		w.checkUntouched(t, what, base)
		cgroupThawed(t, cg)
		earlier = dirState(t, dir)
	}
	if midDump < 3 {
		t.Errorf("only %d of %d SIGTERMs arrived after the freeze; the test did not exercise the rollback", midDump, rounds)
	}
	t.Logf("%d of %d dumps interrupted after the freeze", midDump, rounds)
	w.finishOriginal(t, "after the interrupted dumps")
}

// TestDumpKilled SIGKILLs `godwit dump -R` during its memory transfer,
// where nothing can roll back. What the docs promise (IMAGES.md): the
// program was outside any injection session, its scratch mapping was
// already removed, and the kernel detaches it as the tracer dies, so it
// runs on untouched; a --freeze-cgroup cgroup was thawed once the threads
// were seized; the earlier dump in -D is intact and the killed dump's
// staging directory is left behind.
func TestDumpKilled(t *testing.T) {
	needRoot(t)
	cg := freezerCgroup(t)
	logs := t.TempDir()
	dir := t.TempDir()
	w := startC(t, false, "-m", "384", "-t", "2")
	joinCgroup(t, cg, w.pid)
	if code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-R", "-o", filepath.Join(logs, "earlier.log")); code != 0 {
		t.Fatalf("earlier dump: exit %d: %s", code, out)
	}
	earlier := dirState(t, dir)
	base := w.stableState(t)
	killed := 0
	for round := 0; round < 4; round++ {
		logPath := filepath.Join(logs, fmt.Sprintf("dump-%d.log", round))
		args := []string{"-R"}
		if round%2 == 1 {
			args = append(args, "--freeze-cgroup", cg)
		}
		cmd, done := startDump(t, w.pid, dir, logPath, args...)
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(readFile(logPath), "transferring pages") && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		// Somewhere in the transfer.
		time.Sleep(time.Duration(round*20) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := waitDump(t, done)
		what := fmt.Sprintf("SIGKILL round %d", round)
		if err == nil {
			t.Logf("%s: the dump had finished", what)
			earlier = dirState(t, dir)
			continue
		}
		killed++
		w.checkUntouched(t, what, base)
		cgroupThawed(t, cg)
		now := dirState(t, dir)
		for name := range now {
			if strings.HasPrefix(name, ".godwit-dump-") {
				delete(now, name)
				if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !sameDir(now, earlier) {
			t.Fatalf("%s: the earlier dump changed: %v, was %v", what, now, earlier)
		}
	}
	if killed == 0 {
		t.Fatal("every dump finished before the SIGKILL")
	}
	w.finishOriginal(t, "after the killed dumps")
}

// recycleScript is a pre-dump action script that kills the target, waits
// until it is reaped, and starts `sleep` with the same PID (ns_last_pid,
// retried while other processes of the machine take the PID first); the
// new PID goes to $1.
const recycleScript = `#!/bin/sh
[ "$CRTOOLS_SCRIPT_ACTION" = pre-dump ] || exit 0
pid=$CRTOOLS_INIT_PID
kill -9 $pid
i=0
while [ -e /proc/$pid ]; do
	i=$((i+1)); [ $i -gt 1000 ] && exit 11
	sleep 0.01
done
i=0
while [ $i -lt 500 ]; do
	echo $((pid-1)) > /proc/sys/kernel/ns_last_pid
	setsid sleep 1000 </dev/null >/dev/null 2>&1 &
	if [ $! -eq $pid ]; then
		echo $! > "$1"
		exit 0
	fi
	kill -9 $!
	i=$((i+1))
done
exit 12
`

// TestDumpRefusesRecycledPID recycles the target's PID between godwit's
// check and its seize: the dump must refuse, and leave the process that
// now has the PID running, untraced and unkilled.
func TestDumpRefusesRecycledPID(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	script := filepath.Join(tmp, "recycle.sh")
	if err := os.WriteFile(script, []byte(recycleScript), 0o755); err != nil {
		t.Fatal(err)
	}
	newPidFile := filepath.Join(tmp, "newpid")
	target := exec.Command("sleep", "1000")
	if err := target.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { _ = target.Wait(); close(reaped) }()
	t.Cleanup(func() {
		_ = target.Process.Kill() // through its pidfd: never a successor
		<-reaped
	})
	pid := target.Process.Pid
	t.Cleanup(func() {
		if b, err := os.ReadFile(newPidFile); err == nil {
			if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n > 1 {
				killAndForget(n)
			}
		}
	})
	dir := filepath.Join(tmp, "images")
	code, out := godwit(t, "dump", "-t", strconv.Itoa(pid), "-D", dir, "-o", filepath.Join(tmp, "dump.log"),
		"--action-script", script+" "+newPidFile)
	b, err := os.ReadFile(newPidFile)
	if err != nil {
		t.Fatalf("the script did not recycle pid %d (exit %d: %s)", pid, code, out)
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n != pid {
		t.Fatalf("script wrote pid %s, want %d", b, pid)
	}
	if code == 0 {
		t.Fatalf("dump of a recycled pid %d succeeded: %s", pid, out)
	}
	t.Logf("godwit: %s", out)
	if !strings.Contains(out, "another process") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("want one line naming the reuse, got: %q", out)
	}
	if !alive(pid) {
		t.Fatalf("the process now holding pid %d was killed", pid)
	}
	if st, tracer := procState(t, pid); tracer != 0 || st == "T" || st == "t" {
		t.Fatalf("the process now holding pid %d is left %s, tracer %d", pid, st, tracer)
	}
	if _, err := os.Stat(filepath.Join(dir, "inventory.img")); err == nil {
		t.Fatal("a refused dump wrote inventory.img")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a refused dump left %d entries in -D", len(ents))
	}
}

// TestRestoreInterrupted sends SIGTERM to `godwit restore` at points
// spread over the restore of a 384 MiB program: an interrupted restore
// kills and reaps every task it made (nothing keeps the PID), and the
// images stay usable: the last restore, left alone, passes the program's
// own checks.
func TestRestoreInterrupted(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-m", "384", "-t", "2")
	dir := w.dump(t)
	w.reapKilled(t)
	// A restored program writes on into its files; each finished restore
	// is followed by putting them back as dumped, or the next restore
	// would rightly refuse them.
	saved := map[string][]byte{}
	for _, p := range []string{w.log, w.log + ".seq"} {
		saved[p] = mustRead(t, p)
	}
	asDumped := func() {
		for p, b := range saved {
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// How long a whole restore takes here.
	t0 := time.Now()
	r := restore(t, w, dir)
	took := time.Since(t0)
	killAndForget(w.pid)
	<-r.done
	r.done <- nil
	asDumped()
	const rounds = 12
	interrupted := 0
	for i := 0; i < rounds; i++ {
		// The files as the dump saw them: a round that ended after the
		// resume let the program write to them.
		asDumped()
		ms := int(took.Milliseconds()) * i / (rounds - 3)
		cmd := exec.Command(godwitBin, "restore", "-D", dir, "-o", filepath.Join(t.TempDir(), "restore.log"))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		time.Sleep(time.Duration(ms) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		var err error
		select {
		case err = <-done:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatal("godwit restore did not end")
		}
		what := fmt.Sprintf("SIGTERM %d ms into a restore", ms)
		if strings.Contains(out.String(), "interrupted") {
			interrupted++
			// Every task made was killed and reaped before godwit
			// exited: the PID is free at once.
			if pidExists(w.pid) {
				t.Fatalf("%s: pid %d is left behind: %s", what, w.pid, out.String())
			}
			continue
		}
		if ee, ok := err.(*exec.ExitError); ok && !ee.Exited() && alive(w.pid) {
			// The restore had finished: the signal ended godwit's wait
			// for the program, which runs on (as before this change).
			t.Logf("%s: the restore had finished", what)
			killAndForget(w.pid)
			asDumped()
			continue
		}
		if ee, ok := err.(*exec.ExitError); ok && !ee.Exited() && !pidExists(w.pid) {
			t.Logf("%s: godwit died before its signal handling started", what)
			continue
		}
		t.Fatalf("%s: %v: %s", what, err, out.String())
	}
	if interrupted < 3 {
		t.Errorf("only %d of %d restores were interrupted; the test did not exercise the rollback", interrupted, rounds)
	}
	t.Logf("%d of %d restores interrupted", interrupted, rounds)
	r = restore(t, w, dir)
	w.waitTicks(3)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("program restored after the interrupted restores exited %d\n%s", code, w.tail())
	}
	w.checkLog(0)
}

// TestFailedDumpKeepsEarlierDump makes dumps of a second program fail
// into a directory holding the dump of a first one: one refused before the
// freeze (a failing pre-dump script) and one failing after its images were
// moved into place (a failing post-dump script). The earlier dump must be
// left exactly as it was, and restore its program.
func TestFailedDumpKeepsEarlierDump(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "images")
	first := startC(t, false, "-m", "16", "-t", "2")
	if code, out := godwit(t, "dump", "-t", strconv.Itoa(first.pid), "-D", dir, "-o", filepath.Join(tmp, "earlier.log")); code != 0 {
		t.Fatalf("earlier dump: exit %d: %s", code, out)
	}
	first.reapKilled(t)
	earlier := dirState(t, dir)
	w := startC(t, false, "-m", "16", "-t", "2")
	base := w.stableState(t)
	for _, action := range []string{"pre-dump", "post-dump"} {
		script := filepath.Join(tmp, action+".sh")
		body := fmt.Sprintf("#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = %s ] && exit 7\nexit 0\n", action)
		if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-o", filepath.Join(tmp, action+".log"), "--action-script", script)
		if code == 0 || !strings.Contains(out, action) {
			t.Fatalf("dump with a failing %s script: exit %d: %s", action, code, out)
		}
		if now := dirState(t, dir); !sameDir(now, earlier) {
			t.Fatalf("a dump failing in %s changed the earlier dump: %v, was %v", action, now, earlier)
		}
		w.checkUntouched(t, "after a dump failing in "+action, base)
	}
	r := restore(t, first, dir)
	first.waitTicks(3)
	if code := r.finish(t, first); code != 0 {
		t.Fatalf("program restored from the earlier dump exited %d\n%s", code, first.tail())
	}
	first.checkLog(0)
	w.finishOriginal(t, "after the failed dumps")
}

// TestConcurrentDumpRefused: while a dump holds -D (its flock), a second
// dump into it fails at once with one line, before touching its target.
func TestConcurrentDumpRefused(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "images")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w := startC(t, false, "-m", "16", "-t", "2")
	base := w.stableState(t)
	// What a running dump holds (images.NewStaging).
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-R", "-o", filepath.Join(tmp, "dump.log"))
	if code == 0 || !strings.Contains(out, "in use by another dump") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("dump into a locked -D: exit %d: %q", code, out)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("the refused dump left %d entries in -D", len(ents))
	}
	w.checkUntouched(t, "after a refused concurrent dump", base)
	// Once the lock is gone the dump goes through.
	f.Close()
	if code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-R", "-o", filepath.Join(tmp, "dump2.log")); code != 0 {
		t.Fatalf("dump after the lock was released: exit %d: %s", code, out)
	}
	w.finishOriginal(t, "after the dumps")
}
