package migrate

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model/criuimg"
	pb "godwit/migrate/internal/proto"
	"godwit/restorer"
)

// checkRestore answers the source's Check (post-copy and hybrid, before
// the commit): what the restore of the final images would refuse on this
// host that can be told now. The TCP connections and listeners are bound
// to their addresses (the restore's refusal: the address is not local
// here; the pre-restore scripts should have moved it) and the tree's
// network namespace must be one the restore can take.
func (in *inbound) checkRestore() (*pb.Checked, error) {
	if in.ps != nil || len(in.files) > 0 || len(in.rounds) == 0 || in.rounds[len(in.rounds)-1] != "final" {
		return nil, errors.New("check before every image arrived")
	}
	dir := filepath.Join(in.dir, "final")
	if err := restorer.CheckNetns(dir); err != nil {
		return &pb.Checked{Refusal: err.Error()}, nil
	}
	d, err := images.Open(dir, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	tree, err := criuimg.Read(d)
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	seen := map[netip.Addr]bool{}
	for _, id := range tree.FileIDs() {
		st := tree.Files[id].Inet
		if st == nil || st.Type != unix.SOCK_STREAM || (st.Stream == nil && st.State != tcpListen) || st.Inet.Freebind {
			continue
		}
		a := st.Src.Addr().Unmap()
		if a.IsUnspecified() || seen[a] {
			continue
		}
		seen[a] = true
		if err := bindable(a); err != nil {
			return &pb.Checked{Refusal: fmt.Sprintf("address %s is not local here: %v", a, err)}, nil
		}
	}
	return &pb.Checked{}, nil
}

// bindable binds a socket to a, as the restore will bind the tree's
// sockets (port 0: any): the kernel's own test of a local address
// (EADDRNOTAVAIL when it is not).
func bindable(a netip.Addr) error {
	family := unix.AF_INET6
	var sa unix.Sockaddr
	if a.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Addr: a.As4()}
	} else {
		s6 := &unix.SockaddrInet6{Addr: a.As16()}
		if a.Zone() != "" {
			return nil // a link-local scope: left to the restore
		}
		sa = s6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	return nil
}
