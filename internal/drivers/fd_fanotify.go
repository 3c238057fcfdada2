package drivers

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/procfs"
)

// fanotify groups: the fanotify_init flags and event file flags, and each
// mark from fdinfo: an inode mark by its file handle (the restore reaches
// the inode by a path that reached it at dump time, checked by inode), a
// mount mark by its mount point. Filesystem marks, groups of the
// permission classes (an event read but not answered yet is invisible)
// and groups with events queued (reading them consumes them) are refused
// by name.

func init() { registerFDKind(fanotifyKind{}) }

// Mark flags fdinfo reports (include/uapi/linux/fanotify.h), the ones a
// mark is made again with.
const fanMarkFlags = unix.FAN_MARK_IGNORED_SURV_MODIFY | unix.FAN_MARK_EVICTABLE | unix.FAN_MARK_IGNORE

type fanotifyKind struct{}

func (fanotifyKind) name() string             { return "fanotify" }
func (fanotifyKind) fileKind() model.FileKind { return model.Fanotify }
func (fanotifyKind) match(target string, _ *unix.Stat_t) bool {
	return target == "anon_inode:[fanotify]"
}
func (fanotifyKind) check(int, int, uint64) error { return nil }

func (fanotifyKind) collect(fl *Files, pid int, fd *FD, f *model.File) error {
	c, err := grabFD(pid, fd.Num)
	if err != nil {
		return err
	}
	defer unix.Close(c)
	if n, err := unix.IoctlGetInt(c, unix.TIOCINQ); err != nil || n != 0 { // FIONREAD
		return fmt.Errorf("%d bytes of events not read yet (%v): not supported", n, err)
	}
	st := &model.FanotifyState{}
	var mounts []procfs.Mount
	seenGroup := false
	for _, kv := range fd.Info.Extra {
		if kv.Key != "fanotify" && !strings.HasPrefix(kv.Key, "fanotify ") {
			continue
		}
		fields := parseFields(strings.TrimSpace(strings.TrimPrefix(kv.Key, "fanotify") + ":" + kv.Value))
		if fields == nil {
			return fmt.Errorf("fdinfo: bad fanotify line %q", kv.Key+":"+kv.Value)
		}
		if _, ok := fields["flags"]; ok {
			fl, err1 := strconv.ParseUint(fields["flags"], 16, 32)
			ef, err2 := strconv.ParseUint(fields["event-flags"], 16, 32)
			if err1 != nil || err2 != nil {
				return fmt.Errorf("fdinfo: bad fanotify flags %q", kv.Value)
			}
			st.Flags, st.EventFlags, seenGroup = uint32(fl), uint32(ef), true
			if st.Flags&(unix.FAN_CLASS_CONTENT|unix.FAN_CLASS_PRE_CONTENT) != 0 {
				return fmt.Errorf("a permission-event group (flags %#x): an event read but not answered yet cannot be seen: not supported", st.Flags)
			}
			continue
		}
		if mounts == nil {
			if mounts, err = procfs.ReadMountinfo(pid); err != nil {
				return err
			}
		}
		m, err := parseFanotifyMark(fields, mounts)
		if err == nil && !m.Mount && m.Path == "" {
			// The handle leads nowhere: by name with --force-irmap.
			w := model.InotifyWatch{Ino: m.Ino, Dev: m.Dev}
			if !fl.ForceIrmap {
				err = fmt.Errorf("the marked file cannot be opened by its handle: dump with --force-irmap")
			} else {
				m.Path, err = irmapPath(pid, mounts, w)
			}
		}
		if err != nil {
			return fmt.Errorf("fanotify mark %q: %w", kv.Value, err)
		}
		st.Marks = append(st.Marks, m)
	}
	if !seenGroup {
		return fmt.Errorf("fdinfo has no fanotify flags")
	}
	f.Kind, f.Path = model.Fanotify, ""
	f.Fanotify = st
	return nil
}

// parseFields splits "k:v k:v …" into a map; nil when a field has no
// colon.
func parseFields(s string) map[string]string {
	out := map[string]string{}
	for _, field := range strings.Fields(s) {
		k, v, ok := strings.Cut(field, ":")
		if !ok {
			return nil
		}
		out[k] = v
	}
	return out
}

func parseFanotifyMark(kv map[string]string, mounts []procfs.Mount) (model.FanotifyMark, error) {
	var m model.FanotifyMark
	num := func(k string, bits int) (uint64, error) {
		n, err := strconv.ParseUint(kv[k], 16, bits)
		if err != nil {
			return 0, fmt.Errorf("field %s: %w", k, err)
		}
		return n, nil
	}
	var err error
	var v uint64
	for _, x := range []struct {
		k   string
		dst *uint32
	}{{"mflags", &m.Mflags}, {"mask", &m.Mask}, {"ignored_mask", &m.IgnoredMask}} {
		if v, err = num(x.k, 32); err != nil {
			return m, err
		}
		*x.dst = uint32(v)
	}
	if m.Mflags&^fanMarkFlags != 0 {
		return m, fmt.Errorf("mark flags %#x unknown to godwit", m.Mflags)
	}
	if m.Mflags&(unix.FAN_MARK_IGNORED_SURV_MODIFY|unix.FAN_MARK_IGNORE) != 0 && m.IgnoredMask == 0 {
		return m, fmt.Errorf("ignore flags %#x without an ignored mask: not supported", m.Mflags)
	}
	switch {
	case kv["mnt_id"] != "":
		id, err := num("mnt_id", 31)
		if err != nil {
			return m, err
		}
		m.Mount, m.MntID = true, int(id)
		for _, mt := range mounts {
			if mt.ID == m.MntID {
				m.Path = mt.MountPoint
			}
		}
		if m.Path == "" {
			return m, fmt.Errorf("mount %d is not in the task's mounts", m.MntID)
		}
	case kv["ino"] != "":
		if m.Ino, err = num("ino", 64); err != nil {
			return m, err
		}
		if v, err = num("sdev", 32); err != nil {
			return m, err
		}
		m.Dev = uint32(v)
		if v, err = num("fhandle-type", 32); err != nil {
			return m, err
		}
		m.HandleType = uint32(v)
		n, err := num("fhandle-bytes", 32)
		if err != nil {
			return m, err
		}
		h, err := hex.DecodeString(kv["f_handle"])
		if err != nil || uint64(len(h)) != n {
			return m, fmt.Errorf("bad file handle")
		}
		m.Handle = h
		w := model.InotifyWatch{Ino: m.Ino, Dev: m.Dev, HandleType: m.HandleType, Handle: m.Handle}
		m.Path, _ = handlePath(mounts, w) // "": the caller may find it by name
	default:
		return m, fmt.Errorf("a filesystem mark: not supported yet")
	}
	return m, nil
}

func (fanotifyKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	st := f.Fanotify
	if st == nil {
		return 0, fmt.Errorf("%s: fanotify without its state", what)
	}
	gfd, err := unix.FanotifyInit(uint(st.Flags|unix.FAN_CLOEXEC), uint(st.EventFlags))
	if err != nil {
		return 0, fmt.Errorf("%s: fanotify_init(%#x, %#o): %w", what, st.Flags, st.EventFlags, err)
	}
	defer unix.Close(gfd)
	for i, m := range st.Marks {
		where := fmt.Sprintf("%s: fanotify mark %d on %s", what, i, m.Path)
		flags := uint(unix.FAN_MARK_ADD) | uint(m.Mflags&unix.FAN_MARK_EVICTABLE)
		if m.Mount {
			flags |= unix.FAN_MARK_MOUNT
		} else {
			// Device and inode: the same inode number on another
			// filesystem mounted over the path is another file. fdinfo's
			// sdev is the kernel's s_dev (MINORBITS 20, linux/kdev_t.h).
			var s unix.Stat_t
			err := unix.Stat(m.Path, &s)
			if err == nil && (s.Ino != m.Ino || s.Dev != unix.Mkdev(m.Dev>>20, m.Dev&(1<<20-1))) {
				err = fmt.Errorf("now device %d:%d inode %d, marked %d:%d inode %d",
					unix.Major(s.Dev), unix.Minor(s.Dev), s.Ino, m.Dev>>20, m.Dev&(1<<20-1), m.Ino)
			}
			if err != nil {
				return 0, fmt.Errorf("%s: not the marked file any more: %v", where, err)
			}
		}
		if m.Mask != 0 {
			if err := unix.FanotifyMark(gfd, flags, uint64(m.Mask), unix.AT_FDCWD, m.Path); err != nil {
				return 0, fmt.Errorf("%s: mask %#x: %w", where, m.Mask, err)
			}
		}
		if m.IgnoredMask != 0 {
			ig := flags | uint(m.Mflags&unix.FAN_MARK_IGNORED_SURV_MODIFY)
			if m.Mflags&unix.FAN_MARK_IGNORE != 0 {
				ig |= unix.FAN_MARK_IGNORE
			} else {
				ig |= unix.FAN_MARK_IGNORED_MASK
			}
			if err := unix.FanotifyMark(gfd, ig, uint64(m.IgnoredMask), unix.AT_FDCWD, m.Path); err != nil {
				return 0, fmt.Errorf("%s: ignored mask %#x: %w", where, m.IgnoredMask, err)
			}
		}
	}
	// The description's O_NONBLOCK (fcntl may have changed what
	// FAN_NONBLOCK set).
	if _, err := unix.FcntlInt(uintptr(gfd), unix.F_SETFL, int(f.Flags)&unix.O_NONBLOCK); err != nil {
		return 0, fmt.Errorf("%s: set flags: %w", what, err)
	}
	return rs.install(what, gfd)
}
