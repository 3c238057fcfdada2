package migrate

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	pb "godwit/migrate/internal/proto"
)

// The source's side of the switch-over (docs/migration.md). Ready from the
// agent is the commit: from then on the source tree never runs again
// unless the agent's copy is known gone. It stays frozen, bound to this
// process (PTRACE_O_EXITKILL: if `send` dies, the kernel kills it); Go is
// sent and the tree killed only once the agent answers Resumed. A lost
// answer is settled by Resolve on a new connection; if the agent cannot be
// reached, both copies are left stopped "in doubt" for the user to settle.

// switchGate ends the migration's work on an interrupt (SIGINT, SIGTERM:
// the caller's context) or a lost link before the commit, and only says
// so after it.
type switchGate struct {
	mu          sync.Mutex
	committed   bool
	ready       bool // the agent holds its copy: the link must carry Abort
	interrupted bool
	cancel      context.CancelFunc
	conn        net.Conn
	notice      func(string)
}

// interrupt is the caller's context ending.
func (g *switchGate) interrupt() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.committed {
		if g.notice != nil {
			g.notice("migrate: switch-over in progress: interrupt ignored until the agent confirms")
		}
		return
	}
	g.interrupted = true
	g.cancel()
	if !g.ready {
		g.conn.Close()
	}
}

// readyArrived says the agent holds its copy: an interrupt from now on
// leaves the link open for the Abort (abortHeld).
func (g *switchGate) readyArrived() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ready = true
}

// linkLost is the control link dying.
func (g *switchGate) linkLost() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.committed {
		g.cancel()
	}
}

// commit passes the commit point unless an interrupt came first.
func (g *switchGate) commit() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.interrupted {
		return false
	}
	g.committed = true
	return true
}

// testSwitchover is a test hook (e2e): "stall" blocks `send` right after
// the commit, "lose-go" drops the control link instead of sending Go,
// "pause:DUR" waits DUR there, "fail-hold" has the source's stop (held in
// doubt) fail. testResolveWait overrides sourceResolveWait.
const (
	testSwitchover  = "GODWIT_TEST_SWITCHOVER"
	testResolveWait = "GODWIT_TEST_RESOLVE_WAIT"
)

// sourceResolveWait bounds how long `send` tries to reach the agent after
// a lost answer, the program frozen, before leaving both copies in doubt.
const sourceResolveWait = time.Minute

// errInDoubt marks a switch-over left in doubt.
var errInDoubt = errors.New("in doubt")

// switchOver runs once the agent is Ready: it sends Go and, once the agent
// runs its copy, kills the source tree (switched). If the agent's copy is
// known gone, the source is let go (the dump's error path thaws it).
// Otherwise the source stays stopped and the error wraps errInDoubt.
func (s *sender) switchOver(o *SendOptions, id string, hold *dumper.Hold, notice func(string)) (switched bool, at time.Time, note string, err error) {
	if err := hold.KillOnExit(true); err != nil {
		_ = hold.KillOnExit(false)
		return false, at, "", fmt.Errorf("hold the source tree: %w", err)
	}
	hook := os.Getenv(testSwitchover)
	if hook != "" && notice != nil {
		notice("migrate: test: committed, hook " + hook)
	}
	switch {
	case hook == "stall":
		select {}
	case strings.HasPrefix(hook, "pause:"):
		if d, err := time.ParseDuration(strings.TrimPrefix(hook, "pause:")); err == nil {
			time.Sleep(d)
		}
	}
	var lost error
	if hook == "lose-go" {
		s.c.Close()
		lost = errors.New("test: go dropped")
	} else if lost = s.send(&pb.Envelope{Msg: &pb.Envelope_Go{Go: &pb.Go{}}}); lost == nil {
		m, err := s.recv(PhaseSwitchover, time.Minute)
		switch {
		case err != nil:
			lost = err
		case m.GetResumed() == nil:
			lost = fmt.Errorf("expected resumed, got %T", m.Msg)
		default:
			if err := killTree(o.Pid); err != nil {
				// The tracer still holds it frozen: the dump kills it.
				note = fmt.Sprintf("source kill: %v", err)
			}
			return true, s.at, note, nil
		}
	}
	// The answer is lost: ask the agent on a new connection, deciding the
	// resume if it still holds the copy.
	if notice != nil {
		notice(fmt.Sprintf("migrate: switch-over: %v; asking the agent to resume migration %s", lost, id))
	}
	partial := false
	r, last := resolveRetry(s.ctx, o, id, DecisionResume, func(st string) bool {
		switch st {
		case stateResumed, stateLost, statePartial, stateFailed, stateAborted, stateUnknown:
			return true
		}
		return false
	})
	if r != nil {
		switch r.State {
		case stateResumed:
			if err := killTree(o.Pid); err != nil {
				note = fmt.Sprintf("source kill: %v; ", err)
			}
			return true, time.Now(), note + fmt.Sprintf("resumed through a new connection after: %v", lost), nil
		case stateLost:
			// The agent recorded the resume, then stopped, and its
			// copy died with it: never a success. The source tree,
			// still held frozen here, is the only copy left.
			if err := hold.KillOnExit(false); err != nil {
				return false, at, "", fmt.Errorf("%w: the agent's copy of migration %s is lost (it died with a restarted agent), and the source cannot be let go: %v", errInDoubt, id, err)
			}
			return false, at, "", fmt.Errorf("the agent's copy of migration %s is lost (resumed, then gone with a restarted agent) after: %v; the source tree was still held frozen and runs on", id, lost)
		case statePartial:
			// Some of the copy's tasks ran before it was killed:
			// the source must not simply run on.
			partial, last = true, fmt.Errorf("the agent's copy failed to resume after some of its tasks ran (it is killed, but may have acted)")
		case stateFailed, stateAborted, stateUnknown:
			if err := hold.KillOnExit(false); err != nil {
				// Still attached with EXITKILL, the tree would
				// die with the dump's tracer.
				return false, at, "", fmt.Errorf("%w: the agent has no copy (%s), but the source cannot be let go: %v", errInDoubt, r.State, err)
			}
			return false, at, "", fmt.Errorf("the agent has no copy (%s) after: %v; the source runs on", r.State, lost)
		}
	}
	// Both copies stay stopped: a stop queued on every process holds the
	// source once the dump lets go of it. If it cannot be held, it is
	// killed: what is left then depends on the agent's copy.
	why, after := fmt.Sprintf("%v, and the agent unreachable", lost), fmt.Sprintf("resume the agent's copy with `godwit migrate resolve --to %s %s resume`", o.To, id)
	if partial {
		// The agent answered: its copy is killed, so none runs on.
		why, after = last.Error(), "neither copy runs on"
	}
	for _, p := range treePIDs(o.Pid) {
		err := unix.Kill(p, unix.SIGSTOP)
		if hook == "fail-hold" {
			err = errors.New("test: stop refused")
		}
		if err != nil && err != unix.ESRCH {
			killed := "so it is killed"
			if kerr := killTree(o.Pid); kerr != nil {
				killed += fmt.Sprintf(" (%v)", kerr)
			}
			return false, at, "", fmt.Errorf("%w: %s; the source could not be held stopped (%v), %s: %s", errInDoubt, why, err, killed, after)
		}
	}
	if err := hold.KillOnExit(false); err != nil {
		return false, at, "", fmt.Errorf("%w: %s; the source dies with this process (%v): %s", errInDoubt, why, err, after)
	}
	if partial {
		return false, at, "", fmt.Errorf("%w: %v: the source tree %d is held stopped (SIGSTOP); continue it with "+
			"`godwit migrate resolve --to %s %s abort --source-pid %d` on this host once that is safe",
			errInDoubt, last, o.Pid, o.To, id, o.Pid)
	}
	return false, at, "", fmt.Errorf("%w: %v, and the agent unreachable for %v (%v): the source tree %d is held stopped (SIGSTOP); "+
		"settle it with `godwit migrate resolve --to %s %s resume|abort --source-pid %d` on this host",
		errInDoubt, lost, resolveWindow(), last, o.Pid, o.To, id, o.Pid)
}

// resolveRetry asks the agent about migration id with decision on new
// connections, once a second for sourceResolveWait (or GODWIT_TEST_RESOLVE_WAIT),
// until it answers a state settled accepts; then it returns that answer.
// Otherwise it returns the last failure, or the last unsettled state, as
// an error.
func resolveRetry(parent context.Context, o *SendOptions, id, decision string, settled func(state string) bool) (*Resolution, error) {
	deadline := time.Now().Add(resolveWindow())
	for {
		ctx, cancel := context.WithTimeout(parent, 30*time.Second)
		r, err := Resolve(ctx, ResolveOptions{To: o.To, TLS: o.TLS, ServerName: o.ServerName, ID: id, Decision: decision})
		cancel()
		if err == nil {
			if settled(r.State) {
				return r, nil
			}
			err = fmt.Errorf("agent: migration %s %s", id, r.State)
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(time.Second)
	}
}

// resolveWindow is how long `send` keeps asking the agent.
func resolveWindow() time.Duration {
	if d, err := time.ParseDuration(os.Getenv(testResolveWait)); err == nil {
		return d
	}
	return sourceResolveWait
}

// abortHeld ends a migration after Ready but before the commit (an
// interrupt, a failed pre-resume script): the agent holds its copy, so
// the source tree, still frozen, may run on only once the agent says the
// copy is gone. Abort goes on the link; the outcome is asked on a new
// connection (Resolve{id, abort}), which also decides it should the Abort
// have been lost. Unconfirmed, both copies stay stopped in doubt: the
// error wraps errInDoubt and names the id.
func (s *sender) abortHeld(o *SendOptions, id string, why error) error {
	_ = s.send(&pb.Envelope{Msg: &pb.Envelope_Abort{Abort: &pb.Abort{Reason: why.Error()}}})
	// s.ctx ended with the interrupt: this asks on its own.
	r, last := resolveRetry(context.Background(), o, id, DecisionAbort, func(st string) bool {
		switch st {
		case stateAborted, stateFailed, stateUnknown, stateLost:
			return true
		}
		return false
	})
	if r != nil {
		return fmt.Errorf("%w; the agent dropped its copy (%s), the source runs on", why, r.State)
	}
	// A stop queued on every process holds the source once the dump
	// lets go of it.
	for _, p := range treePIDs(o.Pid) {
		if err := unix.Kill(p, unix.SIGSTOP); err != nil && err != unix.ESRCH {
			return fmt.Errorf("%w: %v after ready, the agent did not confirm the abort (%v), and the source could not be held stopped (%v): "+
				"settle it with `godwit migrate resolve --to %s %s abort` now", errInDoubt, why, last, err, o.To, id)
		}
	}
	return fmt.Errorf("%w: %v after ready, and the agent did not confirm the abort for %v (%v): the source tree %d is held stopped (SIGSTOP); "+
		"settle it with `godwit migrate resolve --to %s %s resume|abort --source-pid %d` on this host",
		errInDoubt, why, resolveWindow(), last, o.Pid, o.To, id, o.Pid)
}

// treePIDs lists pid's tree, parents first.
func treePIDs(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, p)
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, t := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", p, t.Name()))
			for _, c := range strings.Fields(string(b)) {
				if k, err := strconv.Atoi(c); err == nil {
					queue = append(queue, k)
				}
			}
		}
	}
	return out
}

// contAll continues a source tree left held stopped in doubt (a program
// that catches SIGCONT sees one).
func contAll(pids []int) {
	for _, p := range pids {
		_ = unix.Kill(p, unix.SIGCONT)
	}
}

// ResolveOptions settle (or ask about) a migration whose switch-over lost
// its answer.
type ResolveOptions struct {
	To         string // agent host[:port]
	TLS        TLSFiles
	ServerName string
	// ID is the migration; "" lists those the agent holds.
	ID string
	// Decision is DecisionResume, DecisionAbort or "" (ask only).
	Decision string
	// SourcePID, if set, is the source tree `send` left held stopped on
	// this host: killed once the agent's copy runs, continued if the
	// agent has none.
	SourcePID int
}

// Resolution is the agent's answer.
type Resolution struct {
	State string          `json:"state"`
	PID   int             `json:"pid,omitempty"`
	Held  []HeldMigration `json:"held,omitempty"`
	// Source is what was done to SourcePID.
	Source string `json:"source,omitempty"`
}

// HeldMigration is a copy the agent holds stopped.
type HeldMigration struct {
	ID      string    `json:"id"`
	PID     int       `json:"pid"`
	Source  string    `json:"source"`
	Since   time.Time `json:"since"`
	InDoubt bool      `json:"in_doubt"`
}

// Resolve asks the agent about migration o.ID and passes o.Decision.
func Resolve(ctx context.Context, o ResolveOptions) (*Resolution, error) {
	switch o.Decision {
	case "", DecisionResume, DecisionAbort:
	default:
		return nil, fmt.Errorf("resolve: decision %q (want resume or abort)", o.Decision)
	}
	if o.SourcePID != 0 && (o.Decision == "" || o.ID == "") {
		return nil, errors.New("resolve: --source-pid needs a migration id and a decision")
	}
	c, err := dialAgent(ctx, o.To, o.TLS, o.ServerName)
	if err != nil {
		return nil, fmt.Errorf("resolve: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	k := newCtl(c, nil)
	if err := k.send(&pb.Envelope{Msg: &pb.Envelope_Resolve{Resolve: &pb.Resolve{Version: Version, Id: o.ID, Decision: o.Decision}}}); err != nil {
		return nil, fmt.Errorf("resolve: %w", err)
	}
	m, err := k.recv(resolveWait + 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("resolve: agent: %w", err)
	}
	if f := m.GetFailure(); f != nil {
		return nil, fmt.Errorf("resolve: agent: %s", f.Message)
	}
	rm := m.GetResolved()
	if rm == nil {
		return nil, fmt.Errorf("resolve: expected resolved, got %T", m.Msg)
	}
	r := &Resolution{State: rm.State, PID: int(rm.Pid)}
	for _, h := range rm.Held {
		r.Held = append(r.Held, HeldMigration{ID: h.Id, PID: int(h.Pid), Source: h.Source, Since: time.Unix(0, h.SinceUnixNs), InDoubt: h.InDoubt})
	}
	if o.SourcePID > 0 {
		switch r.State {
		case stateResumed:
			if err := killTree(o.SourcePID); err != nil {
				return r, fmt.Errorf("resolve: the agent runs the copy, but the source: %w", err)
			}
			r.Source = "killed"
		case stateFailed, stateAborted, stateUnknown, stateLost:
			contAll(treePIDs(o.SourcePID))
			r.Source = "continued"
		case statePartial:
			// The copy is dead but ran a little: the user decides.
			if o.Decision == DecisionAbort {
				contAll(treePIDs(o.SourcePID))
				r.Source = "continued"
			} else {
				r.Source = "still held"
			}
		default:
			r.Source = "still held"
		}
	}
	return r, nil
}

// dialAgent opens the control connection (mutual TLS, keepalive and user
// timeout) to the agent at to.
func dialAgent(ctx context.Context, to string, files TLSFiles, serverName string) (*tls.Conn, error) {
	host, port, err := splitHostPort(to)
	if err != nil {
		return nil, err
	}
	if serverName == "" {
		serverName = host
	}
	tc, err := files.clientConfig(serverName)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second, KeepAliveConfig: keepAlive}, Config: tc}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", addr, err)
	}
	c := raw.(*tls.Conn)
	if err := tuneConn(c.NetConn()); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// HistoryOptions name the agent whose history to read.
type HistoryOptions struct {
	To         string
	TLS        TLSFiles
	ServerName string
}

// FetchHistory reads the agent's finished migrations over mutual TLS.
func FetchHistory(ctx context.Context, o HistoryOptions) ([]Result, error) {
	c, err := dialAgent(ctx, o.To, o.TLS, o.ServerName)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	k := newCtl(c, nil)
	if err := k.send(&pb.Envelope{Msg: &pb.Envelope_HistoryRequest{HistoryRequest: &pb.HistoryRequest{Version: Version}}}); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	m, err := k.recv(time.Minute)
	if err != nil {
		return nil, fmt.Errorf("history: agent: %w", err)
	}
	if f := m.GetFailure(); f != nil {
		return nil, fmt.Errorf("history: agent: %s", f.Message)
	}
	hr := m.GetHistoryReply()
	if hr == nil {
		return nil, fmt.Errorf("history: expected a history reply, got %T", m.Msg)
	}
	var out []Result
	if err := json.Unmarshal(hr.Json, &out); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return out, nil
}
