package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Stat is /proc/PID/stat (see proc_pid_stat(5)). Field names follow the man
// page. The mm boundaries (StartCode…EnvEnd) read as 0 unless the reader may
// ptrace the task.
type Stat struct {
	Pid                 int
	Comm                string
	State               byte
	Ppid, Pgrp, Session int
	TtyNr, Tpgid        int
	Flags               uint64
	Minflt, Majflt      uint64
	Utime, Stime        uint64
	Priority, Nice      int64
	NumThreads          int64
	Starttime           uint64
	Vsize               uint64
	Rss                 int64
	StartCode, EndCode  uint64
	StartStack          uint64
	ExitSignal          int
	Processor           int
	RtPriority, Policy  uint64
	StartData, EndData  uint64
	StartBrk            uint64
	ArgStart, ArgEnd    uint64
	EnvStart, EnvEnd    uint64
	ExitCode            int64
}

// statFields is the number of fields after "(comm)" we require (up to
// exit_code, field 52 counting from 1).
const statFields = 50

// ParseStat parses the contents of /proc/PID/stat.
func ParseStat(b []byte) (*Stat, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return nil, errors.New("procfs: stat: no (comm)")
	}
	var st Stat
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:open])))
	if err != nil {
		return nil, fmt.Errorf("procfs: stat: pid: %w", err)
	}
	st.Pid = pid
	st.Comm = string(b[open+1 : closing])
	f := strings.Fields(string(b[closing+1:]))
	if len(f) < statFields {
		return nil, fmt.Errorf("procfs: stat: %d fields after comm, want %d", len(f), statFields)
	}
	if len(f[0]) != 1 {
		return nil, fmt.Errorf("procfs: stat: bad state %q", f[0])
	}
	st.State = f[0][0]
	var perr error
	// f[i] is field number i+3 of proc_pid_stat(5).
	u := func(i int) uint64 {
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil && perr == nil {
			perr = fmt.Errorf("procfs: stat: field %d %q: %w", i+3, f[i], err)
		}
		return v
	}
	s := func(i int) int64 {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil && perr == nil {
			perr = fmt.Errorf("procfs: stat: field %d %q: %w", i+3, f[i], err)
		}
		return v
	}
	st.Ppid = int(s(1))
	st.Pgrp = int(s(2))
	st.Session = int(s(3))
	st.TtyNr = int(s(4))
	st.Tpgid = int(s(5))
	st.Flags = u(6)
	st.Minflt = u(7)
	st.Majflt = u(9)
	st.Utime = u(11)
	st.Stime = u(12)
	st.Priority = s(15)
	st.Nice = s(16)
	st.NumThreads = s(17)
	st.Starttime = u(19)
	st.Vsize = u(20)
	st.Rss = s(21)
	st.StartCode = u(23)
	st.EndCode = u(24)
	st.StartStack = u(25)
	st.ExitSignal = int(s(35))
	st.Processor = int(s(36))
	st.RtPriority = u(37)
	st.Policy = u(38)
	st.StartData = u(42)
	st.EndData = u(43)
	st.StartBrk = u(44)
	st.ArgStart = u(45)
	st.ArgEnd = u(46)
	st.EnvStart = u(47)
	st.EnvEnd = u(48)
	st.ExitCode = s(49)
	if perr != nil {
		return nil, perr
	}
	return &st, nil
}

// ReadStat reads /proc/PID/stat.
func ReadStat(pid int) (*Stat, error) {
	b, err := readFile(pid, "stat")
	if err != nil {
		return nil, err
	}
	st, err := ParseStat(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return st, nil
}
