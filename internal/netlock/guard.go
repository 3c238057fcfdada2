package netlock

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// The guard removes the lock when godwit dies holding it (SIGKILL, a
// crash): a shell in a session of its own, started before the first rule,
// that reads one line from a pipe whose only writer is godwit. godwit
// writes "keep" when the rules are its business again (removed, or kept
// for the restore); any other end of the pipe (EOF: godwit is gone, by
// whatever death) makes the guard remove the rules. A pipe's EOF, unlike
// PR_SET_PDEATHSIG, does not fire when the Go thread that started the
// guard exits, and cannot be missed if godwit dies before the guard ran.
// The guard removes twice, a second apart: a firewall command godwit had
// running when it died may still land its rules after the first.
type guard struct {
	cmd *exec.Cmd
	w   *os.File
}

// startGuard starts a guard that runs cleanup (shell commands) in the
// network namespace netns (nil: ours).
func startGuard(cleanup string, netns *os.File) (*guard, error) {
	r, w, err := os.Pipe() // close-on-exec: no other child holds the writer
	if err != nil {
		return nil, fmt.Errorf("network lock guard: %w", err)
	}
	script := "trap '' INT TERM HUP QUIT PIPE\n" +
		"IFS= read -r w\n" +
		"[ \"$w\" = keep ] && exit 0\n" +
		"{ " + cleanup + "\n} >/dev/null 2>&1\nsleep 1\n{ " + cleanup + "\n} >/dev/null 2>&1\nexit 0\n"
	cmd := commandIn(netns, "/bin/sh", "-c", script, "godwit-netlock-guard")
	cmd.Stdin = r
	// Its own session: a ^C or a kill of godwit's group must not stop
	// it before it removed the rules.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("network lock guard: %w", err)
	}
	return &guard{cmd: cmd, w: w}, nil
}

// release ends the guard: with keep, it leaves the rules as they are;
// without, it removes them. It waits for the guard to exit.
func (g *guard) release(keep bool) {
	if g == nil {
		return
	}
	if keep {
		g.w.Write([]byte("keep\n")) // a dead guard removes nothing either way
	}
	g.w.Close()
	g.cmd.Wait()
}
