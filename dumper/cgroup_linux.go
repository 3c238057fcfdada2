package dumper

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

// freezeTimeout bounds the wait for a cgroup to report itself frozen.
const freezeTimeout = 10 * time.Second

// cgroupFreezer freezes a cgroup through the v1 freezer (freezer.state) or
// the v2 interface (cgroup.freeze). It holds the cgroup's directory open,
// checked to be on cgroupfs, and opens each control file in it without
// following links: the files are read and written as root, and a
// directory that merely looks like a cgroup must not redirect them.
type cgroupFreezer struct {
	path string
	dir  int
	v2   bool
}

func newCgroupFreezer(path string) (*cgroupFreezer, error) {
	if !filepath.IsAbs(path) {
		// Relative to the freezer hierarchy: the v1 freezer mount, or
		// the unified hierarchy on a cgroup2-only host.
		root := "/sys/fs/cgroup/freezer"
		var fs unix.Statfs_t
		if unix.Statfs("/sys/fs/cgroup", &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC {
			root = "/sys/fs/cgroup"
		}
		path = filepath.Join(root, path)
	}
	dir, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("freeze cgroup %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(dir, &fs); err != nil {
		unix.Close(dir)
		return nil, fmt.Errorf("freeze cgroup %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC && fs.Type != unix.CGROUP_SUPER_MAGIC {
		unix.Close(dir)
		return nil, fmt.Errorf("freeze cgroup %s: not a cgroup (not on cgroupfs)", path)
	}
	c := &cgroupFreezer{path: path, dir: dir}
	if c.has("freezer.state") {
		return c, nil
	}
	if c.has("cgroup.freeze") {
		c.v2 = true
		return c, nil
	}
	unix.Close(dir)
	return nil, fmt.Errorf("freeze cgroup %s: neither freezer.state nor cgroup.freeze there", path)
}

func (c *cgroupFreezer) close() { unix.Close(c.dir) }

// has reports whether name is a regular file of the cgroup.
func (c *cgroupFreezer) has(name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(c.dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG
}

// open opens control file name of the cgroup, never through a link.
func (c *cgroupFreezer) open(name string, flag int) (*os.File, error) {
	fd, err := unix.Openat(c.dir, name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: open %s: %w", c.path, name, err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(c.path, name)), nil
}

func (c *cgroupFreezer) read(name string) ([]byte, error) {
	f, err := c.open(name, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: read %s: %w", c.path, name, err)
	}
	return b, nil
}

func (c *cgroupFreezer) contains(pid int) (bool, error) {
	b, err := c.read("cgroup.procs")
	if err != nil {
		return false, err
	}
	for _, f := range strings.Fields(string(b)) {
		if f == strconv.Itoa(pid) {
			return true, nil
		}
	}
	return false, nil
}

// frozen reports whether the cgroup is (completely) frozen.
func (c *cgroupFreezer) frozen() (bool, error) {
	if c.v2 {
		b, err := c.read("cgroup.events")
		if err != nil {
			return false, err
		}
		return bytes.Contains(b, []byte("frozen 1")), nil
	}
	b, err := c.read("freezer.state")
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "FROZEN", nil
}

func (c *cgroupFreezer) set(frozen bool) error {
	name, val := "freezer.state", "THAWED"
	if c.v2 {
		name, val = "cgroup.freeze", "0"
	}
	if frozen {
		val = "FROZEN"
		if c.v2 {
			val = "1"
		}
	}
	f, err := c.open(name, unix.O_WRONLY)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte(val))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cgroup %s: write %s: %w", c.path, name, err)
	}
	if !frozen {
		return nil
	}
	deadline := time.Now().Add(freezeTimeout)
	for {
		done, err := c.frozen()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			_ = c.set(false)
			return fmt.Errorf("cgroup %s: not frozen after %v", c.path, freezeTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// freezeViaCgroup stops every thread of pid with the cgroup freezer first
// (so the thread set cannot change while we seize), seizes them, thaws
// the cgroup and interrupts each thread. On error the cgroup is thawed;
// threads already seized are released when the tracer closes.
func freezeViaCgroup(tr *ptrace.Tracer, path string, pid int) ([]int, error) {
	c, err := newCgroupFreezer(path)
	if err != nil {
		return nil, err
	}
	defer c.close()
	in, err := c.contains(pid)
	if err != nil {
		return nil, fmt.Errorf("freeze cgroup %s: %w", c.path, err)
	}
	if !in {
		return nil, fmt.Errorf("freeze cgroup %s: process %d is not in it", c.path, pid)
	}
	// The dump thaws the cgroup once the threads are seized; one frozen
	// by someone else would come out thawed.
	if was, err := c.frozen(); err != nil {
		return nil, fmt.Errorf("freeze cgroup %s: %w", c.path, err)
	} else if was {
		return nil, fmt.Errorf("freeze cgroup %s is already frozen: thaw it first", c.path)
	}
	if err := c.set(true); err != nil {
		return nil, err
	}
	tids, err := procfs.Tasks(pid)
	if err == nil {
		for _, tid := range tids {
			if err = tr.Seize(tid, 0); err != nil {
				break
			}
		}
	}
	if terr := c.set(false); terr != nil && err == nil {
		err = terr
	}
	if err != nil {
		return nil, fmt.Errorf("freeze %d via cgroup: %w", pid, err)
	}
	// Leader first, then the others, as FreezeProcess returns them.
	out := []int{pid}
	for _, tid := range tids {
		if _, err := tr.Interrupt(tid); err != nil {
			return nil, fmt.Errorf("freeze %d via cgroup: %w", pid, err)
		}
		if tid != pid {
			out = append(out, tid)
		}
	}
	if len(out) != len(tids) {
		return nil, errors.New("leader not among the threads")
	}
	// Threads made between the thaw and the interrupts: stop them too,
	// until a pass finds none (a stopped thread makes no more).
	known := map[int]bool{}
	for _, tid := range out {
		known[tid] = true
	}
	for round := 0; ; round++ {
		now, err := procfs.Tasks(pid)
		if err != nil {
			return nil, fmt.Errorf("freeze %d via cgroup: %w", pid, err)
		}
		fresh := false
		for _, tid := range now {
			if known[tid] {
				continue
			}
			if round > 100 {
				return nil, fmt.Errorf("freeze %d via cgroup: thread set does not settle", pid)
			}
			if _, err := tr.Attach(tid, 0); err != nil {
				return nil, fmt.Errorf("freeze %d via cgroup: %w", pid, err)
			}
			known[tid], fresh = true, true
			out = append(out, tid)
		}
		if !fresh {
			break
		}
	}
	sort.Ints(out[1:])
	return out, nil
}
