package kerndat

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// mapping is one line of /proc/PID/maps.
type mapping struct {
	Start, End uint64
	Perms      string
	Path       string
}

// parseMaps parses /proc/PID/maps text; it never panics on odd input.
func parseMaps(b []byte) ([]mapping, error) {
	var out []mapping
	for n, line := range bytes.Split(b, []byte{'\n'}) {
		if len(line) == 0 {
			continue
		}
		f := strings.Fields(string(line))
		if len(f) < 5 {
			return nil, fmt.Errorf("maps line %d: %d fields", n+1, len(f))
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			return nil, fmt.Errorf("maps line %d: bad range %q", n+1, f[0])
		}
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || e < s {
			return nil, fmt.Errorf("maps line %d: bad range %q", n+1, f[0])
		}
		m := mapping{Start: s, End: e, Perms: f[1]}
		if len(f) > 5 {
			m.Path = strings.Join(f[5:], " ")
		}
		out = append(out, m)
	}
	return out, nil
}

// statFields returns the fields of /proc/PID/stat after the command name,
// numbered from 3 as in proc(5): fields[0] is field 3 (state).
func statFields(b []byte) ([]string, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("stat: no ')' after the command name")
	}
	return strings.Fields(string(b[i+1:])), nil
}

// statField returns field n (1-based, as in proc(5)) as a number.
func statField(f []string, n int) (uint64, error) {
	if n < 3 || n-3 >= len(f) {
		return 0, fmt.Errorf("stat: no field %d (%d fields)", n, len(f)+2)
	}
	v, err := strconv.ParseUint(f[n-3], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat field %d: %w", n, err)
	}
	return v, nil
}

// fdinfoHas reports whether an fdinfo text has a line starting with key.
func fdinfoHas(b []byte, key string) bool {
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key) {
			return true
		}
	}
	return false
}

// fdinfoValue returns the rest of the first line that starts with key.
func fdinfoValue(b []byte, key string) (string, bool) {
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}
