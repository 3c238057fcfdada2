package cpuinfo

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"godwit/internal/images"

	cpb "github.com/checkpoint-restore/go-criu/v8/crit/images/cpuinfo"
	"google.golang.org/protobuf/proto"
)

func hostOrSkip(t *testing.T) *Info {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("x86-64 only")
	}
	h, err := Host()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestHostMatchesProcCpuinfo(t *testing.T) {
	h := hostOrSkip(t)
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	var vendor, model string
	flags := map[string]bool{}
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "vendor_id":
			vendor = v
		case "model name":
			model = v
		case "flags":
			for _, f := range strings.Fields(v) {
				flags[f] = true
			}
		}
		if k == "power management" { // end of the first CPU
			break
		}
	}
	if h.Vendor != vendor || h.ModelName != model {
		t.Errorf("vendor/model %q/%q, /proc/cpuinfo says %q/%q", h.Vendor, h.ModelName, vendor, model)
	}
	// Bits read straight from CPUID must agree with the kernel where the
	// kernel does not hide or synthesize them.
	for _, name := range []string{"fpu", "sse", "sse2", "pni", "ssse3", "cx16", "sse4_1", "sse4_2", "popcnt", "aes",
		"xsave", "avx", "avx2", "bmi1", "bmi2", "avx512f", "avx512bw", "sha_ni", "lm", "nx", "syscall", "fxsr"} {
		b := -1
		for bit, n := range featureNames {
			if n == name {
				b = bit
			}
		}
		if b < 0 {
			t.Fatalf("no bit named %s", name)
		}
		if h.Has(b) != flags[name] {
			t.Errorf("%s: CPUID says %v, /proc/cpuinfo says %v", name, h.Has(b), flags[name])
		}
	}
	if h.Has(featXSAVE) && (h.XsaveSize < 576 || h.XsaveSizeMax < h.XsaveSize || h.XFeatures&3 != 3) {
		t.Errorf("xsave: mask %#x size %d max %d", h.XFeatures, h.XsaveSize, h.XsaveSizeMax)
	}
	t.Logf("%s family %d model %d stepping %d, xfeatures %#x, xsave %d/%d", h.ModelName, h.Family, h.Model, h.Stepping,
		h.XFeatures, h.XsaveSize, h.XsaveSizeMax)
}

func TestDumpCheck(t *testing.T) {
	hostOrSkip(t)
	d, err := images.Open(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := Dump(d); err != nil {
		t.Fatal(err)
	}
	for _, m := range []Caps{CapAll, CapFPU, CapCPU, CapIns, CapNone, DefaultCaps} {
		if err := Check(d, m); err != nil {
			t.Errorf("check %s: %v", m, err)
		}
	}

	// Doctored images.
	orig, err := images.ReadOne[*cpb.CpuinfoEntry](d, images.CpuinfoImg)
	if err != nil {
		t.Fatal(err)
	}
	doctor := func(f func(e *cpb.CpuinfoX86Entry)) {
		t.Helper()
		e := proto.Clone(orig).(*cpb.CpuinfoEntry)
		f(e.X86Entry[0])
		if err := images.Write(d, images.CpuinfoImg, e); err != nil {
			t.Fatal(err)
		}
	}
	h, _ := Host()
	// A missing instruction feature: pick one this CPU lacks.
	var absent int = -1
	for _, b := range insFeatures {
		if !h.Has(b) {
			absent = b
			break
		}
	}
	if absent < 0 {
		t.Fatal("this CPU has every instruction feature CRIU knows")
	}
	doctor(func(e *cpb.CpuinfoX86Entry) { e.Capability[absent/32] |= 1 << (absent % 32) })
	name := FeatureName(absent)
	for _, m := range []Caps{CapIns, CapCPU, CapAll} {
		err := Check(d, m)
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("check %s with extra %s: %v", m, name, err)
		}
	}
	if err := Check(d, CapFPU); err != nil {
		t.Errorf("fpu check must ignore %s: %v", name, err)
	}
	if err := Check(d, CapNone); err != nil {
		t.Errorf("none: %v", err)
	}
	t.Logf("extra %s: %v", name, Check(d, CapIns))

	// A bigger xsave area than here.
	doctor(func(e *cpb.CpuinfoX86Entry) { *e.XsaveSize += 64 })
	if err := Check(d, CapFPU); err == nil || !strings.Contains(err.Error(), "xsave size") {
		t.Errorf("bigger xsave: %v", err)
	}
	if err := Check(d, CapIns); err != nil {
		t.Errorf("ins check must ignore xsave size: %v", err)
	}
	// An xsave component this CPU does not have (AVX-512 opmask if absent).
	xabsent := -1
	for i := range xfeatureNames {
		if h.XFeatures&(1<<i) == 0 && uint64(1<<i)&xsaveUserMask != 0 {
			xabsent = i
			break
		}
	}
	if xabsent >= 0 {
		doctor(func(e *cpb.CpuinfoX86Entry) { *e.XfeaturesMask |= 1 << xabsent })
		if err := Check(d, CapFPU); err == nil || !strings.Contains(err.Error(), XFeatureName(xabsent)) {
			t.Errorf("extra xfeature %s: %v", XFeatureName(xabsent), err)
		}
	}
	// An FPU feature the host lacks (osxsave, when the host has none).
	doctor(func(e *cpb.CpuinfoX86Entry) { e.Capability[10] |= 1 << 3 })
	if !h.Has(featXSAVES) {
		if err := Check(d, CapFPU); err == nil || !strings.Contains(err.Error(), "xsaves") {
			t.Errorf("xsaves: %v", err)
		}
	}
	// Corrupt: wrong word count, unknown vendor, no x86 entry.
	doctor(func(e *cpb.CpuinfoX86Entry) { e.Capability = e.Capability[:5] })
	if err := Check(d, CapAll); err == nil || !strings.Contains(err.Error(), "5 capability words") {
		t.Errorf("short caps: %v", err)
	}
	doctor(func(e *cpb.CpuinfoX86Entry) { e.VendorId = cpb.CpuinfoX86Entry_UNKNOWN.Enum() })
	if err := Check(d, CapAll); err == nil || !strings.Contains(err.Error(), "vendor") {
		t.Errorf("vendor: %v", err)
	}
	// Version 1 images carry 12 words; the rest come from this CPU.
	doctor(func(e *cpb.CpuinfoX86Entry) {
		e.CapabilityVer = proto.Uint32(1)
		e.Capability = e.Capability[:12]
		e.XfeaturesMask, e.XsaveSize, e.XsaveSizeMax = nil, nil, nil
	})
	if err := Check(d, CapAll); err != nil {
		t.Errorf("v1 image: %v", err)
	}
	if err := images.Write(d, images.CpuinfoImg, &cpb.CpuinfoEntry{}); err != nil {
		t.Fatal(err)
	}
	if err := Check(d, CapAll); err == nil {
		t.Error("empty cpuinfo accepted")
	}
	os.Remove(filepath.Join(d.Path(), images.CpuinfoImg))
	if err := Check(d, CapAll); err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("missing image: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		if n := u.Unwrap(); n != nil {
			err = n
		} else {
			return err
		}
	}
}

func TestCritShowsCpuinfo(t *testing.T) {
	h := hostOrSkip(t)
	crit, err := exec.LookPath("crit")
	if err != nil {
		// As root crit must exist (scripts/setup installs it).
		if os.Geteuid() == 0 {
			t.Fatalf("crit not found (scripts/setup installs Debian's criu package): %v", err)
		}
		t.Skipf("not root and crit not installed (scripts/setup, as root, installs it): %v", err)
	}
	d, err := images.Open(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := Dump(d); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(crit, "decode", "-i", filepath.Join(d.Path(), images.CpuinfoImg)).CombinedOutput()
	if err != nil {
		t.Fatalf("crit: %v\n%s", err, out)
	}
	var img struct {
		Magic   string
		Entries []struct {
			X86Entry []map[string]any `json:"x86_entry"`
		}
	}
	if err := json.Unmarshal(out, &img); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if img.Magic != "CPUINFO" || len(img.Entries) != 1 || len(img.Entries[0].X86Entry) != 1 {
		t.Fatalf("crit: %s", out)
	}
	e := img.Entries[0].X86Entry[0]
	if e["model_id"] != h.ModelName || int(e["cpu_family"].(float64)) != int(h.Family) ||
		len(e["capability"].([]any)) != NCapInts || int(e["xsave_size"].(float64)) != int(h.XsaveSize) {
		t.Fatalf("crit decoded %v", e)
	}
}

func TestParseCaps(t *testing.T) {
	for arg, want := range map[string]Caps{
		"":          DefaultCaps | CapAll | CapImage,
		"fpu":       DefaultCaps,
		"cpu":       DefaultCaps | CapCPU,
		"fpu,ins":   CapFPU | CapIns,
		"none":      CapNone,
		"none,cpu":  CapCPU,
		"^fpu":      CapIns,
		"^ins,cpu":  CapFPU | CapCPU,
		"^none":     CapAll,
		"all,^cpu":  CapFPU | CapIns,
		"^^ins":     DefaultCaps,
		"none,^fpu": CapNone,
	} {
		got, err := ParseCaps(arg)
		if err != nil || got != want {
			t.Errorf("ParseCaps(%q) = %v (%d), %v; want %d", arg, got, got, err, want)
		}
	}
	for _, bad := range []string{"fpx", "cpu;ins", "all,bogus", " "} {
		if _, err := ParseCaps(bad); err == nil {
			t.Errorf("ParseCaps(%q) accepted", bad)
		}
	}
	if s := (CapFPU | CapIns).String(); s != "fpu,ins" {
		t.Errorf("String %q", s)
	}
	if s := CapAll.String(); s != "all" {
		t.Errorf("String %q", s)
	}
}
