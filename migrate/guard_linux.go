package migrate

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"godwit/dumper"
)

// The tracking guard: pre-copy rounds leave the source's memory tracked by a
// holder (dumper's godwit-track) that outlives them by design. If `migrate
// send` dies without cleaning up (SIGKILL), nothing would end that tracking
// until the holder's timeout. So Send starts a guard first: godwit re-run
// in a session of its own, holding the read end of a pipe whose write end
// only Send has. Send writes guardOK before it exits; if the pipe closes
// without it (Send died), the guard ends the tracking of the source.

const (
	guardEnv = "GODWIT_MIGRATE_GUARD" // the source's PID
	guardOK  = "ok"
)

func init() {
	v, ok := os.LookupEnv(guardEnv)
	if !ok {
		return
	}
	pid, err := strconv.Atoi(v)
	if err != nil || pid <= 0 {
		os.Exit(2)
	}
	b, _ := io.ReadAll(os.NewFile(3, "guard"))
	if string(b) != guardOK {
		dumper.EndTracking(pid)
	}
	os.Exit(0)
}

// guard is the running guard of one Send.
type guard struct {
	w   *os.File
	cmd *exec.Cmd
}

func startGuard(pid int) (*guard, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"godwit-migrate-guard"}
	cmd.Env = []string{guardEnv + "=" + strconv.Itoa(pid)}
	cmd.ExtraFiles = []*os.File{r}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("tracking guard: %w", err)
	}
	return &guard{w: w, cmd: cmd}, nil
}

// done tells the guard Send ended in order, and reaps it.
func (g *guard) done() {
	_, _ = g.w.WriteString(guardOK)
	g.w.Close()
	_ = g.cmd.Wait()
}
