package procfs

import (
	"fmt"
	"strconv"
	"strings"
)

// Status is /proc/PID/status: the identity, credential and signal lines the
// dumper needs, plus every line verbatim in Raw.
type Status struct {
	Name      string
	Umask     int // -1 if the line is absent
	State     byte
	Tgid      int
	Ngid      int
	Pid       int
	PPid      int
	TracerPid int
	Uid       [4]uint32 // real, effective, saved, filesystem
	Gid       [4]uint32
	FDSize    int
	Groups    []uint32
	NStgid    []int // innermost namespace last
	NSpid     []int
	NSpgid    []int
	NSsid     []int
	Kthread   bool
	Threads   int
	// Signal sets as bit masks: bit n-1 is signal n.
	SigPnd, ShdPnd, SigBlk, SigIgn, SigCgt uint64
	CapInh, CapPrm, CapEff, CapBnd, CapAmb uint64
	NoNewPrivs                             bool
	Seccomp                                int // 0 off, 1 strict, 2 filter
	SeccompFilters                         int
	// Raw holds every "Key:\tvalue" line, value trimmed.
	Raw map[string]string
}

// ParseStatus parses the contents of /proc/PID/status.
func ParseStatus(b []byte) (*Status, error) {
	st := &Status{Umask: -1, Raw: make(map[string]string)}
	for n, line := range lines(string(b)) {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("procfs: status line %d: no colon in %q", n+1, line)
		}
		val = strings.TrimSpace(val)
		st.Raw[key] = val
		var err error
		switch key {
		case "Name":
			st.Name = val
		case "Umask":
			var u uint64
			u, err = strconv.ParseUint(val, 8, 32)
			st.Umask = int(u)
		case "State":
			if val == "" {
				err = fmt.Errorf("empty")
			} else {
				st.State = val[0]
			}
		case "Tgid":
			st.Tgid, err = strconv.Atoi(val)
		case "Ngid":
			st.Ngid, err = strconv.Atoi(val)
		case "Pid":
			st.Pid, err = strconv.Atoi(val)
		case "PPid":
			st.PPid, err = strconv.Atoi(val)
		case "TracerPid":
			st.TracerPid, err = strconv.Atoi(val)
		case "Uid":
			err = parseIDs4(val, &st.Uid)
		case "Gid":
			err = parseIDs4(val, &st.Gid)
		case "FDSize":
			st.FDSize, err = strconv.Atoi(val)
		case "Groups":
			st.Groups, err = parseU32List(val)
		case "NStgid":
			st.NStgid, err = parseIntList(val)
		case "NSpid":
			st.NSpid, err = parseIntList(val)
		case "NSpgid":
			st.NSpgid, err = parseIntList(val)
		case "NSsid":
			st.NSsid, err = parseIntList(val)
		case "Kthread":
			st.Kthread = val == "1"
		case "Threads":
			st.Threads, err = strconv.Atoi(val)
		case "SigPnd":
			st.SigPnd, err = parseHex64(val)
		case "ShdPnd":
			st.ShdPnd, err = parseHex64(val)
		case "SigBlk":
			st.SigBlk, err = parseHex64(val)
		case "SigIgn":
			st.SigIgn, err = parseHex64(val)
		case "SigCgt":
			st.SigCgt, err = parseHex64(val)
		case "CapInh":
			st.CapInh, err = parseHex64(val)
		case "CapPrm":
			st.CapPrm, err = parseHex64(val)
		case "CapEff":
			st.CapEff, err = parseHex64(val)
		case "CapBnd":
			st.CapBnd, err = parseHex64(val)
		case "CapAmb":
			st.CapAmb, err = parseHex64(val)
		case "NoNewPrivs":
			st.NoNewPrivs = val == "1"
		case "Seccomp":
			st.Seccomp, err = strconv.Atoi(val)
		case "Seccomp_filters":
			st.SeccompFilters, err = strconv.Atoi(val)
		}
		if err != nil {
			return nil, fmt.Errorf("procfs: status line %d (%s): %w", n+1, key, err)
		}
	}
	if st.Pid == 0 || st.Tgid == 0 {
		return nil, fmt.Errorf("procfs: status: no Pid/Tgid line")
	}
	return st, nil
}

// ReadStatus reads /proc/PID/status.
func ReadStatus(pid int) (*Status, error) {
	b, err := readFile(pid, "status")
	if err != nil {
		return nil, err
	}
	st, err := ParseStatus(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return st, nil
}

// ReadTaskStatus reads /proc/PID/task/TID/status (per-thread signal masks).
func ReadTaskStatus(pid, tid int) (*Status, error) {
	b, err := readPath(TaskPath(pid, tid, "status"))
	if err != nil {
		return nil, err
	}
	st, err := ParseStatus(b)
	if err != nil {
		return nil, fmt.Errorf("tid %d: %w", tid, err)
	}
	return st, nil
}

func parseIDs4(s string, out *[4]uint32) error {
	f := strings.Fields(s)
	if len(f) != 4 {
		return fmt.Errorf("want 4 ids, got %d", len(f))
	}
	for i, x := range f {
		v, err := strconv.ParseUint(x, 10, 32)
		if err != nil {
			return err
		}
		out[i] = uint32(v)
	}
	return nil
}

func parseU32List(s string) ([]uint32, error) {
	f := strings.Fields(s)
	out := make([]uint32, 0, len(f))
	for _, x := range f {
		v, err := strconv.ParseUint(x, 10, 32)
		if err != nil {
			return nil, err
		}
		out = append(out, uint32(v))
	}
	return out, nil
}

func parseIntList(s string) ([]int, error) {
	f := strings.Fields(s)
	out := make([]int, 0, len(f))
	for _, x := range f {
		v, err := strconv.Atoi(x)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
