package engineopts

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/drivers"
	"godwit/internal/joinns"
	"godwit/internal/logging"
	"godwit/internal/netlock"
	"godwit/internal/opts"
	"godwit/lazypages"
	"godwit/pageserver"
	"godwit/restorer"
)

// Dump maps o onto the dumper's options.
func Dump(o *opts.Options) (dumper.Options, error) {
	d := dumper.Options{
		Pid: o.Tree, ImagesDir: o.ImagesDir, WorkDir: o.WorkDir,
		LeaveRunning: o.LeaveRunning, LeaveStopped: o.LeaveStopped,
		FreezeCgroup: o.FreezeCgroup, CPUCap: o.CPUCap,
		PrevImagesDir: o.PrevImages, TrackMem: o.TrackMem, AutoDedup: o.AutoDedup,
		GhostLimit: o.GhostLimit, FileLocks: o.FileLocks, ShellJob: o.ShellJob, ExtUnixSk: o.ExtUnixSk,
		TCPEstablished: o.TCPEstablish, SkipInFlight: o.SkipInFlight,
	}
	d.FD.LinkRemap, d.FD.EvasiveDevices, d.FD.ForceIrmap = o.LinkRemap, o.EvasiveDevs, o.ForceIrmap
	d.FD.NoGhostFiemap = o.NoGhostFiemap
	for _, e := range o.External {
		if e.Type == "tty" {
			rdev, dev, err := drivers.ParseExternalTTY(e.ID)
			if err != nil || e.Value != "" {
				return dumper.Options{}, fmt.Errorf("--external %s: want tty[RDEV:DEV], both in hex", e)
			}
			d.ExtTTY = append(d.ExtTTY, [2]uint64{rdev, dev})
			continue
		}
		if e.Type == "file" {
			mnt, ino, err := drivers.ParseExternalFile(e.ID)
			if err != nil || e.Value != "" {
				return dumper.Options{}, fmt.Errorf("--external %s: want file[MNT_ID:INODE], both in hex", e)
			}
			if d.FD.ExtFiles == nil {
				d.FD.ExtFiles = map[drivers.ExtFile]bool{}
			}
			d.FD.ExtFiles[drivers.ExtFile{MntID: mnt, Ino: ino}] = true
			continue
		}
		if e.Type != "unix" {
			return dumper.Options{}, fmt.Errorf("--external %s is not supported yet", e)
		}
		ino, err := strconv.ParseUint(e.ID, 10, 32)
		if err != nil || e.Value != "" {
			return dumper.Options{}, fmt.Errorf("--external %s: want unix[INODE]", e)
		}
		d.ExtUnix = append(d.ExtUnix, uint32(ino))
	}
	if o.PageTransfer != "" {
		m, ok := dumper.ParseMethod(o.PageTransfer)
		if !ok {
			return dumper.Options{}, fmt.Errorf("--page-transfer %q: want readv or vmsplice", o.PageTransfer)
		}
		d.Method = m
	}
	d.PageServer = pageServer(o)
	m, err := netlock.ParseMethod(o.NetworkLock)
	if err != nil {
		return dumper.Options{}, err
	}
	d.NetworkLock = m
	return d, nil
}

func pageServer(o *opts.Options) *dumper.PageServer {
	if !o.PageServer {
		return nil
	}
	if o.PsSocket >= 0 {
		// As CRIU: the handed-over socket wins over --address and --port.
		return &dumper.PageServer{Socket: o.PsSocket}
	}
	return &dumper.PageServer{
		Addr:      net.JoinHostPort(o.Address, strconv.Itoa(o.Port)),
		Transport: pageserver.TransportOptionsFrom(o),
	}
}

// PreDump maps o onto a pre-dump round's options. A pre-dump always
// tracks memory (--track-mem is implied, as in CRIU).
func PreDump(o *opts.Options) (dumper.PreDumpOptions, error) {
	if o.PageTransfer == "vmsplice" {
		return dumper.PreDumpOptions{}, errors.New("pre-dump reads pages with process_vm_readv while the task runs: --page-transfer vmsplice does not apply")
	}
	return dumper.PreDumpOptions{
		Pid: o.Tree, ImagesDir: o.ImagesDir, WorkDir: o.WorkDir,
		PrevImagesDir: o.PrevImages, PageServer: pageServer(o),
	}, nil
}

// Restore maps o onto the restorer's options; with o.DisplayStats the
// statistics go to stats.
func Restore(o *opts.Options, stats io.Writer) (restorer.Options, error) {
	switch {
	case o.Root != "" && o.Root != "/":
		return restorer.Options{}, errors.New("restore: --root is not supported yet")
	}
	if o.RestoreSibling && !o.RestoreDetach {
		// The root's parent is then godwit's parent: godwit cannot
		// wait for it, as restore without -d does.
		return restorer.Options{}, errors.New("restore: --restore-sibling needs --restore-detached")
	}
	r := restorer.Options{
		ImagesDir: o.ImagesDir, WorkDir: o.WorkDir, RestoreSibling: o.RestoreSibling,
		Detach: o.RestoreDetach, LeaveStopped: o.LeaveStopped, ShellJob: o.ShellJob,
		CPUCap: o.CPUCap, FileValidation: o.FileValidation, SkipFileRWXCheck: o.SkipFileRWXCheck,
		AutoDedup: o.AutoDedup, LazyPages: o.LazyPages,
		TCPEstablished: o.TCPEstablish, TCPClose: o.TCPClose,
	}
	if o.DisplayStats {
		r.Stats = stats
	}
	m, err := netlock.ParseMethod(o.NetworkLock)
	if err != nil {
		return restorer.Options{}, err
	}
	r.NetworkLock = m
	for _, j := range o.JoinNS {
		spec, err := joinns.Parse(j)
		if err != nil {
			return restorer.Options{}, err
		}
		r.JoinedNS = append(r.JoinedNS, spec.Kind)
	}
	for _, in := range o.InheritFD {
		key, err := drivers.InheritKey(in.Resource)
		if err != nil {
			return restorer.Options{}, fmt.Errorf("restore: --inherit-fd fd[%d]:%s: %w", in.FD, in.Resource, err)
		}
		if _, err := unix.FcntlInt(uintptr(in.FD), unix.F_GETFD, 0); err != nil {
			return restorer.Options{}, fmt.Errorf("restore: --inherit-fd fd[%d]:%s: godwit has no fd %d", in.FD, in.Resource, in.FD)
		}
		if r.InheritFD == nil {
			r.InheritFD = map[string]int{}
		}
		r.InheritFD[key] = in.FD
	}
	return r, nil
}

// LazyPages maps o onto the lazy-pages daemon's options.
func LazyPages(o *opts.Options, log *logging.Logger) (lazypages.Options, error) {
	l := lazypages.Options{ImagesDir: o.ImagesDir, WorkDir: o.WorkDir, Log: log}
	if o.PageServer {
		if o.Address == "" || o.Port == 0 {
			return lazypages.Options{}, errors.New("lazy-pages --page-server needs --address and --port")
		}
		l.PageServer = net.JoinHostPort(o.Address, strconv.Itoa(o.Port))
		l.Transport = pageserver.TransportOptionsFrom(o)
	}
	return l, nil
}

// DumpLazy is where dump --lazy-pages serves the pages it leaves out
// (--address, default every address, and --port, 0 for any).
func DumpLazy(o *opts.Options, log *logging.Logger) dumper.LazyServe {
	return dumper.LazyServe{Addr: net.JoinHostPort(o.Address, strconv.Itoa(o.Port)),
		Transport: pageserver.TransportOptionsFrom(o), Log: log}
}
