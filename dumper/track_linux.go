package dumper

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/internal/pagexfer"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
	"godwit/uffd"
)

// Memory tracking between pre-dump rounds (and the final --track-mem dump).
//
// The kernel keeps uffd-wp tracking only while the userfaultfd lives: when
// its last fd closes, every VMA is unregistered. Rounds are separate godwit
// invocations, so something must hold the uffd in between. That is a
// holder: godwit itself re-executed (/proc/self/exe) as a tiny daemon in a
// session of its own, named "godwit-track", holding exactly three fds:
//
//	3  the userfaultfd (created in the target by an injected userfaultfd(),
//	   taken with pidfd_getfd and closed in the target again: the program
//	   never sees an extra fd)
//	4  a pidfd of the target: the holder exits as soon as the target does
//	5  a memfd with the tracking state (trackState, JSON)
//	6  a memfd holding a count of the target's forks (8 bytes)
//
// The uffd reports forks (UFFD_FEATURE_EVENT_FORK): the holder reads each
// event, closes the child's new uffd (the child is a new task: a later
// round takes it whole) and counts it. A child that forks, writes shared
// memory and exits between two rounds is seen by no scan; the count tells
// the next round that the shared memory of the parent must be taken
// whole. (A fork waits until its event is read: the holder reads at once.)
//
// It also exits after a timeout, and the final dump kills it. A later
// round finds it through the godwit-track.json record its parent images
// directory holds, checks it is the same process (pid, start time, name)
// tracking the same target, and takes fds 3 and 5 with pidfd_getfd.
//
// A process rather than e.g. an fd parked in the target (the program would
// see it) or a file in the images (an fd cannot be stored): a holder is
// visible only as its own small process, and dies with the target.
//
// The state says which ranges are tracked, which pages the latest round's
// pagemap covers, and which round that was (gen). A round may leave a page
// to its parent images only if the page was tracked since the parent was
// written, is not reported written, and the parent covers it. A round
// that fails after scanning (the scan re-protects the pages it reports)
// marks the state broken; so does a round that dies (its busy mark stays):
// the next round then takes every page again, never less.

// trackRecordName is the godwit file (beside CRIU's images) naming the
// holder of a pre-dump's tracking.
const trackRecordName = "godwit-track.json"

// holderEnv carries the holder's timeout (seconds) into the re-executed
// godwit; see init.
const holderEnv = "GODWIT_TRACK_HOLDER"

// holderComm is the holder's name (/proc/PID/comm).
const holderComm = "godwit-track"

// DefaultHolderTimeout is how long a holder keeps tracking without a
// final dump.
const DefaultHolderTimeout = time.Hour

// Holder fds (see above).
const (
	holderUffdFD  = 3
	holderPidFD   = 4
	holderStateFD = 5
	holderForksFD = 6
)

// trackFeatures are the features of a tracking uffd: the tracker's, fork
// events (see above) and discard events (discards_linux.go).
const trackFeatures = uffd.TrackerFeatures | uffd.FeatureEventFork | uffd.FeatureEventRemove

// holderCleanEnv is set in the holder's second exec (see init).
const holderCleanEnv = "GODWIT_TRACK_HOLDER_CLEAN"

func init() {
	v := os.Getenv(holderEnv)
	if v == "" {
		return
	}
	if os.Getenv(holderCleanEnv) == "" {
		// godwit may have inherited fds without close-on-exec (a
		// caller's pipe: a holder keeping it open would make the
		// caller wait for EOF until the holder exits). Execute once
		// more with only 0-6 open.
		if err := unix.CloseRange(holderForksFD+1, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
			os.Exit(2)
		}
		exe, err := os.Executable()
		if err != nil {
			exe = "/proc/self/exe"
		}
		_ = unix.Exec(exe, []string{holderComm}, []string{holderEnv + "=" + v, holderCleanEnv + "=1"})
		os.Exit(2)
	}
	os.Exit(holderMain(v))
}

// holderMain is the holder process: count the target's forks until the
// target exits or the timeout, then exit (closing the uffd ends the
// tracking).
func holderMain(arg string) int {
	secs, err := strconv.Atoi(arg)
	if err != nil || secs <= 0 {
		return 2
	}
	if name, err := unix.BytePtrFromString(holderComm); err == nil {
		_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(name)), 0, 0, 0)
	}
	u, err := uffd.FromFDNegotiated(holderUffdFD, trackFeatures)
	if err != nil {
		return 2
	}
	var forks uint64
	discards := &discardLog{fd: holderForksFD}
	buf := make([]byte, 32*64)
	var msgs []uffd.Msg
	deadline := time.Now().Add(time.Duration(secs) * time.Second)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return 0
		}
		fds := []unix.PollFd{{Fd: holderPidFD, Events: unix.POLLIN}, {Fd: holderUffdFD, Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(min(left.Milliseconds()+1, 1<<30)))
		if err == unix.EINTR {
			continue
		}
		if err != nil || fds[0].Revents != 0 {
			return 0 // the target exited (or the pidfd is unusable)
		}
		if n == 0 {
			continue
		}
		if fds[1].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			return 0 // the target's mm is gone (exec): nothing to track
		}
		// The discard log is in flux from before the read (which lets
		// the discarding task go on) until it holds what was read.
		if discards.begin() != nil {
			return 2
		}
		msgs, err = u.Read(buf, msgs[:0])
		got := uint64(0)
		changed := false
		for _, m := range msgs {
			switch m.Event {
			case uffd.EventFork:
				if m.UFD >= 0 {
					unix.Close(m.UFD)
				}
				got++
			case uffd.EventRemove:
				discards.add(m.Start, m.End)
				changed = true
			}
		}
		if discards.end(changed) != nil {
			return 2 // a discard that could go unnoticed: end the tracking
		}
		if got > 0 {
			forks += got
			var b [8]byte
			binary.NativeEndian.PutUint64(b[:], forks)
			if _, werr := unix.Pwrite(holderForksFD, b[:], 0); werr != nil {
				return 2 // a fork that could go unnoticed: end the tracking
			}
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			return 2
		}
	}
}

// readForks reads a holder's fork count.
func readForks(f *os.File) (uint64, error) {
	var b [8]byte
	n, err := f.ReadAt(b[:], 0)
	if n == 8 {
		return binary.NativeEndian.Uint64(b[:]), nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return 0, nil // nothing counted yet
	}
	return 0, fmt.Errorf("read fork count: %w", err)
}

// span is [Start, End) of page-aligned addresses: a uffd.VMA, whose
// range algebra (uffd.Subtract, uffd.Intersect) the rounds use.
type span = uffd.VMA

// trackState is the holder's memfd content.
type trackState struct {
	Version     int        `json:"version"`
	TargetPid   int        `json:"target_pid"`
	TargetStart uint64     `json:"target_start"`
	Features    uint64     `json:"features"`
	Gen         uint64     `json:"gen"` // rounds completed; the record of round gen names this state
	Broken      bool       `json:"broken,omitempty"`
	Busy        int        `json:"busy,omitempty"` // pid of the godwit in a round
	Forks       uint64     `json:"forks"`          // the fork count when the latest round scanned
	BusyStart   uint64     `json:"busy_start,omitempty"`
	Tracked     []uffd.VMA `json:"tracked"`
	Covered     []span     `json:"covered"` // pages in the latest round's pagemap
	Untrackable []uffd.VMA `json:"untrackable,omitempty"`
}

const trackStateVersion = 1

// trackRecord is godwit-track.json in a round's images directory.
type trackRecord struct {
	TargetPid   int    `json:"target_pid"`
	TargetStart uint64 `json:"target_start"`
	HolderPid   int    `json:"holder_pid"`
	HolderStart uint64 `json:"holder_start"`
	Gen         uint64 `json:"gen"`
}

// maxTrackFile bounds what is read of a record or state.
const maxTrackFile = 64 << 20

// shmRecord is a shared anonymous object a round pre-dumped with its
// pages tracked: its mappings in the tree then, so that a later round can
// tell whether every write to it since was seen.
type shmRecord struct {
	Shmid    uint64       `json:"shmid"`
	Mappings []shmMapping `json:"mappings"`
	Covered  []span       `json:"covered"` // offsets the round's pagemap covers
}

// shmMapping is one VMA of a shared object in one task.
type shmMapping struct {
	Pid       int    `json:"pid"`
	TaskStart uint64 `json:"task_start"`
	Start     uint64 `json:"start"`
	End       uint64 `json:"end"`
	Pgoff     uint64 `json:"pgoff"` // offset in the object, bytes
}

func checkRecord(r *trackRecord) error {
	if r.TargetPid <= 0 || r.HolderPid <= 0 || r.Gen == 0 {
		return fmt.Errorf("%s: bad record (target %d, holder %d, round %d)", trackRecordName, r.TargetPid, r.HolderPid, r.Gen)
	}
	return nil
}

func parseTreeRecord(b []byte) (*treeRecord, error) {
	var r treeRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", trackRecordName, err)
	}
	if err := checkRecord(&r.trackRecord); err != nil {
		return nil, err
	}
	seen := map[int]bool{r.TargetPid: true}
	for i := range r.Tasks {
		if err := checkRecord(&r.Tasks[i]); err != nil {
			return nil, err
		}
		if seen[r.Tasks[i].TargetPid] {
			return nil, fmt.Errorf("%s: task %d recorded twice", trackRecordName, r.Tasks[i].TargetPid)
		}
		seen[r.Tasks[i].TargetPid] = true
	}
	for _, o := range r.Shm {
		var last uint64
		for i, c := range o.Covered {
			if c.Start%pageSize != 0 || c.End%pageSize != 0 || c.Start >= c.End || (i > 0 && c.Start < last) {
				return nil, fmt.Errorf("%s: bad covered range %#x-%#x of shared object %d", trackRecordName, c.Start, c.End, o.Shmid)
			}
			last = c.End
		}
		for _, m := range o.Mappings {
			if m.Pid <= 0 || m.Start%pageSize != 0 || m.End%pageSize != 0 || m.Start >= m.End || m.Pgoff%pageSize != 0 || m.Pgoff+(m.End-m.Start) < m.Pgoff {
				return nil, fmt.Errorf("%s: bad mapping %d:%#x-%#x+%#x of shared object %d", trackRecordName, m.Pid, m.Start, m.End, m.Pgoff, o.Shmid)
			}
		}
	}
	return &r, nil
}

func parseState(b []byte) (*trackState, error) {
	var s trackState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("tracking state: %w", err)
	}
	if s.Version != trackStateVersion {
		return nil, fmt.Errorf("tracking state: version %d, want %d", s.Version, trackStateVersion)
	}
	check := func(what string, a, b uint64) error {
		if a%pageSize != 0 || b%pageSize != 0 || a >= b {
			return fmt.Errorf("tracking state: bad %s range %#x-%#x", what, a, b)
		}
		return nil
	}
	var last uint64
	for _, v := range s.Tracked {
		if err := check("tracked", v.Start, v.End); err != nil {
			return nil, err
		}
	}
	for i, c := range s.Covered {
		if err := check("covered", c.Start, c.End); err != nil {
			return nil, err
		}
		if i > 0 && c.Start < last {
			return nil, fmt.Errorf("tracking state: covered ranges out of order at %#x", c.Start)
		}
		last = c.End
	}
	return &s, nil
}

// startTime returns a process's start time (clock ticks since boot) and
// name.
func startTime(pid int) (uint64, string, error) {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return 0, "", err
	}
	return st.Starttime, st.Comm, nil
}

// tracking is one round's hold on the memory tracking of a target.
type tracking struct {
	pid       int
	start     uint64
	holderPid int
	holder    int // pidfd of the holder
	hstart    uint64
	u         *uffd.Uffd
	state     *os.File // our copy of the holder's memfd
	forks     *os.File // our copy of the holder's fork count
	// forked says the task forked since the parent round (or may have:
	// fresh tracking), scanForks the count this round scanned at.
	forked    bool
	scanForks uint64
	dirty     []span // what the latest scan found written or untracked
	st        *trackState
	fresh     bool          // tracking started by this round: everything is new
	frozen    time.Duration // the target's frozen time to set it up
	scanned   bool          // the tracker re-protected pages: a failure now breaks the state
	notes     []string
	log       *logging.Logger
}

// note records something the user should know about the round.
func (t *tracking) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	t.notes = append(t.notes, s)
	t.log.Warnf("track %d: %s", t.pid, s)
}

// treeRecord is godwit-track.json: the root task's record at the top
// level (as a round of one task writes it), the other tasks of the tree in
// Tasks, and the shared memory objects the round pre-dumped in Shm.
type treeRecord struct {
	trackRecord
	Tasks []trackRecord `json:"tasks,omitempty"`
	Shm   []shmRecord   `json:"shm,omitempty"`
}

// parentTrack is what a round's parent images say about their tracking.
type parentTrack struct {
	rec  *treeRecord // nil: no usable record (note says why)
	note string
}

// readParentTrack reads the tracking record of the parent images; a
// missing record is not an error (the round then takes every page), a
// malformed one is.
func readParentTrack(parent *images.Dir) (*parentTrack, error) {
	f, err := parent.OpenRead(trackRecordName)
	if err != nil {
		return &parentTrack{note: fmt.Sprintf("the parent images have no tracking record (%v): taking every page", err)}, nil
	}
	b, err := readAllLimited(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	rec, err := parseTreeRecord(b)
	if err != nil {
		return nil, err
	}
	return &parentTrack{rec: rec}, nil
}

// task returns the record of pid (nil: not tracked by the parent round).
func (p *parentTrack) task(pid int) *trackRecord {
	if p == nil || p.rec == nil {
		return nil
	}
	if p.rec.TargetPid == pid {
		return &p.rec.trackRecord
	}
	for i := range p.rec.Tasks {
		if p.rec.Tasks[i].TargetPid == pid {
			return &p.rec.Tasks[i]
		}
	}
	return nil
}

// openTracking takes over the tracking the parent round (pt, nil: none)
// left for pid, or starts a fresh one (a full round) when there is none or
// it cannot be trusted; without fresh it then returns nil. root says pid
// is the task the user named: a parent round of another process is then
// an error (for another task of the tree, a reused pid is a new task).
// It marks the state busy.
func openTracking(pid int, pt *parentTrack, root bool, timeout time.Duration, log *logging.Logger, fresh bool) (*tracking, error) {
	start, _, err := startTime(pid)
	if err != nil {
		return nil, fmt.Errorf("track %d: %w", pid, err)
	}
	t := &tracking{pid: pid, start: start, holder: -1, log: log}
	if pt != nil {
		switch rec := pt.task(pid); {
		case pt.rec == nil:
			t.note("%s", pt.note)
		case rec == nil:
			t.note("task %d is new since the parent round: taking all of its pages", pid)
		default:
			ok, err := t.adopt(rec, root)
			if err != nil {
				return nil, err
			}
			if ok {
				return t, nil
			}
		}
	}
	if !fresh {
		t.close()
		return nil, nil
	}
	if err := t.startFresh(timeout); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// adopt takes the holder named by the parent's record of this task.
// false: nothing usable (a note says why), start afresh. An error: refuse
// the round (another round runs).
func (t *tracking) adopt(rec *trackRecord, root bool) (bool, error) {
	if rec.TargetPid != t.pid || rec.TargetStart != t.start {
		if root {
			return false, fmt.Errorf("track %d: the parent images are of process %d (started at %d), not this one", t.pid, rec.TargetPid, rec.TargetStart)
		}
		t.note("task %d is not the process the parent round tracked under that pid: taking all of its pages", t.pid)
		return false, nil
	}
	hs, comm, err := startTime(rec.HolderPid)
	if err != nil || hs != rec.HolderStart || comm != holderComm {
		t.note("the tracking of the parent round is gone (holder %d exited: timeout?): taking every page", rec.HolderPid)
		return false, nil
	}
	hfd, err := unix.PidfdOpen(rec.HolderPid, 0)
	if err != nil {
		t.note("holder %d: %v: taking every page", rec.HolderPid, err)
		return false, nil
	}
	t.holder, t.holderPid, t.hstart = hfd, rec.HolderPid, hs
	// The pidfd pins the process: checked again, the pid cannot have
	// been reused between the check and the open.
	if hs2, _, err := startTime(rec.HolderPid); err != nil || hs2 != hs {
		t.note("holder %d exited: taking every page", rec.HolderPid)
		t.dropHolder()
		return false, nil
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", rec.HolderPid, holderUffdFD))
	if err != nil {
		// Exiting (a zombie has no fds).
		t.note("holder %d is exiting: taking every page", rec.HolderPid)
		t.dropHolder()
		return false, nil
	}
	if link != "anon_inode:[userfaultfd]" {
		t.dropHolder()
		return false, fmt.Errorf("track %d: holder %d holds %q as fd %d, not a userfaultfd", t.pid, rec.HolderPid, link, holderUffdFD)
	}
	sfd, err := unix.PidfdGetfd(hfd, holderStateFD, 0)
	if err != nil {
		t.note("holder %d: take state: %v: taking every page", rec.HolderPid, err)
		t.killHolder()
		return false, nil
	}
	t.state = os.NewFile(uintptr(sfd), "track-state")
	ffd, err := unix.PidfdGetfd(hfd, holderForksFD, 0)
	if err != nil {
		t.note("holder %d: take fork count: %v: taking every page", rec.HolderPid, err)
		t.killHolder()
		return false, nil
	}
	t.forks = os.NewFile(uintptr(ffd), "track-forks")
	st, err := t.readState()
	if err != nil {
		t.note("holder %d: %v: taking every page", rec.HolderPid, err)
		t.killHolder()
		return false, nil
	}
	if st.TargetPid != t.pid || st.TargetStart != t.start {
		t.killHolder()
		return false, fmt.Errorf("track %d: holder %d tracks process %d, not this one", t.pid, rec.HolderPid, st.TargetPid)
	}
	if st.Busy != 0 {
		if bs, _, err := startTime(st.Busy); err == nil && bs == st.BusyStart {
			t.dropHolder()
			return false, fmt.Errorf("track %d: another round (godwit pid %d) is using the tracking", t.pid, st.Busy)
		}
		t.note("an earlier round (godwit pid %d) died during its scan: taking every page", st.Busy)
		t.killHolder()
		return false, nil
	}
	if st.Broken {
		t.note("an earlier round failed after its scan: taking every page")
		t.killHolder()
		return false, nil
	}
	if st.Gen != rec.Gen {
		// Another round was made from the same parent since: its scan
		// consumed the writes this round would need.
		t.dropHolder()
		return false, fmt.Errorf("track %d: the parent images are round %d, but the tracking is at round %d: pre-dump on top of the latest round", t.pid, rec.Gen, st.Gen)
	}
	ufd, err := unix.PidfdGetfd(hfd, holderUffdFD, 0)
	if err != nil {
		t.note("holder %d: take uffd: %v: taking every page", rec.HolderPid, err)
		t.killHolder()
		return false, nil
	}
	if t.u, err = uffd.FromFDNegotiated(ufd, st.Features); err != nil {
		unix.Close(ufd)
		t.killHolder()
		return false, err
	}
	t.st = st
	if err := t.markBusy(); err != nil {
		t.close()
		return false, err
	}
	return true, nil
}

// endOtherTracking kills the holders already tracking pid (a first round
// made again, or a round on top of a parent that lost its record): their
// uffd has the VMAs registered, and a second one could register none.
// It waits until each is gone, so that its uffd was released.
func endOtherTracking(pid int, log *logging.Logger) {
	endTrackingOf(map[int]bool{pid: true}, log)
}

// endTrackingOf kills the holders tracking any process of pids, and
// waits for each to be gone.
func endTrackingOf(pids map[int]bool, log *logging.Logger) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		h, err := strconv.Atoi(e.Name())
		if err != nil || h == os.Getpid() {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", h))
		if err != nil || strings.TrimSpace(string(comm)) != holderComm {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", h, holderPidFD))
		if err != nil {
			continue
		}
		pid := pidfdTarget(string(info))
		if !pids[pid] {
			continue
		}
		pfd, err := unix.PidfdOpen(h, 0)
		if err != nil {
			continue
		}
		log.Warnf("track %d: ending the earlier tracking of this process (holder %d)", pid, h)
		if unix.PidfdSendSignal(pfd, unix.SIGKILL, nil, 0) == nil {
			fds := []unix.PollFd{{Fd: int32(pfd), Events: unix.POLLIN}}
			for i := 0; i < 100; i++ {
				if n, err := unix.Poll(fds, 50); n > 0 || (err != nil && err != unix.EINTR) {
					break
				}
			}
		}
		unix.Close(pfd)
	}
}

// startFresh creates a uffd in the target (frozen for three injected
// calls), negotiates it and starts a holder with it.
func (t *tracking) startFresh(timeout time.Duration) error {
	t.fresh = true
	endOtherTracking(t.pid, t.log)
	if timeout <= 0 {
		timeout = DefaultHolderTimeout
	}
	tr := ptrace.New()
	defer tr.Close()
	t0 := time.Now()
	if _, err := tr.FreezeProcess(t.pid, 0); err != nil {
		return fmt.Errorf("track %d: %w", t.pid, err)
	}
	frozenAt := time.Now()
	ufd, err := injectUffd(tr, t.pid)
	if terr := tr.ThawProcess(t.pid, false); terr != nil && err == nil {
		err = terr
	}
	t.frozen = time.Since(frozenAt)
	t.log.Infof("track %d: froze in %v, frozen %v to create the userfaultfd", t.pid, frozenAt.Sub(t0), t.frozen)
	if err != nil {
		if ufd >= 0 {
			unix.Close(ufd)
		}
		return fmt.Errorf("track %d: %w", t.pid, err)
	}
	if t.u, err = uffd.FromFD(ufd); err != nil {
		unix.Close(ufd)
		return err
	}
	feat, err := t.u.API(trackFeatures)
	if err != nil {
		return fmt.Errorf("track %d: %w", t.pid, err)
	}
	mfd, err := unix.MemfdCreate("godwit-track-state", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("track %d: memfd: %w", t.pid, err)
	}
	t.state = os.NewFile(uintptr(mfd), "track-state")
	ffd, err := unix.MemfdCreate("godwit-track-forks", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("track %d: memfd: %w", t.pid, err)
	}
	t.forks = os.NewFile(uintptr(ffd), "track-forks")
	t.st = &trackState{Version: trackStateVersion, TargetPid: t.pid, TargetStart: t.start, Features: feat}
	if err := t.markBusy(); err != nil {
		return err
	}
	return t.startHolder(timeout)
}

// injectUffd makes the frozen target create a userfaultfd, takes it and
// closes the target's copy.
func injectUffd(tr *ptrace.Tracer, pid int) (int, error) {
	// User-mode only: no privilege needed in the target, and WP_ASYNC
	// never hands a fault to the (absent) reader anyway.
	const uffdUserModeOnly = 1 // UFFD_USER_MODE_ONLY, include/uapi/linux/userfaultfd.h
	r, err := tr.InjectSyscall(pid, unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly)
	if err != nil {
		return -1, fmt.Errorf("userfaultfd() in the target: %w", err)
	}
	tfd := int(r)
	our, gerr := uffd.TakeFD(pid, tfd)
	if _, cerr := tr.InjectSyscall(pid, unix.SYS_CLOSE, uint64(tfd)); cerr != nil {
		// The program would keep an fd it never opened: fail, and
		// say so loudly.
		if our >= 0 {
			unix.Close(our)
		}
		return -1, fmt.Errorf("close the injected userfaultfd %d in the target: %w (the target keeps it open)", tfd, cerr)
	}
	if gerr != nil {
		return -1, gerr
	}
	return our, nil
}

func (t *tracking) startHolder(timeout time.Duration) error {
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	pfd, err := unix.PidfdOpen(t.pid, 0)
	if err != nil {
		return fmt.Errorf("track %d: pidfd: %w", t.pid, err)
	}
	pidf := os.NewFile(uintptr(pfd), "target-pidfd")
	defer pidf.Close()
	// The holder gets a duplicate: an os.File around the uffd's own fd
	// would close it when collected.
	ufd, err := unix.FcntlInt(uintptr(t.u.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("track %d: dup uffd: %w", t.pid, err)
	}
	uf := os.NewFile(uintptr(ufd), "uffd")
	defer uf.Close()
	cmd := exec.Command(exe)
	cmd.Args = []string{holderComm}
	cmd.Env = []string{holderEnv + "=" + strconv.Itoa(int(max(timeout/time.Second, 1)))}
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{uf, pidf, t.state, t.forks}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	if err != nil {
		return fmt.Errorf("track %d: start holder: %w", t.pid, err)
	}
	// Reap it if it ends while we run (godwit's own process usually
	// ends first; the holder then belongs to init).
	go func() { _ = cmd.Wait() }()
	t.holderPid = cmd.Process.Pid
	if t.holder, err = unix.PidfdOpen(t.holderPid, 0); err != nil {
		return fmt.Errorf("track %d: holder pidfd: %w", t.pid, err)
	}
	// Its start time identifies it in the record; its name is set by
	// the holder itself, so wait for it (a moment after exec; seconds on
	// a loaded machine, where 2 s was once too short).
	for deadline := time.Now().Add(holderStartWait); ; {
		hs, comm, err := startTime(t.holderPid)
		if err == nil && comm == holderComm {
			t.hstart = hs
			return nil
		}
		if err != nil || time.Now().After(deadline) {
			t.killHolder()
			return fmt.Errorf("track %d: holder %d did not start (%v)", t.pid, t.holderPid, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// holderStartWait bounds the wait for a new holder to name itself.
const holderStartWait = 30 * time.Second

func readAllLimited(f *os.File) ([]byte, error) {
	b := make([]byte, 0, 4096)
	for {
		if len(b) == cap(b) {
			if len(b) >= maxTrackFile {
				return nil, fmt.Errorf("%s: larger than %d bytes", f.Name(), maxTrackFile)
			}
			b = append(b, 0)[:len(b)]
		}
		n, err := f.ReadAt(b[len(b):cap(b)], int64(len(b)))
		b = b[:len(b)+n]
		if errors.Is(err, io.EOF) {
			if n == 0 {
				return b, nil
			}
		} else if err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Name(), err)
		}
	}
}

func (t *tracking) readState() (*trackState, error) {
	b, err := readAllLimited(t.state)
	if err != nil {
		return nil, err
	}
	return parseState(b)
}

func (t *tracking) writeState() error {
	b, err := json.Marshal(t.st)
	if err != nil {
		return err
	}
	if err := t.state.Truncate(0); err != nil {
		return fmt.Errorf("track %d: write state: %w", t.pid, err)
	}
	if _, err := t.state.WriteAt(b, 0); err != nil {
		return fmt.Errorf("track %d: write state: %w", t.pid, err)
	}
	return nil
}

func (t *tracking) markBusy() error {
	me := os.Getpid()
	ms, _, err := startTime(me)
	if err != nil {
		return err
	}
	t.st.Busy, t.st.BusyStart = me, ms
	return t.writeState()
}

// recordOf is this task's entry in a round's godwit-track.json (gen: the
// round it makes on this task's tracking).
func (t *tracking) recordOf(gen uint64) trackRecord {
	return trackRecord{TargetPid: t.pid, TargetStart: t.start, HolderPid: t.holderPid, HolderStart: t.hstart, Gen: gen}
}

// commit records a successful round: its tracked ranges and coverage.
func (t *tracking) commit(tracked, untrackable []uffd.VMA, covered []span) error {
	t.st.Gen++
	t.st.Busy, t.st.BusyStart = 0, 0
	t.st.Forks = t.scanForks
	t.st.Tracked, t.st.Untrackable, t.st.Covered = tracked, untrackable, covered
	return t.writeState()
}

// fail ends a failed round: the state stays as it was unless the scan
// ran, which breaks it (the next round takes everything).
func (t *tracking) fail() {
	if t.st == nil || t.state == nil {
		return
	}
	if t.scanned {
		t.st.Broken = true
	}
	t.st.Busy, t.st.BusyStart = 0, 0
	if err := t.writeState(); err != nil {
		t.log.Warnf("track %d: %v: ending the tracking", t.pid, err)
		t.killHolder()
	}
	if t.fresh {
		// Nothing refers to a holder whose first round failed.
		t.killHolder()
	}
}

// end stops the tracking for good (the final dump): the holder is
// killed, which closes the uffd and unregisters every range.
func (t *tracking) end() { t.killHolder() }

func (t *tracking) killHolder() {
	if t.holder >= 0 {
		_ = unix.PidfdSendSignal(t.holder, unix.SIGKILL, nil, 0)
	}
	t.dropHolder()
}

func (t *tracking) dropHolder() {
	if t.holder >= 0 {
		unix.Close(t.holder)
		t.holder = -1
	}
}

// close releases this round's copies (the holder keeps its own).
func (t *tracking) close() {
	if t.u != nil {
		t.u.Close()
		t.u = nil
	}
	if t.state != nil {
		t.state.Close()
		t.state = nil
	}
	if t.forks != nil {
		t.forks.Close()
		t.forks = nil
	}
	t.dropHolder()
}

// resolveParent opens --prev-images-dir: relative to the images directory
// (as CRIU's), or absolute.
// It is opened from the images directory's fd, as the "parent" link will
// be resolved (not joined as a path: "-D" may be a symlink or
// /proc/self/fd/N).
func resolveParent(imagesDir, prev string) (*images.Dir, error) {
	d, err := images.Open(imagesDir, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	fd, err := unix.Openat(d.FD(), prev, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("--prev-images-dir %s: %w", prev, err)
	}
	defer unix.Close(fd)
	pd, err := images.OpenFD(fd)
	if err != nil {
		return nil, fmt.Errorf("--prev-images-dir %s: %w", prev, err)
	}
	if err := pagexfer.CheckParent(d, pd); err != nil {
		pd.Close()
		return nil, fmt.Errorf("--prev-images-dir %s: %w", prev, err)
	}
	return pd, nil
}

// swapMarkerType is the swap type /proc/PID/pagemap shows for a uffd-wp
// pte marker (a protected pte that holds no page: PM_SWAP with type
// SWP_PTE_MARKER, whose number depends on the kernel's configuration), found
// by making one; -1 if unknown.
var swapMarkerType = func() func() int64 {
	var typ int64 = -2
	return func() int64 {
		if typ == -2 {
			typ = probeMarkerType()
		}
		return typ
	}
}()

// probeMarkerType write-protects one unpopulated page of a private file
// mapping of our own (file uffd-wp always installs markers) and reads its
// pagemap entry.
func probeMarkerType() int64 {
	f, err := os.CreateTemp("", "godwit-marker-")
	if err != nil {
		return -1
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(int64(pageSize)); err != nil {
		return -1
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(pageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		return -1
	}
	defer unix.Munmap(m)
	u, err := uffd.Open(0)
	if err != nil {
		return -1
	}
	defer u.Close()
	if _, err := u.API(uffd.TrackerFeatures); err != nil {
		return -1
	}
	addr := uint64(uintptr(unsafe.Pointer(&m[0])))
	if _, err := u.Register(addr, pageSize, uffd.ModeWP); err != nil {
		return -1
	}
	if err := u.WriteProtect(addr, pageSize, true, false); err != nil {
		return -1
	}
	pm, err := procfs.OpenPagemap(os.Getpid())
	if err != nil {
		return -1
	}
	defer pm.Close()
	ents := make([]procfs.PagemapEntry, 1)
	if err := pm.Read(addr, ents); err != nil {
		return -1
	}
	e := ents[0]
	if e.Present() || !e.Swapped() || !e.UffdWP() {
		return -1
	}
	return int64(e.SwapType())
}

// EndTracking ends the memory tracking pre-dump rounds left on pid (its
// holders are killed, so the kernel drops the write protection): for a
// caller that gives up after rounds without a final dump, such as a
// migration that failed.
//
// Every process of pid's tree is tracked by a holder of its own, so the
// holders of pid and of all its descendants are ended.
func EndTracking(pid int) {
	tree := map[int]bool{pid: true}
	queue := []int{pid}
	for len(queue) > 0 && len(tree) < 1<<16 {
		kids, _ := Children(queue[0]) // a task gone has no holder to end
		queue = queue[1:]
		for _, c := range kids {
			if !tree[c] {
				tree[c] = true
				queue = append(queue, c)
			}
		}
	}
	endTrackingOf(tree, logging.Default())
}

// pidfdTarget is the Pid: line of a pidfd's fdinfo (-1 when absent).
func pidfdTarget(info string) int {
	for _, ln := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(ln, "Pid:"); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				return n
			}
		}
	}
	return -1
}
