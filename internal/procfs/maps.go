package procfs

import (
	"fmt"
	"strconv"
	"strings"
)

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start, End uint64
	Perms      string // as printed, e.g. "r-xp"
	Read       bool
	Write      bool
	Exec       bool
	Shared     bool // 's' (MAP_SHARED) rather than 'p'
	Offset     uint64
	Major      uint32
	Minor      uint32
	Inode      uint64
	// Path is the file, a pseudo name like "[heap]", "[stack]", "[vdso]",
	// "[anon:NAME]", or "" for anonymous memory. The kernel's " (deleted)"
	// suffix is removed and reported in Deleted (a file really named so is
	// indistinguishable: use map_files to be sure).
	Path    string
	Deleted bool
}

// Size is the length of the mapping in bytes.
func (m *Mapping) Size() uint64 { return m.End - m.Start }

// IsAnon reports whether the mapping has no file behind it (inode 0 and no
// path other than a [pseudo] name). Shared anonymous memory has a
// "/dev/zero (deleted)" or "/SYSV…" path and an inode: it is not IsAnon.
func (m *Mapping) IsAnon() bool {
	return m.Inode == 0 && (m.Path == "" || strings.HasPrefix(m.Path, "["))
}

const deletedSuffix = " (deleted)"

// parseMapsLine parses one maps line (also the header line of an smaps
// entry).
func parseMapsLine(line string) (Mapping, error) {
	var m Mapping
	// Five space-separated fields, then optional padding and the path.
	rest := line
	var f [5]string
	for i := range f {
		rest = strings.TrimLeft(rest, " ")
		j := strings.IndexByte(rest, ' ')
		if j < 0 {
			if i != 4 {
				return m, fmt.Errorf("procfs: maps: short line %q", line)
			}
			j = len(rest)
		}
		f[i], rest = rest[:j], rest[j:]
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return m, fmt.Errorf("procfs: maps: bad range in %q", line)
	}
	var err error
	if m.Start, err = strconv.ParseUint(lo, 16, 64); err != nil {
		return m, fmt.Errorf("procfs: maps: start in %q: %w", line, err)
	}
	if m.End, err = strconv.ParseUint(hi, 16, 64); err != nil {
		return m, fmt.Errorf("procfs: maps: end in %q: %w", line, err)
	}
	if m.End < m.Start {
		return m, fmt.Errorf("procfs: maps: end before start in %q", line)
	}
	p := f[1]
	if len(p) != 4 {
		return m, fmt.Errorf("procfs: maps: bad perms in %q", line)
	}
	m.Perms = p
	m.Read = p[0] == 'r'
	m.Write = p[1] == 'w'
	m.Exec = p[2] == 'x'
	m.Shared = p[3] == 's'
	if m.Offset, err = strconv.ParseUint(f[2], 16, 64); err != nil {
		return m, fmt.Errorf("procfs: maps: offset in %q: %w", line, err)
	}
	maj, min, ok := strings.Cut(f[3], ":")
	if !ok {
		return m, fmt.Errorf("procfs: maps: bad device in %q", line)
	}
	ma, err1 := strconv.ParseUint(maj, 16, 32)
	mi, err2 := strconv.ParseUint(min, 16, 32)
	if err1 != nil || err2 != nil {
		return m, fmt.Errorf("procfs: maps: bad device in %q", line)
	}
	m.Major, m.Minor = uint32(ma), uint32(mi)
	if m.Inode, err = strconv.ParseUint(f[4], 10, 64); err != nil {
		return m, fmt.Errorf("procfs: maps: inode in %q: %w", line, err)
	}
	m.Path = strings.TrimLeft(rest, " ")
	if strings.HasSuffix(m.Path, deletedSuffix) {
		m.Path = strings.TrimSuffix(m.Path, deletedSuffix)
		m.Deleted = true
	}
	return m, nil
}

// ParseMaps parses the contents of /proc/PID/maps.
func ParseMaps(b []byte) ([]Mapping, error) {
	ls := lines(string(b))
	out := make([]Mapping, 0, len(ls))
	for _, l := range ls {
		m, err := parseMapsLine(l)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// ReadMaps reads /proc/PID/maps.
func ReadMaps(pid int) ([]Mapping, error) {
	b, err := readFile(pid, "maps")
	if err != nil {
		return nil, err
	}
	ms, err := ParseMaps(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return ms, nil
}

// SmapsEntry is one VMA of /proc/PID/smaps.
type SmapsEntry struct {
	Mapping
	// Fields holds the counters; values printed in kB are converted to
	// bytes ("Rss", "Private_Dirty", "Swap", "AnonHugePages", …), others
	// ("THPeligible", "ProtectionKey") are kept as printed.
	Fields map[string]uint64
	// VmFlags are the two-letter flags of the VmFlags line ("rd", "wr",
	// "gd" for MAP_GROWSDOWN, "dd" for MADV_DONTDUMP, "wf" for
	// MADV_WIPEONFORK, "hg"/"nh" for MADV_[NO]HUGEPAGE, "mg" mergeable, …).
	VmFlags []string
}

// HasFlag reports whether VmFlags contains f.
func (e *SmapsEntry) HasFlag(f string) bool {
	for _, x := range e.VmFlags {
		if x == f {
			return true
		}
	}
	return false
}

// isHeader tells an smaps VMA header line from a "Key: value" line: headers
// start with a hex range and contain no colon before the first space.
func isHeader(l string) bool {
	sp := strings.IndexByte(l, ' ')
	if sp < 0 {
		return false
	}
	first := l[:sp]
	return strings.IndexByte(first, ':') < 0 && strings.IndexByte(first, '-') > 0
}

// ParseSmaps parses the contents of /proc/PID/smaps.
func ParseSmaps(b []byte) ([]SmapsEntry, error) {
	var out []SmapsEntry
	for n, l := range lines(string(b)) {
		if isHeader(l) {
			m, err := parseMapsLine(l)
			if err != nil {
				return nil, fmt.Errorf("smaps line %d: %w", n+1, err)
			}
			out = append(out, SmapsEntry{Mapping: m, Fields: make(map[string]uint64)})
			continue
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("procfs: smaps line %d: field before first VMA", n+1)
		}
		e := &out[len(out)-1]
		key, val, ok := strings.Cut(l, ":")
		if !ok {
			return nil, fmt.Errorf("procfs: smaps line %d: no colon in %q", n+1, l)
		}
		if key == "VmFlags" {
			e.VmFlags = strings.Fields(val)
			continue
		}
		f := strings.Fields(val)
		if len(f) == 0 || len(f) > 2 {
			return nil, fmt.Errorf("procfs: smaps line %d: bad value %q", n+1, l)
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("procfs: smaps line %d: %w", n+1, err)
		}
		if len(f) == 2 {
			if f[1] != "kB" {
				return nil, fmt.Errorf("procfs: smaps line %d: unit %q", n+1, f[1])
			}
			v <<= 10
		}
		e.Fields[key] = v
	}
	return out, nil
}

// ReadSmaps reads /proc/PID/smaps.
func ReadSmaps(pid int) ([]SmapsEntry, error) {
	b, err := readFile(pid, "smaps")
	if err != nil {
		return nil, err
	}
	es, err := ParseSmaps(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return es, nil
}
