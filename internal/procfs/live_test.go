package procfs

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const helperEnv = "GODWIT_PROCFS_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		helper()
		return
	}
	os.Exit(m.Run())
}

// helper is the child role: it opens a file at an offset, an eventfd and a
// POSIX timer, prints their numbers and waits for stdin to close.
func helper() {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		os.Exit(2)
	}
	if _, err := f.Seek(7, 0); err != nil {
		os.Exit(3)
	}
	efd, err := unix.Eventfd(5, unix.EFD_CLOEXEC)
	if err != nil {
		os.Exit(4)
	}
	var id int32
	// NULL sigevent: SIGEV_SIGNAL with SIGALRM, value = timer id.
	if _, _, e := unix.Syscall(unix.SYS_TIMER_CREATE, unix.CLOCK_MONOTONIC, 0, uintptrOfInt32(&id)); e != 0 {
		os.Exit(5)
	}
	fmt.Printf("%d %d %d\n", f.Fd(), efd, id)
	buf := make([]byte, 1)
	os.Stdin.Read(buf)
}

type helperChild struct {
	pid          int
	fileFD, evFD int
	timerID      int
}

func startHelper(t *testing.T) *helperChild {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	h := &helperChild{pid: cmd.Process.Pid}
	if _, err := fmt.Sscan(line, &h.fileFD, &h.evFD, &h.timerID); err != nil {
		t.Fatalf("helper line %q: %v", line, err)
	}
	return h
}

func TestLiveSelf(t *testing.T) {
	pid := os.Getpid()
	st, err := ReadStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pid != pid || st.Ppid != os.Getppid() || st.NumThreads < 1 {
		t.Errorf("stat %+v", st)
	}
	comm, err := ReadComm(pid)
	if err != nil || comm != st.Comm {
		t.Errorf("comm %q vs stat %q (%v)", comm, st.Comm, err)
	}
	status, err := ReadStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	if status.Pid != pid || status.Tgid != pid || status.Uid[0] != uint32(os.Getuid()) || status.Umask < 0 {
		t.Errorf("status %+v", status)
	}
	tids, err := Tasks(pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(tids) < 1 || tids[0] != pid {
		t.Errorf("tasks %v", tids)
	}
	maps, err := ReadMaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	smaps, err := ReadSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	has := func(name string) bool {
		for _, m := range maps {
			if m.Path == name {
				return true
			}
		}
		return false
	}
	if !has("[vdso]") || !has("[stack]") {
		t.Errorf("maps lack [vdso] or [stack]")
	}
	for _, e := range smaps {
		if len(e.VmFlags) == 0 {
			t.Errorf("smaps %#x: no VmFlags", e.Start)
		}
		if e.Fields["Size"] != e.Size() {
			t.Errorf("smaps %#x: Size %d, range %d", e.Start, e.Fields["Size"], e.Size())
		}
		if e.Path == "[stack]" && !e.HasFlag("gd") {
			t.Errorf("stack without gd (MAP_GROWSDOWN) flag: %v", e.VmFlags)
		}
	}
	auxv, err := ReadAuxv(pid)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range auxv {
		if a.Type == 6 /* AT_PAGESZ */ && a.Val == uint64(os.Getpagesize()) {
			found = true
		}
	}
	if !found {
		t.Errorf("auxv has no AT_PAGESZ: %v", auxv)
	}
	mi, err := ReadMountinfo(pid)
	if err != nil || len(mi) == 0 {
		t.Fatalf("mountinfo: %d, %v", len(mi), err)
	}
	root := false
	for _, m := range mi {
		root = root || m.MountPoint == "/"
	}
	if !root {
		t.Error("no / in mountinfo")
	}
	args, err := ReadCmdline(pid)
	if err != nil || len(args) != len(os.Args) || args[0] != os.Args[0] {
		t.Errorf("cmdline %q vs %q (%v)", args, os.Args, err)
	}
}

func TestLiveChild(t *testing.T) {
	h := startHelper(t)
	fi, err := ReadFDInfo(h.pid, h.fileFD)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/etc/passwd", &st); err != nil {
		t.Fatal(err)
	}
	if fi.Pos != 7 || fi.Flags&unix.O_ACCMODE != unix.O_RDONLY || fi.Flags&unix.O_CLOEXEC == 0 || fi.Ino != st.Ino || fi.MntID <= 0 {
		t.Errorf("file fdinfo %+v", fi)
	}
	if l, err := ReadFDLink(h.pid, h.fileFD); err != nil || l != "/etc/passwd" {
		t.Errorf("link %q %v", l, err)
	}
	ev, err := ReadFDInfo(h.pid, h.evFD)
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := ev.Get("eventfd-count"); !ok || strings.TrimLeft(c, "0") != "5" {
		t.Errorf("eventfd fdinfo %+v", ev)
	}
	if l, _ := ReadFDLink(h.pid, h.evFD); l != "anon_inode:[eventfd]" {
		t.Errorf("eventfd link %q", l)
	}
	fds, err := FDs(h.pid)
	if err != nil || len(fds) < 5 {
		t.Errorf("fds %v %v", fds, err)
	}
	timers, err := ReadTimers(h.pid)
	if err != nil {
		t.Fatal(err)
	}
	want := Timer{ID: h.timerID, Signal: int(unix.SIGALRM), SigValue: uint64(h.timerID), Notify: "signal",
		NotifyKind: "pid", NotifyPID: h.pid, ClockID: unix.CLOCK_MONOTONIC}
	if len(timers) != 1 || timers[0] != want {
		t.Errorf("timers %+v, want %+v", timers, want)
	}
	status, err := ReadStatus(h.pid)
	if err != nil {
		t.Fatal(err)
	}
	tids, err := Tasks(h.pid)
	if err != nil {
		t.Fatal(err)
	}
	if status.Pid != h.pid || status.PPid != os.Getpid() || status.Threads != len(tids) {
		t.Errorf("status %+v, %d tasks", status, len(tids))
	}
	for _, tid := range tids {
		ts, err := ReadTaskStatus(h.pid, tid)
		if err != nil || ts.Pid != tid || ts.Tgid != h.pid {
			t.Errorf("task %d status %+v %v", tid, ts, err)
		}
	}
	stat, err := ReadStat(h.pid)
	if err != nil {
		t.Fatal(err)
	}
	if stat.Ppid != os.Getpid() || stat.StartCode == 0 || stat.StartBrk == 0 || stat.ArgStart >= stat.ArgEnd {
		t.Errorf("stat mm fields (readable as root) %+v", stat)
	}
}

var sink byte

func TestPagemapSelf(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("PFNs need CAP_SYS_ADMIN")
	}
	zero, err := ZeroPagePFN()
	if err != nil {
		t.Fatal(err)
	}
	ps := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, 4*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	mem[0] = 1        // page 0 written
	sink = mem[ps+10] // page 1 read: the zero page
	shared, err := unix.Mmap(-1, 0, ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(shared)
	shared[0] = 1
	pm, err := OpenPagemap(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	e := make([]PagemapEntry, 4)
	if err := pm.Read(uint64(uintptrOf(mem)), e); err != nil {
		t.Fatal(err)
	}
	if !e[0].Present() || e[0].File() || !e[0].Exclusive() || e[0].PFN() == zero || e[0].PFN() == 0 {
		t.Errorf("written page %#x", uint64(e[0]))
	}
	if !e[1].Present() || e[1].PFN() != zero {
		t.Errorf("read page %#x, want zero page pfn %#x", uint64(e[1]), zero)
	}
	if e[2].Present() || e[2].Swapped() || e[3].Present() {
		t.Errorf("untouched pages %#x %#x", uint64(e[2]), uint64(e[3]))
	}
	s := make([]PagemapEntry, 1)
	if err := pm.Read(uint64(uintptrOf(shared)), s); err != nil {
		t.Fatal(err)
	}
	if !s[0].Present() || !s[0].File() {
		t.Errorf("shared anonymous page %#x lacks PM_FILE", uint64(s[0]))
	}
	if err := pm.Read(uint64(uintptrOf(mem))+1, e); err == nil {
		t.Error("unaligned read accepted")
	}
}

func TestHugeZeroPage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("PFNs need CAP_SYS_ADMIN")
	}
	b, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/use_zero_page")
	h, err := HugeZeroPagePFN()
	if strings.TrimSpace(string(b)) != "1" {
		if err == nil {
			t.Fatalf("huge zero page %#x found with use_zero_page %q", h, b)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	z, _ := ZeroPagePFN()
	t.Logf("zero page pfn %#x, huge zero page pfn %#x", z, h)
	if !IsZeroPFN(z) || !IsZeroPFN(h) || !IsZeroPFN(h+511) || IsZeroPFN(h+512) {
		t.Errorf("IsZeroPFN wrong around zero %#x / huge %#x", z, h)
	}
	if h%HugePMDPages != 0 {
		t.Errorf("huge zero page pfn %#x not 2 MiB aligned", h)
	}
}

func TestLinks(t *testing.T) {
	exe, err := ReadLink(os.Getpid(), "exe")
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	if exe != self {
		t.Errorf("exe %q, want %q", exe, self)
	}
	maps, err := ReadMaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range maps {
		if m.Path == self {
			l, err := ReadLink(os.Getpid(), MapFilesName(m.Start, m.End))
			if err != nil || l != self {
				t.Errorf("map_files of %#x: %q %v", m.Start, l, err)
			}
			return
		}
	}
	t.Error("own executable not mapped")
}

// madvise flags show in smaps VmFlags: the dumper relies on them.
func TestSmapsMadvise(t *testing.T) {
	ps := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, 3*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := unix.Madvise(mem[:ps], unix.MADV_DONTDUMP); err != nil {
		t.Fatal(err)
	}
	if err := unix.Madvise(mem[2*ps:], unix.MADV_WIPEONFORK); err != nil {
		t.Fatal(err)
	}
	es, err := ReadSmaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	base := uint64(uintptrOf(mem))
	want := map[uint64][2]string{base: {"dd", "wf"}, base + uint64(2*ps): {"wf", "dd"}}
	found := 0
	for _, e := range es {
		if w, ok := want[e.Start]; ok {
			found++
			if !e.HasFlag(w[0]) || e.HasFlag(w[1]) || e.Size() != uint64(ps) {
				t.Errorf("VMA %#x: size %d flags %v, want %s without %s", e.Start, e.Size(), e.VmFlags, w[0], w[1])
			}
		}
	}
	if found != 2 {
		t.Errorf("madvised VMAs not split out: found %d", found)
	}
}
