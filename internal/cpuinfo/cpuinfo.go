// Package cpuinfo describes this CPU the way CRIU's cpuinfo.img does, and
// checks an image's CPU against this one under --cpu-cap.
package cpuinfo

import (
	"errors"
	"fmt"
	"strings"

	"godwit/internal/images"

	cpb "github.com/checkpoint-restore/go-criu/v8/crit/images/cpuinfo"
	"google.golang.org/protobuf/proto"
)

// Info is one x86 CPU description.
type Info struct {
	Vendor       string // "GenuineIntel", "AuthenticAMD"
	Family       uint32
	Model        uint32
	Stepping     uint32
	ModelName    string
	Caps         [NCapInts]uint32 // capability words, CRIU layout
	XFeatures    uint64           // XSAVE user state components
	XsaveSize    uint32           // XSAVE area size for the enabled components
	XsaveSizeMax uint32           // XSAVE area size for all supported components
}

// Has reports whether capability bit b (word*32+bit) is set.
func (i *Info) Has(b int) bool {
	return b >= 0 && b < NCapInts*32 && i.Caps[b/32]&(1<<(b%32)) != 0
}

func (i *Info) set(b int, on bool) {
	if on {
		i.Caps[b/32] |= 1 << (b % 32)
	} else {
		i.Caps[b/32] &^= 1 << (b % 32)
	}
}

// ErrUnsupported is returned on CPUs other than x86-64 Intel/AMD.
var ErrUnsupported = errors.New("cpuinfo: only x86-64 Intel and AMD CPUs are supported")

// Host reads this CPU with CPUID, filling the words as CRIU (compel) does so
// that images of both tools compare equal on the same machine.
func Host() (*Info, error) {
	if !supported {
		return nil, ErrUnsupported
	}
	c := &Info{}
	maxLeaf, b, cx, d := cpuid(0, 0)
	c.Vendor = string(le32(b)) + string(le32(d)) + string(le32(cx))
	if c.Vendor != "GenuineIntel" && c.Vendor != "AuthenticAMD" {
		return nil, fmt.Errorf("cpuinfo: unsupported CPU vendor %q", c.Vendor)
	}
	c.Family = 4
	if maxLeaf >= 1 {
		a, _, cx, d := cpuid(1, 0)
		c.Family = (a >> 8) & 0xf
		c.Model = (a >> 4) & 0xf
		c.Stepping = a & 0xf
		if c.Family == 0xf {
			c.Family += (a >> 20) & 0xff
		}
		if c.Family >= 6 {
			c.Model += ((a >> 16) & 0xf) << 4
		}
		c.Caps[wordCPUID1EDX] = d
		c.Caps[wordCPUID1ECX] = cx
	}
	if maxLeaf >= 6 {
		c.Caps[wordCPUID6EAX], _, _, _ = cpuid(6, 0)
	}
	if maxLeaf >= 7 {
		_, b, cx, d := cpuid(7, 0)
		c.Caps[wordCPUID7_0EBX], c.Caps[wordCPUID7_0ECX], c.Caps[wordCPUID7_0EDX] = b, cx, d
	}
	if maxLeaf >= 0xd {
		c.Caps[wordCPUIDD_1EAX], _, _, _ = cpuid(0xd, 1)
	}
	if maxLeaf >= 0xf {
		_, _, _, c.Caps[wordCPUIDF_0EDX] = cpuid(0xf, 0)
		if c.Has(bit(16, 1)) {
			_, _, _, c.Caps[wordCPUIDF_1EDX] = cpuid(0xf, 1)
		}
	}
	ext, _, _, _ := cpuid(0x80000000, 0)
	if ext&0xffff0000 == 0x80000000 && ext >= 0x80000001 {
		_, _, cx, d := cpuid(0x80000001, 0)
		c.Caps[wordCPUID80000001ECX], c.Caps[wordCPUID80000001EDX] = cx, d
	}
	if ext >= 0x80000004 {
		var name []byte
		for l := uint32(0x80000002); l <= 0x80000004; l++ {
			a, b, cx, d := cpuid(l, 0)
			name = append(append(append(append(name, le32(a)...), le32(b)...), le32(cx)...), le32(d)...)
		}
		c.ModelName = strings.TrimLeft(strings.TrimRight(string(name), "\x00"), " ")
		if i := strings.IndexByte(c.ModelName, 0); i >= 0 {
			c.ModelName = c.ModelName[:i]
		}
	}
	if ext >= 0x80000007 {
		_, c.Caps[wordCPUID80000007EBX], _, _ = cpuid(0x80000007, 0)
	}
	if ext >= 0x8000000a {
		_, _, _, c.Caps[wordCPUID8000000AEDX] = cpuid(0x8000000a, 0)
	}
	if ext >= 0x80000008 {
		_, c.Caps[wordCPUID80000008EBX], _, _ = cpuid(0x80000008, 0)
	}
	// Linux-defined bits CRIU synthesizes the same way on x86-64.
	c.set(featCPUID, true)
	c.set(featNOPL, true)
	if maxLeaf < 0xd {
		c.set(featXSAVE, false)
	}
	switch c.Vendor {
	case "GenuineIntel":
		if c.Family == 15 {
			c.set(featREPGOOD, false)
			c.set(featERMS, false)
		} else if c.Family == 6 {
			c.set(featREPGOOD, true)
		}
	case "AuthenticAMD":
		c.set(bit(0, 31), false)
		if c.Family >= 0x10 {
			c.set(featREPGOOD, true)
		}
		if c.Family == 0xf {
			lvl, _, _, _ := cpuid(1, 0)
			if (lvl >= 0x0f48 && lvl < 0x0f50) || lvl >= 0x0f58 {
				c.set(featREPGOOD, true)
			}
		}
	}
	if !c.Has(featFPU) {
		return nil, errors.New("cpuinfo: no FPU")
	}
	if c.Has(featXSAVE) {
		a, b, cx, d := cpuid(0xd, 0)
		mask := uint64(a) | uint64(d)<<32
		for i, f := range xsaveFeatureBits {
			if !c.Has(f) {
				mask &^= 1 << i
			}
		}
		c.XFeatures = mask & xsaveUserMask
		c.XsaveSize, c.XsaveSizeMax = b, cx
	}
	return c, nil
}

func le32(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

// Entry converts i to the image message, as CRIU fills it.
func (i *Info) Entry() *cpb.CpuinfoEntry {
	vendor := cpb.CpuinfoX86Entry_AMD
	if i.Vendor == "GenuineIntel" {
		vendor = cpb.CpuinfoX86Entry_INTEL
	}
	e := &cpb.CpuinfoX86Entry{
		VendorId:      vendor.Enum(),
		CpuFamily:     proto.Uint32(i.Family),
		Model:         proto.Uint32(i.Model),
		Stepping:      proto.Uint32(i.Stepping),
		CapabilityVer: proto.Uint32(CapabilityVer),
		Capability:    append([]uint32(nil), i.Caps[:]...),
		XfeaturesMask: proto.Uint64(i.XFeatures),
		XsaveSize:     proto.Uint32(i.XsaveSize),
		XsaveSizeMax:  proto.Uint32(i.XsaveSizeMax),
	}
	if i.ModelName != "" {
		e.ModelId = proto.String(i.ModelName)
	}
	return &cpb.CpuinfoEntry{X86Entry: []*cpb.CpuinfoX86Entry{e}}
}

// FromEntry reads an image's CPU. Fields an older image lacks (capability
// words of version 1, xsave fields) are taken from host, as CRIU does, so
// they compare equal.
func FromEntry(ce *cpb.CpuinfoEntry, host *Info) (*Info, error) {
	if n := len(ce.GetX86Entry()); n != 1 {
		return nil, fmt.Errorf("cpuinfo: image has %d x86 entries, want 1", n)
	}
	e := ce.GetX86Entry()[0]
	i := &Info{Family: e.GetCpuFamily(), Model: e.GetModel(), Stepping: e.GetStepping(), ModelName: e.GetModelId()}
	switch e.GetVendorId() {
	case cpb.CpuinfoX86Entry_INTEL:
		i.Vendor = "GenuineIntel"
	case cpb.CpuinfoX86Entry_AMD:
		i.Vendor = "AuthenticAMD"
	default:
		return nil, fmt.Errorf("cpuinfo: image has unknown CPU vendor %d", e.GetVendorId())
	}
	caps := e.GetCapability()
	switch v := e.GetCapabilityVer(); v {
	case 1:
		if len(caps) != nCapIntsV1 {
			return nil, fmt.Errorf("cpuinfo: image has %d capability words, want %d", len(caps), nCapIntsV1)
		}
		copy(i.Caps[nCapIntsV1:], host.Caps[nCapIntsV1:])
	case 2:
		if len(caps) != NCapInts {
			return nil, fmt.Errorf("cpuinfo: image has %d capability words, want %d", len(caps), NCapInts)
		}
	default:
		return nil, fmt.Errorf("cpuinfo: image has unknown capability version %d", v)
	}
	copy(i.Caps[:], caps)
	i.XFeatures, i.XsaveSize, i.XsaveSizeMax = host.XFeatures, host.XsaveSize, host.XsaveSizeMax
	if e.XfeaturesMask != nil {
		i.XFeatures = e.GetXfeaturesMask()
	}
	if e.XsaveSize != nil {
		i.XsaveSize = e.GetXsaveSize()
	}
	if e.XsaveSizeMax != nil {
		i.XsaveSizeMax = e.GetXsaveSizeMax()
	}
	return i, nil
}

// Dump writes this CPU to cpuinfo.img in d.
func Dump(d *images.Dir) error {
	h, err := Host()
	if err != nil {
		return err
	}
	return images.Write(d, images.CpuinfoImg, h.Entry())
}

// Check compares cpuinfo.img in d with this CPU under mode.
func Check(d *images.Dir, mode Caps) error {
	if mode&CapAll == 0 {
		return nil
	}
	host, err := Host()
	if err != nil {
		return err
	}
	ce, err := images.ReadOne[*cpb.CpuinfoEntry](d, images.CpuinfoImg)
	if err != nil {
		return err
	}
	img, err := FromEntry(ce, host)
	if err != nil {
		return err
	}
	return Compare(img, host, mode)
}

// Compare checks that a task dumped on img can run on host under mode. The
// error names every missing feature.
func Compare(img, host *Info, mode Caps) error {
	var problems []string
	if mode&CapFPU != 0 {
		var miss []string
		for _, f := range []int{featFPU, featFXSR, featOSXSAVE, featXSAVES} {
			if img.Has(f) && !host.Has(f) {
				miss = append(miss, FeatureName(f))
			}
		}
		if len(miss) > 0 {
			problems = append(problems, "FPU features missing here: "+strings.Join(miss, ", "))
		}
		if m := img.XFeatures &^ host.XFeatures; m != 0 {
			problems = append(problems, "xsave state components missing here: "+xfeatureList(m))
		}
		if img.XsaveSize != host.XsaveSize {
			problems = append(problems, fmt.Sprintf("xsave size %d in image, %d here", img.XsaveSize, host.XsaveSize))
		}
		if img.XsaveSizeMax != host.XsaveSizeMax {
			problems = append(problems, fmt.Sprintf("xsave max size %d in image, %d here", img.XsaveSizeMax, host.XsaveSizeMax))
		}
	}
	if mode&CapIns != 0 {
		if miss := missing(img, host, &insMask); len(miss) > 0 {
			problems = append(problems, "instruction features missing here: "+strings.Join(miss, ", "))
		}
	}
	if mode&CapCPU != 0 && img.Caps != host.Caps {
		all := allOnes()
		miss, extra := missing(img, host, &all), missing(host, img, &all)
		s := "CPU capabilities differ"
		if len(miss) > 0 {
			s += "; missing here: " + strings.Join(miss, ", ")
		}
		if len(extra) > 0 {
			s += "; only here: " + strings.Join(extra, ", ")
		}
		problems = append(problems, s)
	}
	if len(problems) > 0 {
		return fmt.Errorf("cpuinfo: image CPU (%s) does not fit this CPU (--cpu-cap=%s): %s",
			img.describe(), mode, strings.Join(problems, "; "))
	}
	return nil
}

func (i *Info) describe() string {
	if i.ModelName != "" {
		return i.ModelName
	}
	return fmt.Sprintf("%s family %d model %d", i.Vendor, i.Family, i.Model)
}

func allOnes() (m [NCapInts]uint32) {
	for i := range m {
		m[i] = ^uint32(0)
	}
	return m
}

// missing lists the features of a (within mask) that b lacks.
func missing(a, b *Info, mask *[NCapInts]uint32) []string {
	var out []string
	for w := range NCapInts {
		m := a.Caps[w] & mask[w] &^ b.Caps[w]
		for i := range 32 {
			if m&(1<<i) != 0 {
				out = append(out, FeatureName(w*32+i))
			}
		}
	}
	return out
}

func xfeatureList(m uint64) string {
	var out []string
	for i := range 64 {
		if m&(1<<i) != 0 {
			out = append(out, XFeatureName(i))
		}
	}
	return strings.Join(out, ", ")
}
