package restorer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Restores into a PID namespace of their own: a dumped PID or TID freed
// by killing the workload may be taken by another process before the
// restore claims it (pid_max wraps within seconds on a busy host); in a
// new namespace every number is free.

// nsRestoreEnv makes the test binary restore (nsRestoreMain) instead of
// running tests; its value is an nsJob in JSON.
const nsRestoreEnv = "GODWIT_TEST_RESTORE_IN_PIDNS"

// nsJob is what the namespace's init restores and checks.
type nsJob struct {
	Imgs         string
	Log          string
	LeaveStopped bool // restore -s, read the state (procState), SIGCONT
	// Refused: the restore must fail, its error (reported in Last)
	// containing this.
	Refused string
}

// nsResult is what it reports back (JSON on stdout).
type nsResult struct {
	Err   string
	State map[string][]byte // procState of the restored task (LeaveStopped); bytes: auxv is binary
	Last  string            // the workload's last log line (finish)
}

// tb is the part of testing.TB the state helpers use, so that the
// namespace's init (which has no testing.T) can run them too.
type tb interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// nsTB fails by panicking, caught by nsRestoreMain.
type nsTB struct{}

type nsFail string

func (nsTB) Helper()                        {}
func (nsTB) Fatal(a ...any)                 { panic(nsFail(fmt.Sprint(a...))) }
func (nsTB) Fatalf(format string, a ...any) { panic(nsFail(fmt.Sprintf(format, a...))) }

// restoreInPidNS restores job in a new PID (and mount) namespace, whose
// init is a copy of this test binary, and returns its report.
func restoreInPidNS(t *testing.T, job nsJob, wrapper ...string) nsResult {
	t.Helper()
	b, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	argv := append(wrapper, os.Args[0], "-test.run=^$")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), nsRestoreEnv+"="+string(b))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		// The namespace's init: everything in it dies with it.
		_ = cmd.Process.Kill()
		<-done
	})
	select {
	case err = <-done:
		done <- err
	case <-time.After(90 * time.Second):
		t.Fatalf("restore in a pid namespace: no report after 90s\n%s", errOut.String())
	}
	var res nsResult
	if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil {
		t.Fatalf("restore in a pid namespace: %v (report %q: %v)\n%s", err, out.String(), jerr, errOut.String())
	}
	if res.Err != "" {
		t.Fatalf("restore in a pid namespace: %s\n%s", res.Err, errOut.String())
	}
	return res
}

// nsRestoreMain is the namespace's init: it mounts its own /proc,
// restores the job, checks it and prints the report.
func nsRestoreMain(arg string) int {
	var job nsJob
	res := nsResult{}
	func() {
		defer func() {
			if p := recover(); p != nil {
				res.Err = fmt.Sprint(p)
			}
		}()
		if err := json.Unmarshal([]byte(arg), &job); err != nil {
			panic(err)
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			panic(fmt.Sprintf("make / private: %v", err))
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			panic(fmt.Sprintf("mount /proc: %v", err))
		}
		r, err := Restore(Options{ImagesDir: job.Imgs, LeaveStopped: job.LeaveStopped}, nil)
		if job.Refused != "" {
			if err == nil {
				_ = unix.Kill(r.PID(), unix.SIGKILL)
				panic(fmt.Sprintf("restore %s succeeded, want refused (%s)", job.Imgs, job.Refused))
			}
			if !strings.Contains(err.Error(), job.Refused) {
				panic(fmt.Sprintf("restore %s: %v, want refused (%s)", job.Imgs, err, job.Refused))
			}
			res.Last = err.Error()
			return
		}
		if err != nil {
			panic(fmt.Sprintf("restore %s: %v", job.Imgs, err))
		}
		if job.LeaveStopped {
			waitStopped(nsTB{}, r.PID())
			res.State = map[string][]byte{}
			for k, v := range procState(nsTB{}, r.PID()) {
				res.State[k] = []byte(v)
			}
			if err := unix.Kill(r.PID(), unix.SIGCONT); err != nil {
				panic(err)
			}
		}
		res.Last = finish(nsTB{}, r, job.Log)
	}()
	b, _ := json.Marshal(res)
	os.Stdout.Write(b)
	return 0
}
