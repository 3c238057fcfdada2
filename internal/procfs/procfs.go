// Package procfs parses the files of /proc/PID that the dumper reads.
//
// Every parser works on bytes (ParseXxx) so that it can be fuzzed and fed
// captured files; a thin reader (ReadXxx) opens the live file. Parsers never
// panic on bad input: they return an error naming the line that failed.
package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Root is where procfs is mounted; tests may point it elsewhere.
var Root = "/proc"

// Path returns the path of file name of process (or thread) pid.
func Path(pid int, name string) string {
	return Root + "/" + strconv.Itoa(pid) + "/" + name
}

// TaskPath returns the path of file name of thread tid of process pid.
func TaskPath(pid, tid int, name string) string {
	return Root + "/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(tid) + "/" + name
}

func readFile(pid int, name string) ([]byte, error) {
	return readPath(Path(pid, name))
}

func readPath(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("procfs: %w", err)
	}
	return b, nil
}

// lines splits s into lines without the trailing newline; a final empty line
// is dropped.
func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func parseHex64(s string) (uint64, error) {
	return strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
}
