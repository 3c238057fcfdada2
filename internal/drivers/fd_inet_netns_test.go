package drivers

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The view of another network namespace reads that namespace's sysctls
// and sock_diag table, and makes its fresh sockets there, while godwit's
// own namespace differs.
func TestInetDumpOtherNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	holder := exec.Command("sleep", "60")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	nsPath := "/proc/" + strconv.Itoa(holder.Process.Pid) + "/ns/net"
	sh := "ip link set lo up && echo 77 > /proc/sys/net/ipv4/ip_default_ttl && echo 5000 > /proc/sys/net/ipv4/tcp_notsent_lowat"
	if out, err := exec.Command("nsenter", "--net="+nsPath, "sh", "-c", sh).CombinedOutput(); err != nil {
		t.Fatalf("nsenter: %v: %s", err, out)
	}
	if readDefaultTTL() == 77 {
		t.Fatal("godwit's own namespace has ip_default_ttl 77 too: the test cannot tell them apart")
	}
	fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	d := newInetDumpIn(&inetNetns{fd: fd, ino: st.Ino})
	defer d.release()
	if ttl, lw := d.defaultTTL(), d.notsentLowat(0); ttl != 77 || lw != 5000 {
		t.Fatalf("sysctls of the other namespace: ttl %d, notsent lowat %d; want 77, 5000", ttl, lw)
	}
	// Its ping_group_range is the default, which admits no group.
	if p, err := d.socketIn(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP); err == nil || !strings.Contains(err.Error(), "ping_group_range") {
		unix.Close(p)
		t.Fatalf("ping socket where ping_group_range admits no group: %v", err)
	}
	s, err := d.socketIn(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	nsfd, err := unix.IoctlRetInt(s, unix.SIOCGSKNS)
	if err != nil {
		t.Fatal(err)
	}
	var sst unix.Stat_t
	unix.Fstat(nsfd, &sst)
	unix.Close(nsfd)
	if sst.Ino != st.Ino {
		t.Fatalf("socket made in namespace %d, want %d", sst.Ino, st.Ino)
	}
	if err := unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 7781}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(s, 3); err != nil {
		t.Fatal(err)
	}
	var ls unix.Stat_t
	unix.Fstat(s, &ls)
	tab, err := d.table(unix.AF_INET, unix.IPPROTO_TCP)
	if err != nil {
		t.Fatal(err)
	}
	if e := tab.ByIno[uint32(ls.Ino)]; e == nil || e.State != 10 || e.Src.Port() != 7781 {
		t.Fatalf("sock_diag of the other namespace: listener %d: %+v", ls.Ino, e)
	}
	// godwit's main thread (whose namespace /proc/self/ns/net shows)
	// never joins: many rounds, each on a thread of its own.
	var self0, self1 unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &self0); err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if err := d.inNetns(func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Stat("/proc/self/ns/net", &self1); err != nil || self1.Ino != self0.Ino {
		t.Fatalf("the main thread moved to network namespace %d (was %d): %v", self1.Ino, self0.Ino, err)
	}
	d.release()
	if _, err := d.table(unix.AF_INET, unix.IPPROTO_UDP); err == nil {
		t.Fatal("a released view still reads its namespace")
	}
}
