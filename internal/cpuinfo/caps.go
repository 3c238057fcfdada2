package cpuinfo

import (
	"fmt"
	"strings"
)

// Caps is a --cpu-cap mode set, with CRIU's bit values.
type Caps uint32

const (
	CapNone  Caps = 0
	CapFPU   Caps = 1 << 0 // compatible FPU/xsave state
	CapCPU   Caps = 1 << 1 // identical capability words
	CapIns   Caps = 1 << 2 // instruction-level features present
	CapImage Caps = 1 << 3 // write cpuinfo.img on dump, check it on restore
	CapAll        = CapFPU | CapCPU | CapIns

	// DefaultCaps is CRIU's mode when --cpu-cap is not given.
	DefaultCaps = CapFPU | CapIns
)

// ParseCaps applies a --cpu-cap argument to DefaultCaps, as CRIU does.
func ParseCaps(arg string) (Caps, error) { return DefaultCaps.Apply(arg) }

// Apply applies a --cpu-cap argument to c: names (fpu, cpu, ins, all,
// none) separated by commas add modes; a "^" prefix removes one; an empty
// argument (the bare option) means all, and writing the image. The words
// are matched by prefix, as CRIU does.
func (c Caps) Apply(arg string) (Caps, error) {
	if arg == "" {
		return c | CapAll | CapImage, nil
	}
	inverse := false
	s := arg
	for s != "" {
		switch {
		case s[0] == '^':
			inverse = !inverse
			s = s[1:]
			continue
		case s[0] == ',':
			inverse = false
			s = s[1:]
			continue
		}
		var bits Caps
		switch {
		case strings.HasPrefix(s, "fpu"):
			bits, s = CapFPU, s[3:]
		case strings.HasPrefix(s, "all"):
			bits, s = CapAll, s[3:]
		case strings.HasPrefix(s, "cpu"):
			bits, s = CapCPU, s[3:]
		case strings.HasPrefix(s, "ins"):
			bits, s = CapIns, s[3:]
		case strings.HasPrefix(s, "none"):
			s = s[4:]
			if inverse {
				c = CapAll
			} else {
				c = CapNone
			}
			continue
		default:
			return c, fmt.Errorf("cpuinfo: bad --cpu-cap value %q: unknown capability at %q (want fpu, cpu, ins, all, none)", arg, s)
		}
		if inverse {
			c &^= bits
		} else {
			c |= bits
		}
	}
	return c, nil
}

// String spells c as a --cpu-cap value.
func (c Caps) String() string {
	var parts []string
	if c&CapAll == CapAll {
		parts = append(parts, "all")
	} else {
		for _, n := range []struct {
			c Caps
			s string
		}{{CapFPU, "fpu"}, {CapCPU, "cpu"}, {CapIns, "ins"}} {
			if c&n.c != 0 {
				parts = append(parts, n.s)
			}
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}
