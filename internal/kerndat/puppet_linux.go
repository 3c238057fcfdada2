package kerndat

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/ptrace"
	"godwit/internal/puppet"
)

// Probes that need a task to do something to itself run on the restore
// engine where they can: a puppet (the restore stub, started from a memfd
// and held under ptrace) into which the probe injects its syscalls. The
// tracer and the puppet go away when the probe returns, whatever happens;
// PTRACE_O_EXITKILL and the parent-death signal end the puppet if godwit
// dies first.
//
// Probes that need a plain, untraced process instead (they seize it
// themselves to test PTRACE_SEIZE and friends, take its descriptors, read
// its memory, or need it born in new namespaces by clone flags) use a
// /bin/sleep child (sleeper_linux.go): a puppet is born traced by its own
// tracer and cannot be started in new namespaces through puppet's API.

const puppetScratchSize = 4096

// inPuppet starts a puppet, opens an injection session on it (all signals
// blocked), maps a scratch page there, and runs fn.
func inPuppet(fn func(pid int, s *ptrace.Session, scratch uint64) error) error {
	tr := ptrace.New()
	defer tr.Close()
	p, stop, err := startPuppet(tr)
	if err != nil {
		return err
	}
	defer stop()
	return inSession(tr, p.Pid, func(s *ptrace.Session, scratch uint64) error { return fn(p.Pid, s, scratch) })
}

// puppetTimeout bounds a probe's puppet (a variable for the test).
var puppetTimeout = stopTimeout

// startPuppet starts a puppet for a probe. A watchdog kills it after
// puppetTimeout, so an injected syscall the kernel never finishes ends the
// probe with an error instead of hanging `check`. stop kills and reaps it.
func startPuppet(tr *ptrace.Tracer) (*puppet.Puppet, func(), error) {
	p, err := puppet.Start(puppet.Options{Tracer: tr, Argv0: "godwit-kerndat"})
	if err != nil {
		return nil, nil, err
	}
	pid := p.Pid
	watchdog := time.AfterFunc(puppetTimeout, func() { _ = unix.Kill(pid, unix.SIGKILL) })
	return p, func() {
		watchdog.Stop()
		p.Kill()
	}, nil
}

// inSession opens an injection session on the stopped puppet pid, maps a
// scratch page there and runs fn; the session is ended (registers and
// signal mask restored, the puppet stopped again) when fn returns.
func inSession(tr *ptrace.Tracer, pid int, fn func(s *ptrace.Session, scratch uint64) error) error {
	s, err := tr.BeginInjection(pid)
	if err != nil {
		return fmt.Errorf("puppet %d: %w", pid, err)
	}
	scratch, err := s.Syscall(unix.SYS_MMAP, 0, puppetScratchSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err == nil {
		err = fn(s, scratch)
	} else {
		err = fmt.Errorf("puppet %d: scratch mmap: %w", pid, err)
	}
	if eerr := s.End(); eerr != nil && err == nil {
		err = fmt.Errorf("puppet %d: %w", pid, eerr)
	}
	return err
}

// scratchStrings writes ss as C strings into the puppet's scratch page,
// after the first skip bytes, and returns their addresses there.
func scratchStrings(pid int, scratch uint64, skip int, ss ...string) ([]uint64, error) {
	var buf []byte
	addrs := make([]uint64, len(ss))
	for i, s := range ss {
		addrs[i] = scratch + uint64(skip+len(buf))
		buf = append(buf, s...)
		buf = append(buf, 0)
	}
	if skip+len(buf) > puppetScratchSize {
		return nil, fmt.Errorf("puppet %d: %d bytes of strings overflow the scratch page", pid, len(buf))
	}
	if err := ptrace.WriteMem(pid, scratch+uint64(skip), buf); err != nil {
		return nil, fmt.Errorf("puppet %d: %w", pid, err)
	}
	return addrs, nil
}

// injectAll runs calls in order in the session and stops at the first
// failure, naming it.
func injectAll(s *ptrace.Session, calls []injected) error {
	for _, c := range calls {
		if _, err := s.Syscall(c.nr, c.args...); err != nil {
			return fmt.Errorf("%s: %w", c.what, err)
		}
	}
	return nil
}

type injected struct {
	what string
	nr   uintptr
	args []uint64
}
