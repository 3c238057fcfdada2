package cpuinfo

import "fmt"

// Capability words, in CRIU's cpuinfo_x86_entry order (compel's
// enum cpuid_leafs; an image ABI, like the kernel's X86_FEATURE words).
const (
	wordCPUID1EDX        = 0
	wordCPUID80000001EDX = 1
	wordCPUID80860001EDX = 2
	wordLinux1           = 3
	wordCPUID1ECX        = 4
	wordCPUIDC0000001EDX = 5
	wordCPUID80000001ECX = 6
	wordLinux2           = 7
	wordLinux3           = 8
	wordCPUID7_0EBX      = 9
	wordCPUIDD_1EAX      = 10
	wordCPUID7_0ECX      = 11
	wordCPUIDF_1EDX      = 12
	wordCPUID80000008EBX = 13
	wordCPUID6EAX        = 14
	wordCPUID8000000AEDX = 15
	wordCPUIDF_0EDX      = 16
	wordCPUID80000007EBX = 17
	wordCPUID7_0EDX      = 18

	// NCapInts is the number of capability words of capability_ver 2.
	NCapInts = 19
	// nCapIntsV1 is the number of words of capability_ver 1 images.
	nCapIntsV1 = 12
	// CapabilityVer is the capability layout version godwit writes.
	CapabilityVer = 2
)

func bit(word, b int) int { return word*32 + b }

// Feature bits used by the checks.
var (
	featFPU     = bit(0, 0)
	featFXSR    = bit(0, 24)
	featXMM     = bit(0, 25)
	featXSAVE   = bit(4, 26)
	featOSXSAVE = bit(4, 27)
	featAVX     = bit(4, 28)
	featMPX     = bit(9, 14)
	featAVX512F = bit(9, 16)
	featIntelPT = bit(9, 25)
	featPKU     = bit(11, 3)
	featHDC     = bit(14, 13)
	featXSAVES  = bit(10, 3)
	featNOPL    = bit(3, 20)
	featCPUID   = bit(3, 25)
	featREPGOOD = bit(3, 16)
	featERMS    = bit(9, 9)
)

// featureNames are the kernel's /proc/cpuinfo names for the bits CRIU's
// cpu.h defines (an empty kernel name keeps CRIU's).
var featureNames = map[int]string{
	bit(0, 0): "fpu", bit(0, 1): "vme", bit(0, 2): "de", bit(0, 3): "pse", bit(0, 4): "tsc", bit(0, 5): "msr",
	bit(0, 6): "pae", bit(0, 7): "mce", bit(0, 8): "cx8", bit(0, 9): "apic", bit(0, 11): "sep", bit(0, 12): "mtrr",
	bit(0, 13): "pge", bit(0, 14): "mca", bit(0, 15): "cmov", bit(0, 16): "pat", bit(0, 17): "pse36", bit(0, 18): "pn",
	bit(0, 19): "clflush", bit(0, 21): "dts", bit(0, 22): "acpi", bit(0, 23): "mmx", bit(0, 24): "fxsr", bit(0, 25): "sse",
	bit(0, 26): "sse2", bit(0, 27): "ss", bit(0, 28): "ht", bit(0, 29): "tm", bit(0, 30): "ia64", bit(0, 31): "pbe",

	bit(1, 11): "syscall", bit(1, 19): "mp", bit(1, 20): "nx", bit(1, 22): "mmxext", bit(1, 25): "fxsr_opt",
	bit(1, 26): "pdpe1gb", bit(1, 27): "rdtscp", bit(1, 29): "lm", bit(1, 30): "3dnowext", bit(1, 31): "3dnow",

	bit(2, 0): "recovery", bit(2, 1): "longrun", bit(2, 3): "lrti",

	bit(3, 0): "cxmmx", bit(3, 1): "k6_mtrr", bit(3, 2): "cyrix_arr", bit(3, 3): "centaur_mcr", bit(3, 4): "k8",
	bit(3, 5): "k7", bit(3, 6): "p3", bit(3, 7): "p4", bit(3, 8): "constant_tsc", bit(3, 9): "up", bit(3, 10): "art",
	bit(3, 11): "arch_perfmon", bit(3, 12): "pebs", bit(3, 13): "bts", bit(3, 14): "syscall32", bit(3, 15): "sysenter32",
	bit(3, 16): "rep_good", bit(3, 17): "mfence_rdtsc", bit(3, 18): "lfence_rdtsc", bit(3, 19): "acc_power",
	bit(3, 20): "nopl", bit(3, 21): "always", bit(3, 22): "xtopology", bit(3, 23): "tsc_reliable",
	bit(3, 24): "nonstop_tsc", bit(3, 25): "cpuid", bit(3, 26): "extd_apicid", bit(3, 27): "amd_dcm",
	bit(3, 28): "aperfmperf", bit(3, 30): "nonstop_tsc_s3", bit(3, 31): "tsc_known_freq",

	bit(4, 0): "pni", bit(4, 1): "pclmulqdq", bit(4, 2): "dtes64", bit(4, 3): "monitor", bit(4, 4): "ds_cpl",
	bit(4, 5): "vmx", bit(4, 6): "smx", bit(4, 7): "est", bit(4, 8): "tm2", bit(4, 9): "ssse3", bit(4, 10): "cid",
	bit(4, 11): "sdbg", bit(4, 12): "fma", bit(4, 13): "cx16", bit(4, 14): "xtpr", bit(4, 15): "pdcm", bit(4, 17): "pcid",
	bit(4, 18): "dca", bit(4, 19): "sse4_1", bit(4, 20): "sse4_2", bit(4, 21): "x2apic", bit(4, 22): "movbe",
	bit(4, 23): "popcnt", bit(4, 24): "tsc_deadline_timer", bit(4, 25): "aes", bit(4, 26): "xsave", bit(4, 27): "osxsave",
	bit(4, 28): "avx", bit(4, 29): "f16c", bit(4, 30): "rdrand", bit(4, 31): "hypervisor",

	bit(5, 2): "rng", bit(5, 3): "rng_en", bit(5, 6): "ace", bit(5, 7): "ace_en", bit(5, 8): "ace2", bit(5, 9): "ace2_en",
	bit(5, 10): "phe", bit(5, 11): "phe_en", bit(5, 12): "pmm", bit(5, 13): "pmm_en",

	bit(6, 0): "lahf_lm", bit(6, 1): "cmp_legacy", bit(6, 2): "svm", bit(6, 3): "extapic", bit(6, 4): "cr8_legacy",
	bit(6, 5): "abm", bit(6, 6): "sse4a", bit(6, 7): "misalignsse", bit(6, 8): "3dnowprefetch", bit(6, 9): "osvw",
	bit(6, 10): "ibs", bit(6, 11): "xop", bit(6, 12): "skinit", bit(6, 13): "wdt", bit(6, 15): "lwp", bit(6, 16): "fma4",
	bit(6, 17): "tce", bit(6, 19): "nodeid_msr", bit(6, 21): "tbm", bit(6, 22): "topoext", bit(6, 23): "perfctr_core",
	bit(6, 24): "perfctr_nb", bit(6, 26): "bpext", bit(6, 27): "ptsc", bit(6, 28): "perfctr_llc", bit(6, 29): "mwaitx",

	bit(9, 0): "fsgsbase", bit(9, 1): "tsc_adjust", bit(9, 3): "bmi1", bit(9, 4): "hle", bit(9, 5): "avx2",
	bit(9, 7): "smep", bit(9, 8): "bmi2", bit(9, 9): "erms", bit(9, 10): "invpcid", bit(9, 11): "rtm", bit(9, 12): "cqm",
	bit(9, 14): "mpx", bit(9, 15): "rdt_a", bit(9, 16): "avx512f", bit(9, 17): "avx512dq", bit(9, 18): "rdseed",
	bit(9, 19): "adx", bit(9, 20): "smap", bit(9, 21): "avx512ifma", bit(9, 23): "clflushopt", bit(9, 24): "clwb",
	bit(9, 25): "intel_pt", bit(9, 26): "avx512pf", bit(9, 27): "avx512er", bit(9, 28): "avx512cd", bit(9, 29): "sha_ni",
	bit(9, 30): "avx512bw", bit(9, 31): "avx512vl",

	bit(10, 0): "xsaveopt", bit(10, 1): "xsavec", bit(10, 2): "xgetbv1", bit(10, 3): "xsaves",

	bit(11, 0): "prefetchwt1", bit(11, 1): "avx512vbmi", bit(11, 2): "umip", bit(11, 3): "pku", bit(11, 4): "ospke",
	bit(11, 6): "avx512_vbmi2", bit(11, 8): "gfni", bit(11, 9): "vaes", bit(11, 10): "vpclmulqdq",
	bit(11, 11): "avx512_vnni", bit(11, 12): "avx512_bitalg", bit(11, 13): "tme", bit(11, 14): "avx512_vpopcntdq",
	bit(11, 16): "la57", bit(11, 22): "rdpid", bit(11, 25): "cldemote",

	bit(12, 0): "cqm_occup_llc", bit(12, 1): "cqm_mbm_total", bit(12, 2): "cqm_mbm_local",

	bit(13, 0): "clzero", bit(13, 1): "irperf", bit(13, 2): "xsaveerptr", bit(13, 12): "ibpb", bit(13, 14): "ibrs",
	bit(13, 15): "stibp",

	bit(14, 0): "dtherm", bit(14, 1): "ida", bit(14, 2): "arat", bit(14, 4): "pln", bit(14, 6): "pts", bit(14, 7): "hwp",
	bit(14, 8): "hwp_notify", bit(14, 9): "hwp_act_window", bit(14, 10): "hwp_epp", bit(14, 11): "hwp_pkg_req",
	bit(14, 13): "hdc",

	bit(15, 0): "npt", bit(15, 1): "lbrv", bit(15, 2): "svm_lock", bit(15, 3): "nrip_save", bit(15, 4): "tsc_scale",
	bit(15, 5): "vmcb_clean", bit(15, 6): "flushbyasid", bit(15, 7): "decodeassists", bit(15, 10): "pausefilter",
	bit(15, 12): "pfthreshold", bit(15, 13): "avic", bit(15, 15): "v_vmsave_vmload", bit(15, 16): "vgif",

	bit(16, 1): "cqm_llc",

	bit(17, 0): "overflow_recov", bit(17, 1): "succor", bit(17, 3): "smca",

	bit(18, 2): "avx512_4vnniw", bit(18, 3): "avx512_4fmaps", bit(18, 18): "pconfig", bit(18, 26): "spec_ctrl",
	bit(18, 27): "intel_stibp", bit(18, 29): "arch_capabilities", bit(18, 31): "spec_ctrl_ssbd",
}

// FeatureName names a capability bit (word*32+bit) as /proc/cpuinfo does,
// or "cpuid[word].bit" for bits without a name.
func FeatureName(b int) string {
	if n, ok := featureNames[b]; ok {
		return n
	}
	return fmt.Sprintf("cpuid[%d].%d", b/32, b%32)
}

// insFeatures are the bits that change which instructions a program may
// execute: CRIU's --cpu-cap=ins set (criu/arch/x86/cpu.c).
var insFeatures = []int{
	bit(0, 0), bit(0, 4), bit(0, 8), bit(0, 11), bit(0, 15), bit(0, 19), bit(0, 23), bit(0, 24), bit(0, 25), bit(0, 26),
	bit(1, 11), bit(1, 22), bit(1, 27), bit(1, 30), bit(1, 31),
	bit(3, 16), bit(3, 20),
	bit(4, 0), bit(4, 1), bit(4, 3), bit(4, 9), bit(4, 13), bit(4, 19), bit(4, 20), bit(4, 22), bit(4, 23), bit(4, 25),
	bit(4, 26), bit(4, 27), bit(4, 28), bit(4, 29), bit(4, 30),
	bit(6, 5), bit(6, 6), bit(6, 7), bit(6, 8), bit(6, 11), bit(6, 16), bit(6, 21),
	bit(9, 0), bit(9, 3), bit(9, 4), bit(9, 5), bit(9, 8), bit(9, 9), bit(9, 11), bit(9, 14), bit(9, 16), bit(9, 17),
	bit(9, 18), bit(9, 19), bit(9, 23), bit(9, 26), bit(9, 27), bit(9, 28), bit(9, 29), bit(9, 30), bit(9, 31),
	bit(10, 0), bit(10, 1), bit(10, 2),
	bit(11, 1), bit(11, 6), bit(11, 8), bit(11, 9), bit(11, 10), bit(11, 11), bit(11, 12), bit(11, 13), bit(11, 14),
	bit(11, 22),
	bit(13, 0),
	bit(18, 2), bit(18, 3),
}

// insMask is insFeatures as capability words.
var insMask = func() (m [NCapInts]uint32) {
	for _, b := range insFeatures {
		m[b/32] |= 1 << (b % 32)
	}
	return m
}()

// xfeatureNames name the XSAVE state components (bit i of xfeatures_mask).
var xfeatureNames = []string{"x87", "sse", "avx", "mpx_bndregs", "mpx_bndcsr", "avx512_opmask",
	"avx512_zmm_hi256", "avx512_hi16_zmm", "pt", "pkru"}

// XFeatureName names bit i of an xfeatures mask.
func XFeatureName(i int) string {
	if i < len(xfeatureNames) {
		return xfeatureNames[i]
	}
	return fmt.Sprintf("xfeature%d", i)
}

// xsaveUserMask is the xfeatures CRIU saves and checks (XCNTXT_MASK
// without supervisor states): x87, SSE, AVX, MPX, AVX-512, PKRU.
const xsaveUserMask = 0x2ff

// xsaveFeatureBits gives, for xfeature i, the CPUID bit that must be set
// for the state to count (compel's xsave_cpuid_features).
var xsaveFeatureBits = []int{featFPU, featXMM, featAVX, featMPX, featMPX, featAVX512F, featAVX512F, featAVX512F,
	featIntelPT, featPKU, featHDC}
