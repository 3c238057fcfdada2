package drivers

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/procfs"
)

// inotify instances: every watch (descriptor, mask, watched inode) from
// fdinfo. The dump finds a path to each watched inode from its file handle
// (open_by_handle_at on the mount of its device) and refuses pending
// events. The restore makes the instance in godwit and adds each watch by
// path, checking the path still leads to an inode of the same number on
// the same device; watch descriptors are handed out in rising order, so a
// watch that must have a higher number than the next free one is reached
// by adding and removing placeholder watches, whose IN_IGNORED events are
// read off before the task gets the instance.

func init() { registerFDKind(inotifyKind{}) }

type inotifyKind struct{}

func (inotifyKind) name() string                             { return "inotify" }
func (inotifyKind) fileKind() model.FileKind                 { return model.Inotify }
func (inotifyKind) match(target string, _ *unix.Stat_t) bool { return target == "anon_inode:inotify" }
func (inotifyKind) check(int, int, uint64) error             { return nil }

func (inotifyKind) collect(fl *Files, pid int, fd *FD, f *model.File) error {
	c, err := grabFD(pid, fd.Num)
	if err != nil {
		return err
	}
	defer unix.Close(c)
	if n, err := unix.IoctlGetInt(c, unix.TIOCINQ); err != nil || n != 0 { // FIONREAD
		return fmt.Errorf("%d bytes of events not read yet (%v): not supported yet", n, err)
	}
	var mounts []procfs.Mount
	st := &model.InotifyState{}
	for _, kv := range fd.Info.Extra {
		if kv.Key != "inotify wd" {
			continue
		}
		w, err := parseInotifyWatch(kv.Value)
		if err != nil {
			return err
		}
		if mounts == nil {
			if mounts, err = procfs.ReadMountinfo(pid); err != nil {
				return err
			}
		}
		w.Path, err = handlePath(mounts, w)
		if err != nil && fl.ForceIrmap {
			// The handle leads nowhere: by name (a walk of the
			// mount, slow on a large one, hence only on request).
			w.Path, err = irmapPath(pid, mounts, w)
		}
		if err != nil {
			return fmt.Errorf("watch %d (inode %d): %w", w.Wd, w.Ino, err)
		}
		st.Watches = append(st.Watches, w)
	}
	sort.Slice(st.Watches, func(i, j int) bool { return st.Watches[i].Wd < st.Watches[j].Wd })
	f.Kind, f.Path = model.Inotify, ""
	f.Inotify = st
	return nil
}

// parseInotifyWatch parses the rest of an "inotify wd:X ino:X sdev:X
// mask:X ignored_mask:X fhandle-bytes:X fhandle-type:X f_handle:HEX" line.
func parseInotifyWatch(v string) (model.InotifyWatch, error) {
	var w model.InotifyWatch
	kv := map[string]string{}
	for i, field := range strings.Fields(v) {
		if i == 0 {
			kv["wd"] = field
			continue
		}
		k, val, ok := strings.Cut(field, ":")
		if !ok {
			return w, fmt.Errorf("fdinfo: bad inotify watch %q", v)
		}
		kv[k] = val
	}
	num := func(k string, bits int) uint64 {
		n, err := strconv.ParseUint(kv[k], 16, bits)
		if err != nil {
			kv["bad"] = k
		}
		return n
	}
	w.Wd = uint32(num("wd", 32))
	w.Ino = num("ino", 64)
	w.Dev = uint32(num("sdev", 32))
	w.Mask = uint32(num("mask", 32))
	w.IgnoredMask = uint32(num("ignored_mask", 32))
	if _, ok := kv["fhandle-bytes"]; !ok {
		// The kernel prints no handle where the filesystem cannot
		// encode one: only --force-irmap finds the watched file then.
		if k, bad := kv["bad"]; bad {
			return w, fmt.Errorf("fdinfo: bad inotify watch %q (%s)", v, k)
		}
		return w, nil
	}
	w.HandleType = uint32(num("fhandle-type", 32))
	n := num("fhandle-bytes", 32)
	h, err := hex.DecodeString(kv["f_handle"])
	if k, bad := kv["bad"]; bad || err != nil || uint64(len(h)) != n {
		return w, fmt.Errorf("fdinfo: bad inotify watch %q (%s)", v, k)
	}
	w.Handle = h
	return w, nil
}

// handlePath opens the watched inode by its handle on a mount of its
// device and returns the path that names it, checked by inode number.
func handlePath(mounts []procfs.Mount, w model.InotifyWatch) (string, error) {
	for _, m := range mounts {
		if m.Major<<20|m.Minor != w.Dev {
			continue
		}
		// Not O_PATH: open_by_handle_at wants a real open of the mount.
		mfd, err := unix.Open(m.MountPoint, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		h := unix.NewFileHandle(int32(w.HandleType), w.Handle)
		fd, err := unix.OpenByHandleAt(mfd, h, unix.O_PATH|unix.O_CLOEXEC)
		unix.Close(mfd)
		if err != nil {
			continue
		}
		p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		unix.Close(fd)
		if err != nil || !strings.HasPrefix(p, "/") || strings.HasSuffix(p, " (deleted)") {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && st.Ino == w.Ino {
			return p, nil
		}
	}
	return "", fmt.Errorf("the watched file cannot be opened by its handle: dump with --force-irmap")
}

// irmapMax bounds the entries irmapPath looks at on one mount.
const irmapMax = 1 << 20

// irmapPath finds the watched inode by name (CRIU's irmap, which
// --force-irmap asks for; the path a handle gives is as good, and cheaper): it walks each mount of the inode's device, as
// task pid sees it, without leaving that device, for an entry of that
// inode number. It needs no file handle, so it works where
// open_by_handle_at does not (overlayfs without nfs_export, fuse …).
func irmapPath(pid int, mounts []procfs.Mount, w model.InotifyWatch) (string, error) {
	root := procfs.Path(pid, "root")
	seen := 0
	for _, m := range mounts {
		if m.Major<<20|m.Minor != w.Dev {
			continue
		}
		top := root + m.MountPoint // "/proc/PID/root/" for "/": followed
		var found string
		errFound, errMany := errors.New("found"), errors.New("too many")
		filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // an unreadable part: look elsewhere
			}
			if seen++; seen > irmapMax {
				return errMany
			}
			var st unix.Stat_t
			if unix.Lstat(p, &st) != nil || uint32(unix.Major(st.Dev)<<20|unix.Minor(st.Dev)) != w.Dev {
				if d.IsDir() {
					return filepath.SkipDir // another mount
				}
				return nil
			}
			if st.Ino == w.Ino {
				found = m.MountPoint + strings.TrimPrefix(p, top)
				return errFound
			}
			return nil
		})
		if found != "" {
			return filepath.Clean(found), nil
		}
		if seen > irmapMax {
			return "", fmt.Errorf("--force-irmap: the watched file is not among the first %d names of its mounts", irmapMax)
		}
	}
	return "", fmt.Errorf("--force-irmap: no name of the watched file on its mounts")
}

func (inotifyKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	if f.Inotify == nil {
		return 0, fmt.Errorf("%s: inotify without its state", what)
	}
	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return 0, fmt.Errorf("%s: inotify_init1: %w", what, err)
	}
	defer unix.Close(ifd)
	placeholders := false
	for _, w := range f.Inotify.Watches {
		var st unix.Stat_t
		if err := unix.Stat(w.Path, &st); err != nil || st.Ino != w.Ino {
			return 0, fmt.Errorf("%s: inotify watch %d: %s is not the watched file any more (%v)", what, w.Wd, w.Path, err)
		}
		for {
			wd, err := unix.InotifyAddWatch(ifd, w.Path, w.Mask)
			if err != nil {
				return 0, fmt.Errorf("%s: inotify watch %d on %s: %w", what, w.Wd, w.Path, err)
			}
			if uint32(wd) == w.Wd {
				break
			}
			if uint32(wd) > w.Wd {
				return 0, fmt.Errorf("%s: inotify watch %d on %s came out as %d", what, w.Wd, w.Path, wd)
			}
			if _, err := unix.InotifyRmWatch(ifd, uint32(wd)); err != nil {
				return 0, fmt.Errorf("%s: inotify placeholder watch %d: %w", what, wd, err)
			}
			placeholders = true
		}
	}
	if placeholders {
		buf := make([]byte, 64<<10)
		for {
			if _, err := unix.Read(ifd, buf); err != nil {
				break // EAGAIN: drained
			}
		}
	}
	if _, err := unix.FcntlInt(uintptr(ifd), unix.F_SETFL, int(f.Flags&unix.O_NONBLOCK)); err != nil {
		return 0, fmt.Errorf("%s: F_SETFL: %w", what, err)
	}
	return rs.install(what, ifd)
}
