package criuimg

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// bpfMaxInsns is the longest classic BPF program the kernel takes
// (BPF_MAXINSNS, include/uapi/linux/bpf_common.h).
const bpfMaxInsns = 4096

// soFilterWords is a classic BPF socket filter as sk_opts_entry's
// so_filter keeps it: each struct sock_filter's 8 bytes (code, jt, jf,
// k) read as one host-order word.
func soFilterWords(f []unix.SockFilter) []uint64 {
	if len(f) == 0 {
		return nil
	}
	w := make([]uint64, len(f))
	var b [8]byte
	for i, in := range f {
		binary.NativeEndian.PutUint16(b[0:], in.Code)
		b[2], b[3] = in.Jt, in.Jf
		binary.NativeEndian.PutUint32(b[4:], in.K)
		w[i] = binary.NativeEndian.Uint64(b[:])
	}
	return w
}

// sockFilterOfWords is soFilterWords undone. The kernel checks the
// program itself when the restore attaches it; here only its length.
func sockFilterOfWords(w []uint64) ([]unix.SockFilter, error) {
	if len(w) == 0 {
		return nil, nil
	}
	if len(w) > bpfMaxInsns {
		return nil, fmt.Errorf("a socket filter of %d instructions (the kernel takes at most %d)", len(w), bpfMaxInsns)
	}
	f := make([]unix.SockFilter, len(w))
	var b [8]byte
	for i, x := range w {
		binary.NativeEndian.PutUint64(b[:], x)
		f[i] = unix.SockFilter{Code: binary.NativeEndian.Uint16(b[0:]), Jt: b[2], Jf: b[3], K: binary.NativeEndian.Uint32(b[4:])}
	}
	return f, nil
}
