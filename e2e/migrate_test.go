package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/lab"
	"godwit/internal/procfs"
	"godwit/migrate"
)

// migLab is a two-host lab with development certificates and an agent on
// host B: programs run on host A and move to B.
type migLab struct {
	t      *testing.T
	lab    *lab.Lab
	a, b   *lab.Host
	certs  string
	agent  *exec.Cmd
	agentP int // the agent's root PID
	images string
}

func newMigLab(t *testing.T) *migLab { return newMigLabOf(t, "hosta", "hostb") }

// newMigLabOf is newMigLab with these hosts (A and B first).
func newMigLabOf(t *testing.T, names ...string) *migLab {
	t.Helper()
	needRoot(t)
	l, err := lab.New(lab.Options{Names: names}, len(names))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	m := &migLab{t: t, lab: l, a: l.Host(0), b: l.Host(1), certs: t.TempDir(), images: t.TempDir()}
	if code, out := godwit(t, "certs", m.certs, m.a.Addr(), m.b.Addr()); code != 0 {
		t.Fatalf("certs: %s", out)
	}
	return m
}

func (m *migLab) tlsArgs(host *lab.Host, role string) []string {
	d := filepath.Join(m.certs, host.Addr(), role)
	return []string{"--tls-cacert", filepath.Join(m.certs, "cacert.pem"),
		"--tls-cert", filepath.Join(d, "cert.pem"), "--tls-key", filepath.Join(d, "key.pem")}
}

// startAgent runs the agent on host B and waits until it accepts.
func (m *migLab) startAgent(extra ...string) {
	t := m.t
	t.Helper()
	args := append([]string{"agent", "--address", m.b.Addr(), "--port", "7355", "--images-dir", m.images}, m.tlsArgs(m.b, "server")...)
	// A session of its own, as a daemon has: a shell job moved here
	// (--shell-job) joins it.
	m.agent = m.b.Command("setsid", append([]string{godwitBin}, append(args, extra...)...)...)
	logf, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	m.agent.Stdout, m.agent.Stderr = logf, logf
	if err := m.agent.Start(); err != nil {
		t.Fatal(err)
	}
	agent := m.agent
	t.Cleanup(func() {
		if m.agentP > 0 {
			killAndForget(m.agentP)
		}
		_ = agent.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("agent log:\n%s", b)
		}
	})
	if _, m.agentP, err = m.b.PID(m.agent); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := m.a.InNet(func() error {
			c, err := net.DialTimeout("tcp", m.b.Addr()+":7355", time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent does not accept: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// labWorkload is a counter-protocol program on a lab host.
type labWorkload struct {
	*workload
	host    *lab.Host
	hostPID int
	rootPID int
}

// startOn starts argv (plus the log path) on host in a session of its own,
// its standard streams /dev/null and a file, and waits for ticks.
func startOn(t *testing.T, host *lab.Host, argv ...string) *labWorkload {
	t.Helper()
	w := startOnHost(t, host, argv...)
	w.waitTicks(3)
	return w
}

// startOnHost is startOn without waiting for ticks.
func startOnHost(t *testing.T, host *lab.Host, argv ...string) *labWorkload {
	t.Helper()
	dir := t.TempDir()
	w := &workload{t: t, log: filepath.Join(dir, "log"), output: filepath.Join(dir, "output"), waited: make(chan error, 1)}
	out, err := os.Create(w.output)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	// PIDs high enough that the destination, where the agent and its
	// helpers took the low ones, has them free.
	if out, err := host.Command("sh", "-c", "echo $((20000 + $$ % 9000)) >/proc/sys/kernel/ns_last_pid").CombinedOutput(); err != nil {
		t.Fatalf("ns_last_pid: %v: %s", err, out)
	}
	w.cmd = host.Command("setsid", append(argv, w.log)...)
	w.cmd.Stdout, w.cmd.Stderr = out, out
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.waited <- w.cmd.Wait() }()
	lw := &labWorkload{workload: w, host: host}
	if lw.hostPID, lw.rootPID, err = host.PID(w.cmd); err != nil {
		t.Fatal(err)
	}
	w.pid = lw.rootPID
	// Killed at the end through a pidfd, never by number: a migration
	// kills the source, and with pid_max 32768 and other tests running,
	// its PID can be another process's by then.
	pfd, err := unix.PidfdOpen(lw.rootPID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := procfs.ReadStat(lw.rootPID); err != nil || st.Ppid != w.cmd.Process.Pid {
		unix.Close(pfd)
		t.Fatalf("pid %d is not the program nsenter %d started: %+v, %v", lw.rootPID, w.cmd.Process.Pid, st, err)
	}
	t.Cleanup(func() { killPidfd(pfd) })
	return lw
}

// killPidfd kills the process of pidfd pfd, waits (bounded) until it is
// dead, and closes pfd.
func killPidfd(pfd int) {
	defer unix.Close(pfd)
	if err := unix.PidfdSendSignal(pfd, unix.SIGKILL, nil, 0); err != nil {
		return // already gone
	}
	p := []unix.PollFd{{Fd: int32(pfd), Events: unix.POLLIN}}
	_, _ = unix.Poll(p, 5000)
}

// send runs `migrate send` on host A and returns its exit code, its
// result (--json) and its stderr.
func (m *migLab) send(w *labWorkload, extra ...string) (int, *migrate.Result, string) {
	m.t.Helper()
	args := append([]string{"migrate", "send", "--to", m.b.Addr(), "-t", strconv.Itoa(w.hostPID), "--json"}, m.tlsArgs(m.a, "client")...)
	cmd := m.a.Command(godwitBin, append(args, extra...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		m.t.Fatal(err)
	}
	var res migrate.Result
	if err := json.Unmarshal([]byte(stdout.String()), &res); err != nil {
		m.t.Fatalf("migrate send: exit %d, no JSON result (%v)\nstdout: %s\nstderr: %s", code, err, stdout.String(), stderr.String())
	}
	return code, &res, stderr.String()
}

// moved checks the program left host A and runs on host B with the same
// PID, and returns its root PID there.
func (m *migLab) moved(w *labWorkload) int {
	m.t.Helper()
	if p, err := m.a.RootPID(w.hostPID); err == nil && alive(p) {
		m.t.Fatalf("pid %d still alive on the source host", w.hostPID)
	}
	rp, err := m.b.RootPID(w.hostPID)
	if err != nil {
		m.t.Fatalf("not on the destination: %v", err)
	}
	return rp
}

// intact checks the source program still runs on host A as it was: not
// stopped, not traced, ticking, and with no memory tracking left.
func intact(t *testing.T, w *labWorkload) {
	t.Helper()
	if !alive(w.rootPID) {
		t.Fatalf("source program %d died\n%s", w.rootPID, w.tail())
	}
	// A running program passes through D now and then (a page fault
	// waiting on reclaim or on mmap_lock, more so on a loaded machine):
	// only a state that lasts is a fault.
	deadline := time.Now().Add(2 * time.Second)
	for {
		state, tracer := procState(t, w.rootPID)
		if tracer == 0 && (state == "S" || state == "R") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("source program %d left in state %s, tracer %d", w.rootPID, state, tracer)
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.waitTicks(3)
	if h := trackHolders(w.rootPID); len(h) > 0 {
		t.Errorf("memory tracking of %d left behind: holders %v", w.rootPID, h)
	}
}

// trackHolders lists the godwit-track holders tracking root PID pid.
func trackHolders(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		h, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/comm"); err != nil || strings.TrimSpace(string(b)) != "godwit-track" {
			continue
		}
		info, err := os.ReadFile("/proc/" + e.Name() + "/fdinfo/4")
		if err != nil {
			continue
		}
		// The pidfd's target, as a PID of the /proc read (this machine's).
		for _, ln := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(ln, "Pid:"); ok {
				if p, _ := strconv.Atoi(strings.TrimSpace(v)); p == pid {
					out = append(out, h)
				}
			}
		}
	}
	return out
}

// finish asks the moved program to check its memory and counters, and
// checks its log: every tick once and in order across the move.
func finishMoved(t *testing.T, w *labWorkload, rootPID int) {
	t.Helper()
	w.waitTicks(3)
	if err := syscall.Kill(rootPID, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(readFile(w.log), "done ") {
		if time.Now().After(deadline) {
			t.Fatalf("moved program did not finish\n%s", w.tail())
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.checkLog(0)
}

// TestMigratePrecopyC moves a C program (four threads, 64 MiB) with
// pre-copy rounds: by default onto the task the agent made and filled
// during the rounds (the restore overlapped with them: at the switch-over
// only the final delta is written), and with --no-overlap restored after
// the freeze, lazily from the agent's images. The program checks every
// page on the destination.
func TestMigratePrecopyC(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
	}{{"overlap", nil}, {"no-overlap", []string{"--no-overlap"}}} {
		t.Run(c.name, func(t *testing.T) {
			m := newMigLab(t)
			m.startAgent()
			// -p: a parent-death signal, which must not bind the moved
			// program to the agent that restored it.
			w := startOn(t, m.a, workloads["counter"], "-m", "64", "-t", "4", "-p")
			code, res, stderr := m.send(w, append([]string{"--max-rounds", "3"}, c.args...)...)
			if code != 0 {
				t.Fatalf("migrate send: exit %d: %s", code, stderr)
			}
			rp := m.moved(w)
			if res.PID != w.hostPID || res.Downtime <= 0 || len(res.Rounds) < 2 || res.Rounds[0].Pages < 64*256 {
				t.Errorf("result %+v", res)
			}
			ov, pc := res.Overlap, res.Postcopy
			t.Logf("overlap %+v, postcopy %+v", ov, pc)
			if c.name == "overlap" {
				// Every page of the rounds went into the task before the
				// freeze; the switch-over wrote the final delta (and the
				// few pages of mappings not prepared: the program's and
				// libraries' data), nothing was left for after the resume.
				last := res.Rounds[len(res.Rounds)-1]
				if ov == nil || ov.State != migrate.OverlapPrepared || ov.PreparedPages < 64*256 || ov.FinalPages > last.Pages+256 {
					t.Errorf("overlap %+v (final round %d pages): want the rounds' pages written before the freeze, the final delta after", ov, last.Pages)
				}
				if pc == nil || pc.Pages != 0 {
					t.Errorf("postcopy %+v: want nothing left to fill after the resume", pc)
				}
			} else {
				if ov == nil || ov.State != "off: --no-overlap" {
					t.Errorf("overlap %+v: want off", ov)
				}
				// Restored lazily from the agent's images: every page of
				// the 64 MiB came in after the resume, and the agent said
				// so before send ended.
				if pc == nil || pc.Pages < 64*256 {
					t.Errorf("postcopy %+v: want every page filled after the resume", pc)
				}
			}
			// The agent gone, the moved program needs nothing from it.
			killAndForget(m.agentP)
			_ = m.agent.Wait()
			finishMoved(t, w, rp)
		})
	}
}

func TestMigrateStopAndCopyPython(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	script, err := filepath.Abs("workloads/counter.py")
	if err != nil {
		t.Fatal(err)
	}
	w := startOn(t, m.a, "/usr/bin/python3", script, "-m", "16", "-t", "2")
	code, res, stderr := m.send(w, "--max-rounds", "0")
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s", code, stderr)
	}
	if len(res.Rounds) != 1 {
		t.Errorf("stop-and-copy made %d rounds: %+v", len(res.Rounds), res.Rounds)
	}
	finishMoved(t, w, m.moved(w))
}

func TestMigrateFailuresLeaveTheSourceRunning(t *testing.T) {
	m := newMigLab(t)
	w := startOn(t, m.a, workloads["counter"], "-m", "32")

	// No agent: connect fails.
	code, res, stderr := m.send(w)
	if code == 0 || res.FailedPhase != migrate.PhaseConnect {
		t.Fatalf("no agent: exit %d, phase %q: %s", code, res.FailedPhase, stderr)
	}
	intact(t, w)

	m.startAgent()
	// A client certificate another CA signed is refused.
	other := t.TempDir()
	if code, out := godwit(t, "certs", other, m.a.Addr()); code != 0 {
		t.Fatalf("certs: %s", out)
	}
	d := filepath.Join(other, m.a.Addr(), "client")
	cmd := m.a.Command(godwitBin, "migrate", "send", "--to", m.b.Addr(), "-t", strconv.Itoa(w.hostPID), "--json",
		"--tls-cacert", filepath.Join(m.certs, "cacert.pem"), "--tls-cert", filepath.Join(d, "cert.pem"), "--tls-key", filepath.Join(d, "key.pem"))
	out, err := cmd.Output()
	var r2 migrate.Result
	if err == nil || json.Unmarshal(out, &r2) != nil || (r2.FailedPhase != migrate.PhaseConnect && r2.FailedPhase != migrate.PhaseCheck) {
		t.Fatalf("wrong certificate: %v, %s", err, out)
	}
	intact(t, w)

	// Its PID taken on the destination: refused in the check phase.
	busy := m.b.Command("sh", "-c", "echo "+strconv.Itoa(w.hostPID-1)+" >/proc/sys/kernel/ns_last_pid && sleep 600")
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = busy.Process.Kill(); _ = busy.Wait() }()
	var brp int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if brp, err = m.b.RootPID(w.hostPID); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("could not take pid %d on the destination", w.hostPID)
		}
	}
	code, res, stderr = m.send(w)
	if code == 0 || res.FailedPhase != migrate.PhaseCheck || !strings.Contains(res.Error, "in use") {
		t.Fatalf("pid in use: exit %d, phase %q: %s", code, res.FailedPhase, stderr)
	}
	intact(t, w)
	killAndForget(brp)
	_ = busy.Wait()
}

// TestMigrateCwdOnlyOnSource: a program working in a directory the
// destination lacks is refused in the check phase, before any freeze; it
// used to be frozen, dumped and then fail in the restore's chdir.
func TestMigrateCwdOnlyOnSource(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	// A tmpfs in host A's mounts only, holding the program's cwd.
	top := t.TempDir()
	if out, err := m.a.Command("sh", "-c", "mount -t tmpfs tmpfs \"$0\" && mkdir \"$0/only-a\"", top).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	cwd := filepath.Join(top, "only-a")
	w := startOn(t, m.a, "sh", "-c", `cd "$0" && exec "$@"`, cwd, workloads["counter"], "-m", "8")
	if got, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", w.rootPID)); err != nil || got != cwd {
		t.Fatalf("program's cwd %q, %v; want %q", got, err, cwd)
	}
	code, res, stderr := m.send(w)
	if code == 0 || res.FailedPhase != migrate.PhaseCheck || !strings.Contains(res.Error, cwd) {
		t.Fatalf("cwd only on the source: exit %d, phase %q, error %q: %s", code, res.FailedPhase, res.Error, stderr)
	}
	intact(t, w)
}

func TestMigrateDiskFullLeavesTheSourceRunning(t *testing.T) {
	m := newMigLab(t)
	// The agent's images on a 4 MiB tmpfs in host B's mounts.
	if out, err := m.b.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", m.images).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	m.startAgent()
	w := startOn(t, m.a, workloads["counter"], "-m", "32")
	code, res, stderr := m.send(w)
	if code == 0 || res.FailedPhase != migrate.PhasePrecopy {
		t.Fatalf("disk full: exit %d, phase %q: %s", code, res.FailedPhase, stderr)
	}
	intact(t, w)
	// The agent removed what it had received (the tmpfs is in B's mounts).
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := m.b.Command("ls", "-A", m.images).CombinedOutput()
		if err != nil {
			t.Fatalf("ls: %v: %s", err, out)
		}
		if len(strings.TrimSpace(string(out))) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent left %s in its images dir", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMigrateKilledMidwayLeavesTheSourceRunning(t *testing.T) {
	for _, victim := range []string{"send", "agent", "link", "interrupt", "agent-stop"} {
		t.Run(victim, func(t *testing.T) {
			m := newMigLab(t)
			m.startAgent()
			w := startOn(t, m.a, workloads["counter"], "-m", "256")
			args := append([]string{"migrate", "send", "--to", m.b.Addr(), "-t", strconv.Itoa(w.hostPID), "--max-rounds", "8", "--downtime-budget", "1ns"}, m.tlsArgs(m.a, "client")...)
			cmd := m.a.Command(godwitBin, args...)
			// Held after each round until the test lets it go on: a
			// program that writes little otherwise finishes its
			// migration before the victim goes.
			gate := t.TempDir()
			cmd.Env = append(os.Environ(), "GODWIT_TEST_ROUND_WAIT="+gate)
			// A pipe of our own (not StderrPipe, which Wait closes): the
			// error send prints as it exits is read after Wait.
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			cmd.Stderr = pw
			err = cmd.Start()
			pw.Close()
			if err != nil {
				t.Fatal(err)
			}
			_, sendP, err := m.a.PID(cmd)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { killAndForget(sendP) })
			// After the first round, before the next.
			sc := bufio.NewScanner(pr)
			for sc.Scan() && !strings.HasPrefix(sc.Text(), "round 0") {
			}
			var rest syncBuffer
			go func() { _, _ = io.Copy(&rest, pr) }()
			if len(trackHolders(w.rootPID)) == 0 {
				t.Fatal("no tracking holder after a pre-copy round")
			}
			// The agent made the task from the first round (the restore
			// overlapped with the rounds), held traced.
			// (written in the background: it may take a moment).
			var prep int
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if prep, err = m.b.RootPID(w.hostPID); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no task prepared on the destination after a pre-copy round: %v", err)
				}
			}
			// Traced (stopped, or running a call the agent injected to
			// write a round's pages).
			if state, tracer := procState(t, prep); tracer == 0 {
				t.Fatalf("prepared task %d in state %s, tracer %d: want traced", prep, state, tracer)
			}
			switch victim {
			case "agent-stop":
				// The agent asked to stop (systemd's SIGTERM).
				if err := syscall.Kill(m.agentP, syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			case "interrupt":
				// The user gives up (Ctrl-C): send aborts.
				if err := syscall.Kill(sendP, syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
			case "send":
				killAndForget(sendP)
			case "agent":
				killAndForget(m.agentP)
			case "link":
				// Packets dropped, as by a pulled cable: no reset tells
				// either end; the control link's keepalive does.
				if err := m.b.Cut(); err != nil {
					t.Fatal(err)
				}
			}
			for n := 1; n <= 10; n++ {
				if err := os.WriteFile(filepath.Join(gate, strconv.Itoa(n)), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			select {
			case err := <-waited:
				if err == nil {
					t.Fatalf("migrate send succeeded with its %s gone", victim)
				}
			case <-time.After(2 * time.Minute):
				t.Fatalf("migrate send still running 2 minutes after its %s went", victim)
			}
			// The error names the phase the migration failed in (send
			// killed prints nothing).
			if victim != "send" {
				for deadline := time.Now().Add(10 * time.Second); !strings.Contains(rest.String(), "migrate: precopy: "); time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("send's error does not name the precopy phase:\n%s", rest.String())
					}
				}
			}
			if victim == "send" {
				// Its tracking guard ends the tracking; a ptrace stop
				// ends with the tracer.
				deadline := time.Now().Add(10 * time.Second)
				for {
					state, tracer := procState(t, w.rootPID)
					if tracer == 0 && state != "t" && state != "T" && len(trackHolders(w.rootPID)) == 0 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("source left in state %s, tracer %d, holders %v", state, tracer, trackHolders(w.rootPID))
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			intact(t, w)
			// The destination killed the task it prepared (or, agent
			// gone, its death did).
			gone(t, prep, "prepared task on the destination")
		})
	}
}

func TestMigratePrecopyGo(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "gomigrant")
	if out, err := exec.Command("go", "build", "-o", bin, "./workloads/gomigrant").CombinedOutput(); err != nil {
		t.Fatalf("go build gomigrant: %v\n%s", err, out)
	}
	m := newMigLab(t)
	m.startAgent()
	w := startOn(t, m.a, bin, "-m", "64")
	code, res, stderr := m.send(w, "--max-rounds", "4")
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s", code, stderr)
	}
	if res.Tasks < 1 || len(res.Rounds) < 2 {
		t.Errorf("result %+v", res)
	}
	rp := m.moved(w)
	w.waitTicks(10)
	if err := syscall.Kill(rp, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(readFile(w.log), " ok\n"); time.Sleep(10 * time.Millisecond) {
		if strings.Contains(readFile(w.log), "bad ") || time.Now().After(deadline) {
			t.Fatalf("moved Go program not intact\n%s", w.tail())
		}
	}
	// Every tick once, in order, across the move.
	for i, n := range w.ticks() {
		if n != i+1 {
			t.Fatalf("tick %d at line %d\n%s", n, i+1, w.tail())
		}
	}
}

// Two migrations at once to one agent; its /healthz answers, the metrics
// listener serves no history, and `migrate history` (mutual TLS) lists both.
func TestMigrateTwoAtOnceAndHistory(t *testing.T) {
	m := newMigLab(t)
	m.startAgent("--metrics-address", m.b.Addr()+":9100")
	w1 := startOn(t, m.a, workloads["counter"], "-m", "32")
	w2 := startOn(t, m.a, workloads["counter"], "-m", "32", "-t", "2")
	type out struct {
		code   int
		res    *migrate.Result
		stderr string
	}
	done := make(chan out, 2)
	for _, w := range []*labWorkload{w1, w2} {
		go func() {
			code, res, stderr := m.send(w)
			done <- out{code, res, stderr}
		}()
	}
	for range 2 {
		if o := <-done; o.code != 0 {
			t.Fatalf("migrate send: exit %d: %s", o.code, o.stderr)
		}
	}
	finishMoved(t, w1, m.moved(w1))
	finishMoved(t, w2, m.moved(w2))
	get := func(path string, want int) string {
		// Dialled on the host's thread (an http.Client would dial from
		// another goroutine, outside the lab's network).
		var c net.Conn
		if err := m.a.InNet(func() (err error) {
			c, err = net.DialTimeout("tcp", m.b.Addr()+":9100", 5*time.Second)
			return err
		}); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: agent\r\n\r\n", path); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != want {
			t.Fatalf("GET %s: %s %v: %s", path, resp.Status, err, body)
		}
		return string(body)
	}
	if h := get("/healthz", http.StatusOK); !strings.HasPrefix(h, "ok") {
		t.Errorf("/healthz: %q", h)
	}
	get("/history", http.StatusNotFound)
	hout, err := m.a.Command(godwitBin, append([]string{"migrate", "history", "--to", m.b.Addr()}, m.tlsArgs(m.a, "client")...)...).Output()
	if err != nil {
		t.Fatalf("migrate history: %v", err)
	}
	var hist []migrate.Result
	if err := json.Unmarshal(hout, &hist); err != nil {
		t.Fatal(err)
	}
	pids := map[int]bool{}
	for _, r := range hist {
		if r.Error != "" {
			t.Errorf("history holds a failure: %+v", r)
		}
		pids[r.PID] = true
	}
	if len(hist) != 2 || !pids[w1.hostPID] || !pids[w2.hostPID] {
		t.Errorf("history %+v, want the migrations of %d and %d", hist, w1.hostPID, w2.hostPID)
	}
}

func TestMigrateOverQUIC(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	w := startOn(t, m.a, workloads["counter"], "-m", "32")
	code, res, stderr := m.send(w, "--transport", "quic", "--max-rounds", "2")
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s", code, stderr)
	}
	if res.Transport != "quic" {
		t.Errorf("transport %q", res.Transport)
	}
	finishMoved(t, w, m.moved(w))
}

// TestMigrateOverQUICCompressedStriped: rounds over two QUIC connections,
// every stream zstd-compressed; the program checks its memory on B.
func TestMigrateOverQUICCompressedStriped(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	w := startOn(t, m.a, workloads["counter"], "-m", "32")
	code, res, stderr := m.send(w, "--transport", "quic", "--compress", "zstd", "--streams", "2", "--max-rounds", "2")
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s", code, stderr)
	}
	if res.Transport != "quic" || res.Compress != migrate.CompressZstd || res.Streams != 2 || len(res.Rounds) < 2 {
		t.Errorf("transport %q, compress %q, %d streams, %d rounds", res.Transport, res.Compress, res.Streams, len(res.Rounds))
	}
	finishMoved(t, w, m.moved(w))
}

// TestMigratePostcopy moves a program without pre-copy: frozen, its state
// sent, resumed on host B at once, its 64 MiB pulled from the frozen source
// over mutual TLS; the program then checks its memory and counters there.
func TestMigratePostcopy(t *testing.T) { migratePostcopy(t, "none") }

// TestMigratePostcopyCompressed: the lazy pages (the agent's GETs and the
// source's replies) travel zstd-compressed.
func TestMigratePostcopyCompressed(t *testing.T) { migratePostcopy(t, migrate.CompressZstd) }

func migratePostcopy(t *testing.T, compress string) {
	m := newMigLab(t)
	client := filepath.Join(m.certs, m.b.Addr(), "client")
	m.startAgent("--tls-client-cert", filepath.Join(client, "cert.pem"), "--tls-client-key", filepath.Join(client, "key.pem"))
	w := startOn(t, m.a, workloads["counter"], "-m", "64", "-t", "4")
	server := filepath.Join(m.certs, m.a.Addr(), "server")
	code, res, stderr := m.send(w, "--mode", "postcopy", "--compress", compress,
		"--tls-server-cert", filepath.Join(server, "cert.pem"), "--tls-server-key", filepath.Join(server, "key.pem"))
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s", code, stderr)
	}
	rp := m.moved(w)
	if res.Mode != migrate.ModePostcopy || len(res.Rounds) != 0 || res.Downtime <= 0 || res.Compress != compress {
		t.Errorf("result %+v", res)
	}
	if pc := res.Postcopy; pc == nil || pc.Pages < 64*256 {
		t.Errorf("postcopy %+v: want every page pulled after the resume", pc)
	}
	killAndForget(m.agentP)
	_ = m.agent.Wait()
	finishMoved(t, w, rp)
}

// TestMigrateHybridRefused: hybrid without a server certificate to serve
// the last pages with is refused before anything moves.
func TestMigrateHybridRefused(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	w := startOn(t, m.a, workloads["counter"], "-m", "4")
	code, res, stderr := m.send(w, "--mode", "hybrid")
	if code == 0 || res.FailedPhase != migrate.PhaseCheck || !strings.Contains(stderr, "hybrid") {
		t.Fatalf("hybrid: exit %d, %+v: %s", code, res, stderr)
	}
	intact(t, w)
}

// syncBuffer is a bytes.Buffer written by one goroutine, read by another.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
