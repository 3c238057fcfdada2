package migrate

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	pb "godwit/migrate/internal/proto"
)

// The agent's side of the switch-over (docs/migration.md): once it has
// said Ready, the copy is held stopped and the agent never kills it on its
// own. Go (or a Resolve "resume") resumes it, Abort (or a Resolve "abort")
// kills it; a source that goes silent leaves it held "in doubt" until a
// Resolve decides.

// Migration states a Resolve reports (pb.Resolved.State).
const (
	stateWaiting = "waiting"  // held, its source connected
	stateInDoubt = "in-doubt" // held, its source lost
	stateResumed = "resumed"
	stateAborted = "aborted"
	stateFailed  = "failed"
	stateUnknown = "unknown"
	// stateLost: the resume was recorded by an agent that stopped since,
	// and the copy it recorded is no longer alive (it died with that
	// agent): the program is on neither host unless the source still
	// holds its tree.
	stateLost = "lost"
	// statePartial: the resume failed after some of the copy's tasks ran
	// (it is killed, but may have acted): neither "resumed" nor "failed";
	// the source holds its tree in doubt for the user.
	statePartial = "partial"
)

// Resolve decisions.
const (
	DecisionResume = "resume"
	DecisionAbort  = "abort"
)

// held is a migration whose copy is rebuilt and held stopped.
type held struct {
	id, source string
	owner      string // fingerprint of the source's certificate
	pid        int
	since      time.Time
	inDoubt    bool
	decide     chan string // one decision, from the source or a Resolve
}

// outcomes bounds the states kept for Resolve (like the history).
const maxOutcomes = 1000

// setState records migration id's state (and its copy's PID) for Resolve.
func (a *Agent) setState(id, state string, pid int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.states[id]; !ok {
		a.stateOrder = append(a.stateOrder, id)
		if len(a.stateOrder) > maxOutcomes {
			delete(a.states, a.stateOrder[0])
			delete(a.pids, a.stateOrder[0])
			delete(a.owners, a.stateOrder[0])
			a.stateOrder = a.stateOrder[1:]
		}
	}
	a.states[id], a.pids[id] = state, pid
}

// errAborted is the pre-resume hook's answer to an abort decision: the
// restorer kills the copy.
var errAborted = errors.New("aborted by the source")

// awaitGo is the pre-resume hook of a pre-copy migration: say Ready, then
// hold the stopped copy until a decision. It returns nil to resume, an
// error to have the restorer kill the copy. The resume is made durable
// first (resumedMarker): an agent restarted after it answers "resumed",
// never "unknown", so the source never runs its tree beside a live copy.
func (in *inbound) awaitGo(pid int) error {
	a := in.a
	h := &held{id: in.res.ID, source: in.res.Source, owner: in.res.owner, pid: pid, since: time.Now(), decide: make(chan string, 1)}
	a.mu.Lock()
	a.held[h.id] = h
	a.owners[h.id] = h.owner
	a.mu.Unlock()
	a.setState(h.id, stateWaiting, pid)
	defer func() {
		a.mu.Lock()
		delete(a.held, h.id)
		a.mu.Unlock()
		if h.inDoubt {
			a.cfg.Metrics.InDoubt(-1)
		}
	}()
	doubt := func(why string) {
		if h.inDoubt {
			return
		}
		a.mu.Lock()
		h.inDoubt = true
		a.mu.Unlock()
		a.setState(h.id, stateInDoubt, pid)
		a.cfg.Metrics.InDoubt(1)
		in.res.Note = "in doubt: " + why
		a.cfg.Log.Errorf("agent: migration %s of %d from %s IN DOUBT (%s): its copy is held stopped as pid %d; "+
			"settle it with `godwit migrate resolve --to %s %s resume|abort` (resume only if the source tree is gone)",
			h.id, pid, h.source, why, pid, a.cfg.Address, h.id)
	}
	if in.pending != nil {
		// Finish got this far on the prepared task.
		st := in.pending.Stats()
		in.overlap = Overlap{State: OverlapPrepared, Tasks: st.Tasks, PreparedPages: st.Pages, FinalPages: st.FinalPages}
	}
	if in.overlap.State != "" {
		ov := in.overlap
		in.res.Overlap = &ov
	}
	ready := &pb.Ready{Overlap: in.overlap.State, PreparedPages: in.overlap.PreparedPages, FinalPages: in.overlap.FinalPages,
		PreparedTasks: uint32(in.overlap.Tasks)}
	if err := in.send(&pb.Envelope{Msg: &pb.Envelope_Ready{Ready: ready}}); err != nil {
		// The source may have it (a write fails after part of it
		// left): it may be committed.
		doubt(fmt.Sprintf("ready not sent: %v", err))
	}
	silent := time.NewTimer(sourceWait)
	defer silent.Stop()
	links := in.ctl.in
	dead := in.ctl.done
	var decision string
	for decision == "" {
		select {
		case r := <-links:
			switch {
			case r.m.GetGo() != nil:
				decision = DecisionResume
			case r.m.GetAbort() != nil:
				in.res.Note = "aborted by the source after ready: " + r.m.GetAbort().Reason
				in.aborted = true
				decision = DecisionAbort
			default:
				// An authenticated peer off the protocol: not a
				// decision; the copy stays held.
				doubt(fmt.Sprintf("source sent %T instead of go", r.m.Msg))
				links = nil
			}
		case <-dead:
			// Messages read before the end come first.
			select {
			case r := <-links:
				links = nil
				if r.m.GetGo() != nil {
					decision = DecisionResume
				} else if r.m.GetAbort() != nil {
					in.aborted = true
					decision = DecisionAbort
				}
				continue
			default:
			}
			doubt(fmt.Sprintf("source link lost: %v", in.ctl.err))
			links, dead = nil, nil
		case <-silent.C:
			doubt(fmt.Sprintf("no go from the source for %v", sourceWait))
			links, dead = nil, nil
		case decision = <-h.decide:
		case <-in.agentCtx.Done():
			a.cfg.Log.Errorf("agent: stopping with migration %s held (pid %d): its copy dies with the agent", h.id, pid)
			return errors.New("agent stopped while the copy was held")
		}
	}
	if decision == DecisionAbort {
		a.setState(h.id, stateAborted, pid)
		return errAborted
	}
	if err := a.markResumed(h.id, pid); err != nil {
		// Not durable: do not resume. The copy is killed; a source that
		// asks is told "failed" and runs its own tree on.
		a.setState(h.id, stateFailed, pid)
		return fmt.Errorf("record the resume: %w", err)
	}
	return nil
}

// resumedSuffix names the durable record of a resumed migration,
// ImagesDir/<id>.resumed ("PID STARTTIME": the copy's root and its start
// time, /proc/PID/stat field 22), kept resumedKeep.
const (
	resumedSuffix = ".resumed"
	resumedKeep   = 7 * 24 * time.Hour
)

// testAgentHook is a test hook (e2e): "die-after-mark" has the agent kill
// itself (SIGKILL) right after recording a resume.
const testAgentHook = "GODWIT_TEST_AGENT"

func (a *Agent) markResumed(id string, pid int) error {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return fmt.Errorf("copy %d: %w", pid, err)
	}
	p := filepath.Join(a.cfg.ImagesDir, id+resumedSuffix)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprint(f, withOwner(fmt.Sprintf("%d %d\n", pid, st.Starttime), a.ownerOf(id)))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	d, err := os.Open(a.cfg.ImagesDir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return err
	}
	if os.Getenv(testAgentHook) == "die-after-mark" {
		_ = unix.Kill(os.Getpid(), unix.SIGKILL)
		select {}
	}
	return nil
}

// partialRecord is a resume record's content once the resume failed
// after some task ran.
const partialRecord = "partial\n"

// markPartial records, durably as markResumed, a resume that failed
// after some task ran.
func (a *Agent) markPartial(id string) {
	p := filepath.Join(a.cfg.ImagesDir, id+resumedSuffix)
	if err := os.WriteFile(p, []byte(withOwner(partialRecord, a.ownerOf(id))), 0o600); err != nil {
		a.cfg.Log.Warnf("agent: migration %s: record the partial resume: %v", id, err)
	}
}

// markedState is the state a resume record stands for: "resumed" while
// the copy it names is alive (same PID, same start time), else "lost".
func markedState(b []byte) (string, int) {
	if strings.HasPrefix(string(b), partialRecord) {
		return statePartial, 0
	}
	var pid int
	var start uint64
	if n, err := fmt.Sscanf(string(b), "%d %d\n", &pid, &start); err != nil || n != 2 || pid <= 0 {
		// No copy named (a record of an older agent, or torn): none
		// can be shown alive.
		return stateLost, 0
	}
	st, err := procfs.ReadStat(pid)
	if err != nil || st.Starttime != start {
		return stateLost, pid
	}
	return stateResumed, pid
}

// unmarkResumed removes the record of a resume that failed (the copy was
// killed after all).
func (a *Agent) unmarkResumed(id string) {
	_ = os.Remove(filepath.Join(a.cfg.ImagesDir, id+resumedSuffix))
}

// pruneResumed removes resume records older than resumedKeep.
func pruneResumed(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), resumedSuffix)
		if !ok || !isMigrationID(id) {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > resumedKeep {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// resolveAuthorizedHook, when set (tests), runs between a Resolve's
// authorization and the delivery of its decision.
var resolveAuthorizedHook func(id string)

// resolveWait bounds how long a Resolve waits for a decided copy to
// resume or die.
const resolveWait = 2 * time.Minute

// serveResolve answers one Resolve on its own connection.
//
// Only the certificate that started a migration, or an admin
// (AgentConfig.AdminCNs), may resolve it or see it held (authz.go).
func (a *Agent) serveResolve(k *ctl, r *pb.Resolve, peer *x509.Certificate) {
	reply := func(m *pb.Resolved) { _ = k.send(&pb.Envelope{Msg: &pb.Envelope_Resolved{Resolved: m}}) }
	fail := func(err error) {
		_ = k.send(&pb.Envelope{Msg: &pb.Envelope_Failure{Failure: &pb.Failure{Phase: string(PhaseSwitchover), Message: err.Error()}}})
	}
	if r.Version != Version {
		fail(fmt.Errorf("protocol version %d, this agent speaks %d", r.Version, Version))
		return
	}
	if r.Id == "" {
		if r.Decision != "" {
			fail(errors.New("a decision needs a migration id"))
			return
		}
		admin, fp := a.isAdmin(peer), peerFingerprint(peer)
		a.mu.Lock()
		out := &pb.Resolved{}
		for _, h := range a.held {
			if !admin && (h.owner == "" || h.owner != fp) {
				continue
			}
			out.Held = append(out.Held, &pb.Held{Id: h.id, Pid: int32(h.pid), Source: h.source, SinceUnixNs: h.since.UnixNano(), InDoubt: h.inDoubt})
		}
		a.mu.Unlock()
		reply(out)
		return
	}
	if !isMigrationID(r.Id) {
		fail(fmt.Errorf("bad migration id %q", r.Id))
		return
	}
	switch r.Decision {
	case "", DecisionResume, DecisionAbort:
	default:
		fail(fmt.Errorf("bad decision %q (want resume or abort)", r.Decision))
		return
	}
	if err := a.authorize(peer, r.Id); err != nil {
		a.cfg.Log.Warnf("agent: resolve from %s refused: %v", k.c.RemoteAddr(), err)
		fail(err)
		return
	}
	if resolveAuthorizedHook != nil {
		resolveAuthorizedHook(r.Id)
	}
	admin, fp := a.isAdmin(peer), peerFingerprint(peer)
	a.mu.Lock()
	h := a.held[r.Id]
	// authorize let an id with no owner or state through: its copy may
	// have been held since, for another certificate. Checked again under
	// the lock that delivers the decision.
	if h != nil && !admin && (h.owner == "" || h.owner != fp) {
		a.mu.Unlock()
		err := fmt.Errorf("migration %s was not started by %s: only its source's certificate or an admin (agent --admin-cn) may resolve it", r.Id, peerName(peer))
		a.cfg.Log.Warnf("agent: resolve from %s refused: %v", k.c.RemoteAddr(), err)
		fail(err)
		return
	}
	if h != nil && r.Decision != "" {
		select {
		case h.decide <- r.Decision:
			a.cfg.Log.Warnf("agent: migration %s: %s decided by %s", r.Id, r.Decision, k.c.RemoteAddr())
		default:
			// Decided already (by its source or another Resolve): the
			// state below tells which way.
		}
	}
	a.mu.Unlock()
	deadline := time.Now().Add(resolveWait)
	for {
		st, pid := a.stateOf(r.Id)
		settled := st != stateWaiting && st != stateInDoubt
		if settled || r.Decision == "" || time.Now().After(deadline) {
			reply(&pb.Resolved{State: st, Pid: int32(pid)})
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stateOf is migration id's state and its copy's PID when held or resumed.
func (a *Agent) stateOf(id string) (string, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h := a.held[id]; h != nil {
		if h.inDoubt {
			return stateInDoubt, h.pid
		}
		return stateWaiting, h.pid
	}
	if st, ok := a.states[id]; ok {
		return st, a.pids[id]
	}
	if b, err := os.ReadFile(filepath.Join(a.cfg.ImagesDir, id+resumedSuffix)); err == nil {
		return markedState(b)
	}
	return stateUnknown, 0
}
