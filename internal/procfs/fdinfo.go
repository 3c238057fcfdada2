package procfs

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// KV is one "key: value" line of an fdinfo file, in file order (epoll and
// inotify fds repeat keys, one line per watched target).
type KV struct {
	Key, Value string
}

// FDInfo is /proc/PID/fdinfo/N.
type FDInfo struct {
	Pos   int64
	Flags uint64 // open flags (octal in the file), incl. O_CLOEXEC
	MntID int
	Ino   uint64
	// Extra holds the type-specific lines (eventfd-count, tfd, inotify,
	// signalfd's sigmask, timerfd's clockid/it_value, lock, …) in order.
	Extra []KV
}

// Get returns the value of the first Extra line with key k.
func (f *FDInfo) Get(k string) (string, bool) {
	for _, kv := range f.Extra {
		if kv.Key == k {
			return kv.Value, true
		}
	}
	return "", false
}

// ParseFDInfo parses the contents of /proc/PID/fdinfo/N.
func ParseFDInfo(b []byte) (*FDInfo, error) {
	fi := &FDInfo{MntID: -1}
	seen := 0
	for n, l := range lines(string(b)) {
		key, val, ok := strings.Cut(l, ":")
		if !ok {
			// inotify/fanotify/epoll lines look like "tfd: 5 events: …"
			// and all have a colon; anything else is malformed.
			return nil, fmt.Errorf("procfs: fdinfo line %d: no colon in %q", n+1, l)
		}
		val = strings.TrimSpace(val)
		var err error
		switch key {
		case "pos":
			fi.Pos, err = strconv.ParseInt(val, 10, 64)
			seen |= 1
		case "flags":
			fi.Flags, err = strconv.ParseUint(val, 8, 64)
			seen |= 2
		case "mnt_id":
			fi.MntID, err = strconv.Atoi(val)
		case "ino":
			fi.Ino, err = strconv.ParseUint(val, 10, 64)
		default:
			fi.Extra = append(fi.Extra, KV{key, val})
		}
		if err != nil {
			return nil, fmt.Errorf("procfs: fdinfo line %d (%s): %w", n+1, key, err)
		}
	}
	if seen != 3 {
		return nil, fmt.Errorf("procfs: fdinfo: pos or flags line missing")
	}
	return fi, nil
}

// ReadFDInfo reads /proc/PID/fdinfo/FD.
func ReadFDInfo(pid, fd int) (*FDInfo, error) {
	b, err := readFile(pid, "fdinfo/"+strconv.Itoa(fd))
	if err != nil {
		return nil, err
	}
	fi, err := ParseFDInfo(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d fd %d: %w", pid, fd, err)
	}
	return fi, nil
}

// FDs lists the open file descriptor numbers of pid, sorted.
func FDs(pid int) ([]int, error) {
	ents, err := os.ReadDir(Path(pid, "fd"))
	if err != nil {
		return nil, fmt.Errorf("procfs: list fds of %d: %w", pid, err)
	}
	fds := make([]int, 0, len(ents))
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil {
			fds = append(fds, fd)
		}
	}
	sort.Ints(fds)
	return fds, nil
}

// ReadFDLink returns the target of /proc/PID/fd/FD ("/path", "pipe:[123]",
// "socket:[45]", "anon_inode:[eventfd]", …).
func ReadFDLink(pid, fd int) (string, error) {
	s, err := os.Readlink(Path(pid, "fd/"+strconv.Itoa(fd)))
	if err != nil {
		return "", fmt.Errorf("procfs: %w", err)
	}
	return s, nil
}

// ReadLink reads a symbolic link of /proc/PID: "exe", "cwd", "root",
// "ns/mnt", "fd/3", "map_files/START-END", …
func ReadLink(pid int, name string) (string, error) {
	s, err := os.Readlink(Path(pid, name))
	if err != nil {
		return "", fmt.Errorf("procfs: %w", err)
	}
	return s, nil
}

// MapFilesName is the name of the map_files entry of the mapping
// start-end ("map_files/7f00-7f10"): opening it gives the mapped file even
// if it was deleted or renamed (needs CAP_SYS_ADMIN).
func MapFilesName(start, end uint64) string {
	return "map_files/" + strconv.FormatUint(start, 16) + "-" + strconv.FormatUint(end, 16)
}
