package procfs

import (
	"encoding/binary"
	"fmt"
)

// AuxvEntry is one (type, value) pair of the ELF auxiliary vector.
type AuxvEntry struct {
	Type, Val uint64
}

// ParseAuxv decodes /proc/PID/auxv (pairs of native 64-bit words), stopping
// at AT_NULL. The AT_NULL entry is not returned.
func ParseAuxv(b []byte) ([]AuxvEntry, error) {
	var out []AuxvEntry
	for i := 0; ; i += 16 {
		if i+16 > len(b) {
			return nil, fmt.Errorf("procfs: auxv: no AT_NULL in %d bytes", len(b))
		}
		t := binary.NativeEndian.Uint64(b[i:])
		v := binary.NativeEndian.Uint64(b[i+8:])
		if t == 0 {
			return out, nil
		}
		out = append(out, AuxvEntry{t, v})
	}
}

// ReadAuxvRaw returns /proc/PID/auxv as the kernel prints it (including the
// terminating AT_NULL pair): the mm image stores these words verbatim.
func ReadAuxvRaw(pid int) ([]byte, error) { return readFile(pid, "auxv") }

// ReadAuxv reads and decodes /proc/PID/auxv.
func ReadAuxv(pid int) ([]AuxvEntry, error) {
	b, err := ReadAuxvRaw(pid)
	if err != nil {
		return nil, err
	}
	return ParseAuxv(b)
}
