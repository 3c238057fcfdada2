package kerndat

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cgroupMount finds the mount point of a cgroup2 hierarchy (v1 == false)
// or of the v1 hierarchy with the given controller.
func cgroupMount(v1 bool, controller string) (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		switch {
		case !v1 && qf[0] == "cgroup2":
			return pf[4], nil
		case v1 && qf[0] == "cgroup":
			for _, o := range strings.Split(qf[2], ",") {
				if o == controller {
					return pf[4], nil
				}
			}
		}
	}
	if v1 {
		return "", fmt.Errorf("no cgroup v1 hierarchy with the %s controller is mounted", controller)
	}
	return "", errors.New("no cgroup2 hierarchy is mounted")
}

// withProbeCgroup makes a fresh cgroup under root, moves a sleeper into
// it, runs fn, and removes both again.
func withProbeCgroup(root, procsFile string, fn func(dir string, pid int) error) (err error) {
	dir, err := os.MkdirTemp(root, "godwit-check-")
	if err != nil {
		return fmt.Errorf("make probe cgroup: %w", err)
	}
	s, err := startSleeper(sleeperOpts{})
	if err != nil {
		os.Remove(dir)
		return err
	}
	defer func() {
		s.kill()
		// The cgroup empties once the killed task is released; give it
		// a moment before giving up.
		var rerr error
		for i := 0; i < 100; i++ {
			if rerr = os.Remove(dir); rerr == nil || os.IsNotExist(rerr) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		err = errors.Join(err, fmt.Errorf("remove probe cgroup: %w", rerr))
	}()
	if err := os.WriteFile(filepath.Join(dir, procsFile), []byte(strconv.Itoa(s.pid)), 0); err != nil {
		return fmt.Errorf("move %d into %s: %w", s.pid, dir, err)
	}
	return fn(dir, s.pid)
}

// waitFile polls path until pred holds on its contents.
func waitFile(path string, pred func(string) bool) (string, error) {
	var last string
	for deadline := time.Now().Add(stopTimeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		last = string(b)
		if pred(last) {
			return last, nil
		}
	}
	return last, fmt.Errorf("%s did not reach the expected state (last %q)", path, strings.TrimSpace(last))
}

// probeFreezerV2: a task in a cgroup2 group is frozen by cgroup.freeze
// (cgroup.events says frozen 1) and thawed again.
func probeFreezerV2() error {
	root, err := cgroupMount(false, "")
	if err != nil {
		return err
	}
	return withProbeCgroup(root, "cgroup.procs", func(dir string, pid int) error {
		freeze := filepath.Join(dir, "cgroup.freeze")
		events := filepath.Join(dir, "cgroup.events")
		if err := os.WriteFile(freeze, []byte("1"), 0); err != nil {
			return fmt.Errorf("write %s: %w", freeze, err)
		}
		if _, err := waitFile(events, func(s string) bool { return strings.Contains(s, "frozen 1") }); err != nil {
			return err
		}
		if err := os.WriteFile(freeze, []byte("0"), 0); err != nil {
			return fmt.Errorf("thaw %s: %w", freeze, err)
		}
		_, err := waitFile(events, func(s string) bool { return strings.Contains(s, "frozen 0") })
		return err
	})
}

// probeFreezerV1: the v1 freezer controller freezes a task (freezer.state
// FROZEN) and thaws it.
func probeFreezerV1() error {
	root, err := cgroupMount(true, "freezer")
	if err != nil {
		return err
	}
	return withProbeCgroup(root, "tasks", func(dir string, pid int) error {
		state := filepath.Join(dir, "freezer.state")
		if err := os.WriteFile(state, []byte("FROZEN"), 0); err != nil {
			return fmt.Errorf("write %s: %w", state, err)
		}
		_, ferr := waitFile(state, func(s string) bool { return strings.TrimSpace(s) == "FROZEN" })
		// Thaw whatever happened: a frozen task cannot die.
		if err := os.WriteFile(state, []byte("THAWED"), 0); err != nil {
			return errors.Join(ferr, fmt.Errorf("thaw %s: %w", state, err))
		}
		if ferr != nil {
			return ferr
		}
		_, err := waitFile(state, func(s string) bool { return strings.TrimSpace(s) == "THAWED" })
		return err
	})
}
