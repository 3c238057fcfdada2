package criuimg

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// A CRIU image's socket filter on a unix or netlink socket, which godwit
// does not restore yet, is refused rather than dropped.
func TestSockFilterRefusedOnUnixNetlink(t *testing.T) {
	for _, f := range []*model.File{
		{ID: 3, Kind: model.UnixSocket, Flags: unix.O_RDWR, MntID: -1,
			Unix: &model.UnixSocketState{Ino: 1, Type: unix.SOCK_DGRAM, State: 7}},
		{ID: 4, Kind: model.NetlinkSocket, Flags: unix.O_RDWR, MntID: -1,
			Netlink: &model.NetlinkSocketState{Ino: 2}},
	} {
		e, err := kindEntry(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := readKind(e); err != nil {
			t.Fatalf("file %d without a filter: %v", f.ID, err)
		}
		w := soFilterWords([]unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K}})
		if e.Usk != nil {
			e.Usk.Opts.SoFilter = w
		} else {
			e.Nlsk.Opts.SoFilter = w
		}
		if _, _, err := readKind(e); err == nil || !strings.Contains(err.Error(), "socket filter of 1 instructions") {
			t.Fatalf("file %d with a filter: %v", f.ID, err)
		}
	}
}

func FuzzSockFilterWords(f *testing.F) {
	f.Add(uint64(0x0000ffff00000006), 1)
	f.Add(uint64(0), bpfMaxInsns+1)
	f.Fuzz(func(t *testing.T, x uint64, n int) {
		n %= 2 * bpfMaxInsns
		if n < 0 {
			n = -n
		}
		w := make([]uint64, n)
		for i := range w {
			w[i] = x + uint64(i)
		}
		ins, err := sockFilterOfWords(w)
		if n > bpfMaxInsns {
			if err == nil {
				t.Fatalf("%d instructions accepted", n)
			}
			return
		}
		if err != nil || len(ins) != n {
			t.Fatalf("%d words: %d instructions, %v", n, len(ins), err)
		}
		back := soFilterWords(ins)
		for i := range w {
			if back[i] != w[i] {
				t.Fatalf("word %d: %#x read back as %#x", i, w[i], back[i])
			}
		}
	})
}
