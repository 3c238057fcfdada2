package procfs

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Tasks lists the thread IDs of process pid (the entries of /proc/PID/task),
// sorted ascending.
func Tasks(pid int) ([]int, error) {
	ents, err := os.ReadDir(Path(pid, "task"))
	if err != nil {
		return nil, fmt.Errorf("procfs: list threads of %d: %w", pid, err)
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil || tid <= 0 {
			continue
		}
		tids = append(tids, tid)
	}
	sort.Ints(tids)
	return tids, nil
}

// ParseComm returns the command name of a comm file (without the newline).
func ParseComm(b []byte) string { return strings.TrimSuffix(string(b), "\n") }

// ReadComm reads /proc/PID/comm.
func ReadComm(pid int) (string, error) {
	b, err := readFile(pid, "comm")
	if err != nil {
		return "", err
	}
	return ParseComm(b), nil
}

// ParseCmdline splits a NUL-separated cmdline into its arguments.
func ParseCmdline(b []byte) []string {
	s := strings.TrimSuffix(string(b), "\x00")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}

// ReadCmdline reads /proc/PID/cmdline. The environment is deliberately not
// offered: godwit never needs to read it from /proc (it lives in the dumped
// memory anyway).
func ReadCmdline(pid int) ([]string, error) {
	b, err := readFile(pid, "cmdline")
	if err != nil {
		return nil, err
	}
	return ParseCmdline(b), nil
}
