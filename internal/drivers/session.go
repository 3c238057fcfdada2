package drivers

import (
	"godwit/internal/procfs"
)

// sessionDriver dumps the task's process group and session.
type sessionDriver struct{}

func (sessionDriver) Name() string    { return "session" }
func (sessionDriver) After() []string { return []string{PhaseThreads} }

// Collect reads the group and session from /proc/PID/stat.
func (sessionDriver) Collect(d *Dump) error {
	st, err := procfs.ReadStat(d.Pid)
	if err != nil {
		return err
	}
	d.Task.Pgid, d.Task.Sid = st.Pgrp, st.Session
	return nil
}

// The restorer sets every task's session and process group itself, as it
// makes the tree: a session must be made before the children that
// inherit it, and a group's leader must make it before others join, an
// order across tasks no per-task driver can follow (restorer.createTree,
// which also checks the result and refuses, naming it, a session or group
// whose leader is not in the dump). The driver only collects.
