package e2e

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"godwit/migrate"
	"godwit/pageserver"
)

// The switch-over's failures (docs/migration.md): whatever is lost after
// the agent says Ready, exactly one copy of the program lives afterwards,
// its memory and counters intact, or both are held stopped in doubt until
// `godwit migrate resolve` settles them.

// safetySend is a `migrate send` started on host A with test hooks in its
// environment; its stderr is collected, lines announced on lines.
type safetySend struct {
	cmd    *exec.Cmd
	pid    int // in this machine's namespace
	mu     sync.Mutex
	stderr strings.Builder
	stdout strings.Builder
	lines  chan string
	waited chan error
}

func (m *migLab) startSend(w *labWorkload, env []string, extra ...string) *safetySend {
	t := m.t
	t.Helper()
	args := append([]string{"migrate", "send", "--to", m.b.Addr(), "-t", strconv.Itoa(w.hostPID), "--json"}, m.tlsArgs(m.a, "client")...)
	s := &safetySend{lines: make(chan string, 100), waited: make(chan error, 1)}
	s.cmd = m.a.Command(godwitBin, append(args, extra...)...)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stdout = &lockedWriter{mu: &s.mu, b: &s.stdout}
	pr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if _, s.pid, err = m.a.PID(s.cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killAndForget(s.pid) })
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s.mu.Lock()
			s.stderr.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			select {
			case s.lines <- sc.Text():
			default:
			}
		}
		s.waited <- s.cmd.Wait()
	}()
	return s
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (s *safetySend) output() (string, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stdout.String(), s.stderr.String()
}

// await waits for a stderr line containing want.
func (s *safetySend) await(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l := <-s.lines:
			if strings.Contains(l, want) {
				return
			}
		case <-timeout:
			_, e := s.output()
			t.Fatalf("migrate send: no %q in 2 minutes:\n%s", want, e)
		}
	}
}

// wait waits for send to end and returns its exit code and result.
func (s *safetySend) wait(t *testing.T) (int, *migrate.Result) {
	t.Helper()
	var err error
	select {
	case err = <-s.waited:
	case <-time.After(3 * time.Minute):
		_, e := s.output()
		t.Fatalf("migrate send still running after 3 minutes:\n%s", e)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	out, e := s.output()
	var res migrate.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("migrate send: exit %d, no JSON result (%v)\nstdout: %s\nstderr: %s", code, err, out, e)
	}
	return code, &res
}

// resolve runs `godwit migrate resolve` on host A and returns its output.
func (m *migLab) resolve(args ...string) string {
	m.t.Helper()
	cmd := m.a.Command(godwitBin, append(append([]string{"migrate", "resolve", "--to", m.b.Addr()}, m.tlsArgs(m.a, "client")...), args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		m.t.Fatalf("migrate resolve %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// resolveAs runs `godwit migrate resolve` on host A with the TLS
// arguments tls; it returns the output and the command's error.
func (m *migLab) resolveAs(tls []string, args ...string) (string, error) {
	m.t.Helper()
	cmd := m.a.Command(godwitBin, append(append(append([]string{"migrate", "resolve", "--to", m.b.Addr()}, tls...),
		"--tls-server-name", m.b.Addr()), args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// historyAs runs `godwit migrate history` on host A with the TLS
// arguments tls.
func (m *migLab) historyAs(tls []string) string {
	m.t.Helper()
	out, err := m.a.Command(godwitBin, append(append([]string{"migrate", "history", "--to", m.b.Addr()}, tls...),
		"--tls-server-name", m.b.Addr())...).CombinedOutput()
	if err != nil {
		m.t.Fatalf("migrate history: %v\n%s", err, out)
	}
	return string(out)
}

// extraCert makes a client certificate named cn with the lab's CA and
// returns its TLS arguments.
func (m *migLab) extraCert(cn string) []string {
	m.t.Helper()
	_, cd, err := pageserver.GenerateHostCerts(filepath.Join(m.certs, "cacert.pem"), filepath.Join(m.certs, "cakey.pem"),
		filepath.Join(m.certs, cn), cn)
	if err != nil {
		m.t.Fatal(err)
	}
	return []string{"--tls-cacert", filepath.Join(m.certs, "cacert.pem"),
		"--tls-cert", filepath.Join(cd, "cert.pem"), "--tls-key", filepath.Join(cd, "key.pem")}
}

// heldOne lists the agent's held migrations and returns the only one's ID
// and the copy's root PID (this machine's namespace).
func (m *migLab) heldOne(wantPID int) string {
	m.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out := strings.TrimSpace(m.resolve())
		if f := strings.Split(out, "\t"); len(f) >= 3 && f[1] == "in-doubt" && !strings.Contains(out, "\n") {
			if f[2] != "pid "+strconv.Itoa(wantPID) {
				m.t.Fatalf("held copy %q, want pid %d", out, wantPID)
			}
			return f[0]
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("agent holds %q, want one migration in doubt", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// gone waits until pid no longer exists.
func gone(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			state, tracer := procState(t, pid)
			t.Fatalf("%s %d still there (state %s, tracer %d)", what, pid, state, tracer)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stoppedUntraced waits until pid is in a group stop, no tracer.
func stoppedUntraced(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		state, tracer := procState(t, pid)
		if state == "T" && tracer == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d in state %s, tracer %d: want stopped, untraced", pid, state, tracer)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The control link drops Go: the agent holds its copy in doubt, and send
// settles it on a new connection.
func TestMigrateLostGoSettledBySource(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	w := startOn(t, m.a, workloads["counter"], "-m", "32", "-t", "2")
	s := m.startSend(w, []string{"GODWIT_TEST_SWITCHOVER=lose-go"}, "--max-rounds", "1")
	code, res := s.wait(t)
	if _, e := s.output(); code != 0 {
		t.Fatalf("migrate send: exit %d:\n%s", code, e)
	}
	if !strings.Contains(res.Note, "resumed through a new connection") {
		t.Errorf("note %q: want the resume settled on a new connection", res.Note)
	}
	rp := m.moved(w)
	finishMoved(t, w, rp)
}

// send interrupted, then killed, right after Ready: SIGINT is ignored; on
// SIGKILL the kernel kills the source tree it held (PTRACE_O_EXITKILL),
// and the agent's copy, held in doubt, is resumed with `migrate resolve`.
//
// Only the certificate that started the migration, or an admin identity
// (agent --admin-cn), may see and resolve the held copy: another
// certificate of the same CA (host B's client one) is refused by name and
// sees neither the held copy nor the history.
func TestMigrateSendKilledAfterReady(t *testing.T) {
	m := newMigLab(t)
	admin := m.extraCert("operator")
	m.startAgent("--admin-cn", "operator")
	w := startOn(t, m.a, workloads["counter"], "-m", "32", "-t", "2")
	s := m.startSend(w, []string{"GODWIT_TEST_SWITCHOVER=stall"}, "--max-rounds", "1")
	s.await(t, "committed")
	if err := syscall.Kill(s.pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	s.await(t, "interrupt ignored")
	if !alive(s.pid) {
		t.Fatal("migrate send died of SIGINT during the switch-over")
	}
	killAndForget(s.pid)
	gone(t, w.rootPID, "source program")
	rp, err := m.b.RootPID(w.hostPID)
	if err != nil {
		t.Fatalf("no copy on the destination: %v", err)
	}
	id := m.heldOne(w.hostPID)
	stranger := m.tlsArgs(m.b, "client")
	if out, err := m.resolveAs(stranger, id, "resume"); err == nil || !strings.Contains(out, "was not started by") {
		t.Fatalf("resolve with another certificate of the CA: %v: %s", err, out)
	}
	if out, err := m.resolveAs(stranger); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("another certificate lists the held copies: %v: %q", err, out)
	}
	if out := m.historyAs(stranger); strings.Contains(out, id) {
		t.Fatalf("another certificate reads the history: %s", out)
	}
	if !alive(rp) {
		t.Fatal("the held copy died after a refused resolve")
	}
	if out, err := m.resolveAs(admin); err != nil || !strings.Contains(out, id) {
		t.Fatalf("the admin does not see the held copy: %v: %q", err, out)
	}
	if out, err := m.resolveAs(admin, id, "resume"); err != nil || !strings.Contains(out, "\tresumed") {
		t.Fatalf("resolve by the admin: %v: %s", err, out)
	}
	if out := strings.TrimSpace(m.resolve()); out != "" {
		t.Errorf("still held after resolve: %s", out)
	}
	finishMoved(t, w, rp)
}

// The agent killed right after Ready takes its held copy with it: send,
// holding the source, finds the restarted agent without the migration and
// lets the source run on.
func TestMigrateAgentKilledAfterReady(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	w := startOn(t, m.a, workloads["counter"], "-m", "32", "-t", "2")
	s := m.startSend(w, []string{"GODWIT_TEST_SWITCHOVER=pause:3s", "GODWIT_TEST_RESOLVE_WAIT=90s"}, "--max-rounds", "1")
	s.await(t, "committed")
	if _, err := m.b.RootPID(w.hostPID); err != nil {
		t.Fatalf("no held copy on the destination: %v", err)
	}
	killAndForget(m.agentP)
	_ = m.agent.Wait()
	m.startAgent()
	code, res := s.wait(t)
	if code == 0 || res.FailedPhase != migrate.PhaseSwitchover || !strings.Contains(res.Error, "no copy (unknown)") {
		_, e := s.output()
		t.Fatalf("exit %d, result %+v: want the switch-over failed, the agent without a copy\n%s", code, res, e)
	}
	if p, err := m.b.RootPID(w.hostPID); err == nil && alive(p) {
		t.Fatalf("a copy %d runs on the destination beside the source", p)
	}
	intact(t, w)
	finishMoved(t, w, w.rootPID)
}

// The link cut right after Ready, before Go: both ends hold their copy
// stopped, in doubt; once the link is back, resolve on the source host
// resumes the agent's copy and kills the held source.
func TestMigrateLinkCutAfterReady(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	w := startOn(t, m.a, workloads["counter"], "-m", "32", "-t", "2")
	// The held source's group stop stops the lab's nsenter, its parent,
	// too (util-linux follows its child's stops): it must go on to reap.
	t.Cleanup(func() { _ = syscall.Kill(w.cmd.Process.Pid, syscall.SIGCONT) })
	s := m.startSend(w, []string{"GODWIT_TEST_SWITCHOVER=pause:2s", "GODWIT_TEST_RESOLVE_WAIT=2s"}, "--max-rounds", "1")
	s.await(t, "committed")
	if err := m.b.Cut(); err != nil {
		t.Fatal(err)
	}
	code, res := s.wait(t)
	if code == 0 || !strings.Contains(res.Error, "in doubt") || !strings.Contains(res.Error, "held stopped") {
		_, e := s.output()
		t.Fatalf("exit %d, result %+v: want in doubt\n%s", code, res, e)
	}
	stoppedUntraced(t, w.rootPID)
	rp, err := m.b.RootPID(w.hostPID)
	if err != nil {
		t.Fatalf("no held copy on the destination: %v", err)
	}
	if err := m.b.Heal(); err != nil {
		t.Fatal(err)
	}
	id := m.heldOne(w.hostPID)
	if id != res.ID {
		t.Fatalf("held %s, send reported %s", id, res.ID)
	}
	out := m.resolve(id, "resume", "--source-pid", strconv.Itoa(w.hostPID))
	if !strings.Contains(out, "\tresumed") || !strings.Contains(out, "killed") {
		t.Fatalf("resolve: %s", out)
	}
	gone(t, w.rootPID, "held source program")
	finishMoved(t, w, rp)
}

// send killed mid post-copy: the source tree dies with it (committed: it
// never runs again beside a copy that ran), and the agent kills its copy
// rather than run it with pages it cannot get, reporting the failure.
// Every wait is bounded.
func TestMigratePostcopySourceKilled(t *testing.T) {
	m := newMigLab(t)
	m.startAgent("--tls-client-cert", filepath.Join(m.certs, m.b.Addr(), "client", "cert.pem"),
		"--tls-client-key", filepath.Join(m.certs, m.b.Addr(), "client", "key.pem"))
	w := startOn(t, m.a, workloads["counter"], "-m", "256", "-t", "2")
	server := filepath.Join(m.certs, m.a.Addr(), "server")
	s := m.startSend(w, []string{"GODWIT_TEST_SWITCHOVER=notice"}, "--mode", "postcopy",
		"--tls-server-cert", filepath.Join(server, "cert.pem"), "--tls-server-key", filepath.Join(server, "key.pem"))
	s.await(t, "committed (post-copy)")
	// Mid-transfer: the copy runs on B, its pages still coming.
	deadline := time.Now().Add(time.Minute)
	for {
		if p, err := m.b.RootPID(w.hostPID); err == nil {
			if state, tracer := procState(t, p); tracer == 0 && state != "T" && state != "t" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the copy did not resume on the destination")
		}
		time.Sleep(time.Millisecond)
	}
	killAndForget(s.pid)
	gone(t, w.rootPID, "source program")
	// The copy on B is killed by its lazy-pages daemon.
	deadline = time.Now().Add(2 * time.Minute)
	for {
		p, err := m.b.RootPID(w.hostPID)
		if err != nil || !alive(p) {
			break
		}
		if time.Now().After(deadline) {
			state, tracer := procState(t, p)
			t.Fatalf("copy %d still on the destination (state %s, tracer %d) 2 minutes after the source died", p, state, tracer)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The agent says why.
	var hist []migrate.Result
	for {
		cmd := m.a.Command(godwitBin, append([]string{"migrate", "history", "--to", m.b.Addr()}, m.tlsArgs(m.a, "client")...)...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("migrate history: %v", err)
		}
		if err := json.Unmarshal(out, &hist); err != nil {
			t.Fatal(err)
		}
		if len(hist) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no migration in the agent's history 2 minutes after the source died")
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := hist[len(hist)-1]
	if r.PID != w.hostPID || r.Error == "" || r.FailedPhase != migrate.PhasePostcopy {
		t.Fatalf("agent's record %+v: want a post-copy failure", r)
	}
	t.Logf("agent: %s: %s", r.FailedPhase, r.Error)
}

// The agent dies right after recording the resume, before Resumed reaches
// send: its copy dies with it. The restarted agent finds the record but
// not the copy and answers "lost"; send fails naming it and lets its
// frozen source tree run on: the program lives on host A.
func TestMigrateAgentDiesAfterResumeRecord(t *testing.T) {
	m := newMigLab(t)
	t.Setenv("GODWIT_TEST_AGENT", "die-after-mark")
	m.startAgent()
	os.Unsetenv("GODWIT_TEST_AGENT")
	w := startOn(t, m.a, workloads["counter"], "-m", "32", "-t", "2")
	s := m.startSend(w, []string{"GODWIT_TEST_RESOLVE_WAIT=90s"}, "--max-rounds", "1")
	_ = m.agent.Wait()
	m.agentP = 0
	m.startAgent()
	code, res := s.wait(t)
	_, e := s.output()
	if code == 0 {
		t.Fatalf("migrate send succeeded with the copy gone:\n%s", e)
	}
	if !strings.Contains(res.Error, "lost") || !strings.Contains(res.Error, "runs on") {
		t.Errorf("error %q: want the copy named lost and the source running on\n%s", res.Error, e)
	}
	if rp, err := m.b.RootPID(w.hostPID); err == nil && alive(rp) {
		t.Errorf("a copy %d runs on host B beside the source", rp)
	}
	if out := strings.TrimSpace(m.resolve()); out != "" {
		t.Errorf("the restarted agent holds %q", out)
	}
	intact(t, w)
	finishMoved(t, w, w.rootPID)
}

// SIGINT to send after Ready, before the commit (the pre-resume script
// runs): the Abort still reaches the agent, which drops its copy, and only
// then does the source run on; no copy is left held in doubt.
func TestMigrateInterruptAfterReady(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	dir := t.TempDir()
	flag := filepath.Join(dir, "pre-resume")
	script := filepath.Join(dir, "act.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nif [ \"$CRTOOLS_SCRIPT_ACTION\" = pre-resume ]; then touch "+flag+"; sleep 3; fi\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	w := startOn(t, m.a, workloads["counter"], "-m", "32", "-t", "2")
	s := m.startSend(w, nil, "--max-rounds", "1", "--action-script", script)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(flag); err == nil {
			break
		}
		if time.Now().After(deadline) {
			_, e := s.output()
			t.Fatalf("pre-resume never ran:\n%s", e)
		}
	}
	if err := syscall.Kill(s.pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	code, res := s.wait(t)
	_, e := s.output()
	if code == 0 {
		t.Fatalf("send succeeded after SIGINT before the commit:\n%s", e)
	}
	if !strings.Contains(res.Error, "dropped its copy") {
		t.Errorf("error %q: want the agent's abort confirmed\n%s", res.Error, e)
	}
	if out := strings.TrimSpace(m.resolve()); out != "" {
		t.Errorf("the agent still holds %q", out)
	}
	if rp, err := m.b.RootPID(w.hostPID); err == nil && alive(rp) {
		t.Errorf("a copy %d is alive on host B beside the source", rp)
	}
	intact(t, w)
	finishMoved(t, w, w.rootPID)
}

// The agent's restorer fails after it let the copy's tasks run (fault
// injected): the copy is killed, but it may have acted, so the agent says
// "partial", never "failed", and send leaves the source stopped in doubt;
// `resolve ID abort --source-pid` continues it.
func TestMigrateResumeFailsAfterTasksRan(t *testing.T) {
	m := newMigLab(t)
	t.Setenv("GODWIT_TEST_RESTORER", "fail-thaw")
	m.startAgent()
	os.Unsetenv("GODWIT_TEST_RESTORER")
	w := startOn(t, m.a, workloads["counter"], "-m", "32", "-t", "2")
	// nsenter, the program's parent here, stops itself when its child
	// stops: continued at the end.
	t.Cleanup(func() { _ = syscall.Kill(w.cmd.Process.Pid, syscall.SIGCONT) })
	s := m.startSend(w, []string{"GODWIT_TEST_RESOLVE_WAIT=20s"}, "--max-rounds", "1", "--no-lazy-restore")
	code, res := s.wait(t)
	_, e := s.output()
	if code == 0 {
		t.Fatalf("migrate send succeeded with the copy killed:\n%s", e)
	}
	if !strings.Contains(res.Error, "in doubt") || !strings.Contains(res.Error, "tasks ran") {
		t.Errorf("error %q: want in doubt, naming the tasks that ran\n%s", res.Error, e)
	}
	stoppedUntraced(t, w.rootPID)
	if out := m.resolve(res.ID); !strings.Contains(out, "partial") {
		t.Errorf("agent state %q: want partial", out)
	}
	if out := m.resolve(res.ID, "abort", "--source-pid", strconv.Itoa(w.hostPID)); !strings.Contains(out, "continued") {
		t.Errorf("resolve abort --source-pid: %q: want the source continued", out)
	}
	intact(t, w)
	finishAfterPartial(t, w)
}

// finishAfterPartial is finishMoved for a source that runs on after its
// copy ran on the other host for a while before it was killed (a partial
// resume): the copy may have logged ticks after the freeze, which the
// source then logs again, once, from where it was frozen.
func finishAfterPartial(t *testing.T, w *labWorkload) {
	t.Helper()
	w.waitTicks(3)
	if err := syscall.Kill(w.rootPID, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the source to finish", func() bool { return strings.Contains(readFile(w.log), "done ") })
	ticks := w.ticks()
	repeats := 0
	for i, n := range ticks {
		switch {
		case i == 0 && n == 1, i > 0 && n == ticks[i-1]+1:
		case i > 0 && n <= ticks[i-1] && repeats == 0:
			repeats++ // the source goes on from its freeze
		default:
			t.Fatalf("tick %d at line %d: ticks lost or repeated other than once from the freeze\n%s", n, i+1, w.tail())
		}
	}
	last := ticks[len(ticks)-1]
	if b := readFile(w.log); !strings.Contains(b, fmt.Sprintf("done ticks=%d ", last)) || !regexp.MustCompile(` usr2=0\b`).MatchString(b) {
		t.Fatalf("no \"done ticks=%d ... usr2=0\" in the log\n%s", last, w.tail())
	}
	seq, err := os.ReadFile(w.log + ".seq")
	if err != nil {
		t.Fatal(err)
	}
	if len(seq) != 8*last {
		t.Fatalf("%s.seq holds %d bytes, want %d", w.log, len(seq), 8*last)
	}
	for i := range last {
		if v := binary.NativeEndian.Uint64(seq[8*i:]); v != uint64(i+1) {
			t.Fatalf("%s.seq word %d = %d: the file offset was not kept", w.log, i, v)
		}
	}
}

// As TestMigrateResumeFailsAfterTasksRan, but the source cannot be held
// stopped (fault injected): it is killed, and send says what happened (the
// agent answered: its copy failed after tasks ran; none runs on), not that
// the agent was unreachable, nor to resume a copy that is gone.
func TestMigrateResumeFailsAfterTasksRanSourceUnheld(t *testing.T) {
	m := newMigLab(t)
	t.Setenv("GODWIT_TEST_RESTORER", "fail-thaw")
	m.startAgent()
	os.Unsetenv("GODWIT_TEST_RESTORER")
	w := startOn(t, m.a, workloads["counter"], "-m", "32", "-t", "2")
	t.Cleanup(func() { _ = syscall.Kill(w.cmd.Process.Pid, syscall.SIGCONT) })
	s := m.startSend(w, []string{"GODWIT_TEST_RESOLVE_WAIT=20s", "GODWIT_TEST_SWITCHOVER=fail-hold"}, "--max-rounds", "1", "--no-lazy-restore")
	code, res := s.wait(t)
	_, e := s.output()
	if code == 0 {
		t.Fatalf("migrate send succeeded with the copy killed:\n%s", e)
	}
	for _, want := range []string{"tasks ran", "could not be held stopped", "neither copy runs on"} {
		if !strings.Contains(res.Error, want) {
			t.Errorf("error %q: want %q\n%s", res.Error, want, e)
		}
	}
	t.Logf("send: %s", res.Error)
	for _, wrong := range []string{"unreachable", "resolve"} {
		if strings.Contains(res.Error, wrong) {
			t.Errorf("error %q: says %q", res.Error, wrong)
		}
	}
	for i := 0; alive(w.rootPID); i++ {
		if i == 500 {
			t.Fatalf("source %d still alive", w.rootPID)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if rp, err := m.b.RootPID(w.hostPID); err == nil && alive(rp) {
		t.Errorf("a copy %d is alive on host B", rp)
	}
}
