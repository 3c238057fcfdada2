package procfs

import (
	"fmt"
	"strconv"
	"strings"
)

// Mount is one line of /proc/PID/mountinfo (proc_pid_mountinfo(5)).
type Mount struct {
	ID, ParentID int
	Major, Minor uint32
	Root         string // root of the mount within its filesystem
	MountPoint   string
	Options      string   // per-mount options
	Optional     []string // "shared:N", "master:N", "propagate_from:N", "unbindable"
	FSType       string
	Source       string
	SuperOptions string
}

// unescapeOctal undoes the kernel's \ooo escaping of space, tab, newline and
// backslash in mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ParseMountinfo parses the contents of /proc/PID/mountinfo.
func ParseMountinfo(b []byte) ([]Mount, error) {
	var out []Mount
	for n, l := range lines(string(b)) {
		f := strings.Fields(l)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || len(f) < sep+3 {
			return nil, fmt.Errorf("procfs: mountinfo line %d: malformed %q", n+1, l)
		}
		var m Mount
		var err error
		if m.ID, err = strconv.Atoi(f[0]); err != nil {
			return nil, fmt.Errorf("procfs: mountinfo line %d: id: %w", n+1, err)
		}
		if m.ParentID, err = strconv.Atoi(f[1]); err != nil {
			return nil, fmt.Errorf("procfs: mountinfo line %d: parent: %w", n+1, err)
		}
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("procfs: mountinfo line %d: bad device %q", n+1, f[2])
		}
		m.Major, m.Minor = uint32(ma), uint32(mi)
		m.Root = unescapeOctal(f[3])
		m.MountPoint = unescapeOctal(f[4])
		m.Options = f[5]
		m.Optional = append([]string(nil), f[6:sep]...)
		m.FSType = f[sep+1]
		m.Source = unescapeOctal(f[sep+2])
		if len(f) > sep+3 {
			m.SuperOptions = f[sep+3]
		}
		out = append(out, m)
	}
	return out, nil
}

// ReadMountinfo reads /proc/PID/mountinfo.
func ReadMountinfo(pid int) ([]Mount, error) {
	b, err := readFile(pid, "mountinfo")
	if err != nil {
		return nil, err
	}
	ms, err := ParseMountinfo(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return ms, nil
}
