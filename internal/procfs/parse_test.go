package procfs

import (
	"reflect"
	"testing"
)

const sampleStat = "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 4 0 0 20 0 3 0 12345 10000000 250 18446744073709551615 94000000000000 94000000100000 140730000000000 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 94000000200000 94000000300000 94000000400000 140730000001000 140730000002000 140730000002000 140730000003000 0\n"

func TestParseStat(t *testing.T) {
	st, err := ParseStat([]byte(sampleStat))
	if err != nil {
		t.Fatal(err)
	}
	if st.Pid != 4242 || st.Comm != "a) b) (c" || st.State != 'S' || st.Ppid != 1 || st.NumThreads != 3 {
		t.Errorf("head: %+v", st)
	}
	if st.StartCode != 94000000000000 || st.EndCode != 94000000100000 || st.StartStack != 140730000000000 {
		t.Errorf("code/stack: %+v", st)
	}
	if st.StartData != 94000000200000 || st.EndData != 94000000300000 || st.StartBrk != 94000000400000 ||
		st.ArgStart != 140730000001000 || st.ArgEnd != 140730000002000 || st.EnvStart != 140730000002000 ||
		st.EnvEnd != 140730000003000 || st.ExitCode != 0 || st.ExitSignal != 17 {
		t.Errorf("mm fields: %+v", st)
	}
	for _, bad := range []string{"", "12 (x", "x (y) S 1", "1 (y) S 1 2 3"} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) succeeded", bad)
		}
	}
}

const sampleMaps = `55d0c8a00000-55d0c8a02000 r--p 00000000 fe:00 1311 /usr/bin/my prog
55d0c8a02000-55d0c8a07000 r-xp 00002000 fe:00 1311 /usr/bin/my prog
7f1e00000000-7f1e00021000 rw-s 00000000 00:01 2048                       /dev/zero (deleted)
7f1e00100000-7f1e00200000 ---p 00000000 00:00 0 
7ffd8c1e0000-7ffd8c201000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`

func TestParseMaps(t *testing.T) {
	ms, err := ParseMaps([]byte(sampleMaps))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 6 {
		t.Fatalf("%d mappings", len(ms))
	}
	want0 := Mapping{Start: 0x55d0c8a00000, End: 0x55d0c8a02000, Perms: "r--p", Read: true,
		Major: 0xfe, Inode: 1311, Path: "/usr/bin/my prog"}
	if !reflect.DeepEqual(ms[0], want0) {
		t.Errorf("got %+v\nwant %+v", ms[0], want0)
	}
	if !ms[1].Exec || ms[1].Offset != 0x2000 {
		t.Errorf("text: %+v", ms[1])
	}
	if !ms[2].Shared || !ms[2].Deleted || ms[2].Path != "/dev/zero" || ms[2].IsAnon() {
		t.Errorf("shm: %+v", ms[2])
	}
	if ms[3].Read || ms[3].Write || ms[3].Path != "" || !ms[3].IsAnon() || ms[3].Size() != 0x100000 {
		t.Errorf("guard: %+v", ms[3])
	}
	if ms[4].Path != "[stack]" || !ms[4].IsAnon() {
		t.Errorf("stack: %+v", ms[4])
	}
	for _, bad := range []string{"zz-10 r--p 0 00:00 0\n", "10-5 r--p 0 00:00 0\n", "1-2 r--p 0 0000 0\n", "1-2 rp 0 00:00 0\n", "1-2\n"} {
		if _, err := ParseMaps([]byte(bad)); err == nil {
			t.Errorf("ParseMaps(%q) succeeded", bad)
		}
	}
}

const sampleSmaps = `7f1e00000000-7f1e00021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                   8 kB
Private_Dirty:         8 kB
Swap:                  4 kB
THPeligible:           1
ProtectionKey:         0
VmFlags: rd wr mr mw me ac wf dd 
7ffd8c1e0000-7ffd8c201000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
VmFlags: rd wr mr mw me gd ac 
`

func TestParseSmaps(t *testing.T) {
	es, err := ParseSmaps([]byte(sampleSmaps))
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 {
		t.Fatalf("%d entries", len(es))
	}
	if es[0].Fields["Size"] != 132<<10 || es[0].Fields["Private_Dirty"] != 8<<10 || es[0].Fields["THPeligible"] != 1 {
		t.Errorf("fields %v", es[0].Fields)
	}
	if !es[0].HasFlag("wf") || !es[0].HasFlag("dd") || es[0].HasFlag("gd") || !es[1].HasFlag("gd") {
		t.Errorf("flags %v %v", es[0].VmFlags, es[1].VmFlags)
	}
	if es[1].Path != "[stack]" {
		t.Errorf("path %q", es[1].Path)
	}
	for _, bad := range []string{"Size: 4 kB\n", sampleSmaps + "Rss: x kB\n", sampleSmaps + "Rss: 4 MB\n", sampleSmaps + "garbage\n"} {
		if _, err := ParseSmaps([]byte(bad)); err == nil {
			t.Errorf("ParseSmaps(%q) succeeded", bad)
		}
	}
}

const sampleStatus = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t77\nNgid:\t0\nPid:\t78\nPPid:\t1\nTracerPid:\t0\n" +
	"Uid:\t1000\t1001\t1002\t1003\nGid:\t5\t6\t7\t8\nFDSize:\t64\nGroups:\t4 24 27 \nNStgid:\t77\t1\nNSpid:\t78\t2\nNSpgid:\t77\t1\nNSsid:\t77\t1\n" +
	"Threads:\t2\nSigPnd:\t0000000000000200\nShdPnd:\t0000000000000800\nSigBlk:\t0000000000000a00\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180000000\n" +
	"CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000001\n" +
	"NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n"

func TestParseStatus(t *testing.T) {
	st, err := ParseStatus([]byte(sampleStatus))
	if err != nil {
		t.Fatal(err)
	}
	want := &Status{Name: "sleep", Umask: 0o22, State: 'S', Tgid: 77, Pid: 78, PPid: 1,
		Uid: [4]uint32{1000, 1001, 1002, 1003}, Gid: [4]uint32{5, 6, 7, 8}, FDSize: 64,
		Groups: []uint32{4, 24, 27}, NStgid: []int{77, 1}, NSpid: []int{78, 2}, NSpgid: []int{77, 1}, NSsid: []int{77, 1},
		Threads: 2, SigPnd: 0x200, ShdPnd: 0x800, SigBlk: 0xa00, SigIgn: 0x1000, SigCgt: 0x180000000,
		CapPrm: 0x1ffffffffff, CapEff: 0x1ffffffffff, CapBnd: 0x1ffffffffff, CapAmb: 1,
		NoNewPrivs: true, Seccomp: 2, SeccompFilters: 1}
	want.Raw = st.Raw
	if !reflect.DeepEqual(st, want) {
		t.Errorf("got  %+v\nwant %+v", st, want)
	}
	if st.Raw["State"] != "S (sleeping)" {
		t.Errorf("raw %q", st.Raw["State"])
	}
	for _, bad := range []string{"", "Pid:\tx\n", "Uid:\t1 2 3\nPid:\t1\nTgid:\t1\n", "garbage\n"} {
		if _, err := ParseStatus([]byte(bad)); err == nil {
			t.Errorf("ParseStatus(%q) succeeded", bad)
		}
	}
}

func TestParseFDInfo(t *testing.T) {
	fi, err := ParseFDInfo([]byte("pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\ntfd:        5 events:       19 data:                5  pos:0 ino:402 sdev:d\ntfd:        7 events:       19 data:                7  pos:0 ino:403 sdev:d\n"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Pos != 0 || fi.Flags != 0o2004002 || fi.MntID != 15 || fi.Ino != 1057 || len(fi.Extra) != 2 {
		t.Errorf("%+v", fi)
	}
	if v, _ := fi.Get("tfd"); v == "" || fi.Extra[1].Value[:1] != "7" {
		t.Errorf("tfd lines %+v", fi.Extra)
	}
	ev, err := ParseFDInfo([]byte("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t9\neventfd-count:        3\neventfd-id: 12\neventfd-semaphore: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := ev.Get("eventfd-count"); !ok || v != "3" {
		t.Errorf("eventfd %+v", ev)
	}
	// Keys may hold spaces ("inotify wd", "settime flags"); the value is
	// the rest of the line, inner colons included.
	ty, err := ParseFDInfo([]byte("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t9\n" +
		"inotify wd:1 ino:2 sdev:800002 mask:fff ignored_mask:0\n" +
		"clockid: 1\nsettime flags: 00\nit_interval: (3600, 0)\nlock:\t1: FLOCK  ADVISORY  WRITE 7 00:01:2 0 EOF\n"))
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"inotify wd":    "1 ino:2 sdev:800002 mask:fff ignored_mask:0",
		"settime flags": "00",
		"it_interval":   "(3600, 0)",
		"lock":          "1: FLOCK  ADVISORY  WRITE 7 00:01:2 0 EOF",
	} {
		if v, ok := ty.Get(k); !ok || v != want {
			t.Errorf("Get(%q) = %q, %v; want %q", k, v, ok, want)
		}
	}
	if _, ok := ty.Get("tfd"); ok {
		t.Error("Get of an absent key succeeded")
	}
	for _, bad := range []string{"", "pos:\t1\n", "pos:\tx\nflags:\t0\n", "pos:\t0\nflags:\t9\n", "pos 0\n"} {
		if _, err := ParseFDInfo([]byte(bad)); err == nil {
			t.Errorf("ParseFDInfo(%q) succeeded", bad)
		}
	}
}

func TestParseMountinfo(t *testing.T) {
	ms, err := ParseMountinfo([]byte("36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n22 27 0:21 / /proc rw,relatime - proc proc rw\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Mount{ID: 36, ParentID: 35, Major: 98, Root: "/mnt1", MountPoint: "/mnt two", Options: "rw,noatime",
		Optional: []string{"master:1", "shared:2"}, FSType: "ext3", Source: "/dev/root", SuperOptions: "rw,errors=continue"}
	if !reflect.DeepEqual(ms[0], want) {
		t.Errorf("got  %+v\nwant %+v", ms[0], want)
	}
	if len(ms[1].Optional) != 0 || ms[1].FSType != "proc" {
		t.Errorf("%+v", ms[1])
	}
	if _, err := ParseMountinfo([]byte("1 2 3:4 / / rw shared:1\n")); err == nil {
		t.Error("no separator accepted")
	}
}

func TestParseTimers(t *testing.T) {
	ts, err := ParseTimers([]byte("ID: 0\nsignal: 14/00007ffc12345678\nnotify: signal/pid.1234\nClockID: 1\nID: 3\nsignal: 34/0000000000000000\nnotify: thread/tid.1240\nClockID: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Timer{
		{ID: 0, Signal: 14, SigValue: 0x7ffc12345678, Notify: "signal", NotifyKind: "pid", NotifyPID: 1234, ClockID: 1},
		{ID: 3, Signal: 34, Notify: "thread", NotifyKind: "tid", NotifyPID: 1240, ClockID: 0},
	}
	if !reflect.DeepEqual(ts, want) {
		t.Errorf("got %+v", ts)
	}
	if _, err := ParseTimers([]byte("signal: 1/0\n")); err == nil {
		t.Error("line before ID accepted")
	}
}

func TestParseAuxv(t *testing.T) {
	b := make([]byte, 48)
	b[0], b[8], b[16], b[24] = 6, 0x10, 25, 0x20 // AT_PAGESZ, AT_RANDOM
	es, err := ParseAuxv(b)
	if err != nil || len(es) != 2 || es[0] != (AuxvEntry{6, 0x10}) || es[1] != (AuxvEntry{25, 0x20}) {
		t.Errorf("%v %v", es, err)
	}
	if _, err := ParseAuxv(b[:16]); err == nil {
		t.Error("auxv without AT_NULL accepted")
	}
}

func TestParseCmdline(t *testing.T) {
	if got := ParseCmdline([]byte("a\x00b c\x00\x00d\x00")); !reflect.DeepEqual(got, []string{"a", "b c", "", "d"}) {
		t.Errorf("%q", got)
	}
	if got := ParseCmdline(nil); got != nil {
		t.Errorf("%q", got)
	}
}

func TestPagemapEntry(t *testing.T) {
	e := PagemapEntry(PMPresent | PMExclusive | 0x1234)
	if !e.Present() || e.PFN() != 0x1234 || !e.Exclusive() || e.File() || e.Swapped() {
		t.Errorf("%#x", uint64(e))
	}
	s := PagemapEntry(PMSwap | 7<<5 | 3)
	if s.Present() || !s.Swapped() || s.SwapType() != 3 || s.SwapOffset() != 7 || s.PFN() != 0 {
		t.Errorf("swap %#x", uint64(s))
	}
	if _, err := ParsePagemap(make([]byte, 7)); err == nil {
		t.Error("odd pagemap accepted")
	}
}
