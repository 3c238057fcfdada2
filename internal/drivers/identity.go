package drivers

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"godwit/internal/buildid"
	"godwit/internal/inject"
	"godwit/internal/model"
)

// recordIdentity stores what restore checks a reopened regular file
// against: its size and, for ELF files, its build-id. As CRIU does, a file
// open write-only for appending (a log) has no size recorded: the program
// only ever adds at its end, so a log that grew after a dump with -R
// restores consistently.
func recordIdentity(f *model.File, path string, flags uint32, st *unix.Stat_t, cache map[[2]uint64][]byte) {
	if !(flags&unix.O_ACCMODE == unix.O_WRONLY && flags&unix.O_APPEND != 0) {
		size := uint64(st.Size)
		f.Size = &size
	}
	// Read once per inode: a file opened by many fds is one file.
	key := [2]uint64{st.Dev, st.Ino}
	id, ok := cache[key]
	if !ok {
		id = fileBuildID(path, st)
		if cache != nil {
			cache[key] = id
		}
	}
	f.BuildID = id
}

// fileBuildID reads the build-id of the file at path if it is still the
// file st describes (same device and inode); nil otherwise or without one.
func fileBuildID(path string, st *unix.Stat_t) []byte {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	var now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &now) != nil || now.Dev != st.Dev || now.Ino != st.Ino {
		return nil
	}
	id, err := buildid.Read(f)
	if err != nil {
		return nil
	}
	return id
}

// FileIdentity is the device and inode of a file restore validated
// against its dump record, before starting anything.
type FileIdentity struct{ Dev, Ino uint64 }

// VerifyOpened checks that fd, just opened by path in task pid, is the
// file validated as want: a file replaced at its path between the
// validation and the open (a package upgrade during the restore) would
// otherwise be restored unchecked.
func VerifyOpened(pid int, fd uint64, path string, want FileIdentity) error {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/fd/"+strconv.FormatUint(fd, 10), &st); err != nil {
		return fmt.Errorf("check %s after opening it: %w", path, err)
	}
	if st.Dev != want.Dev || st.Ino != want.Ino {
		return fmt.Errorf("file %s was replaced during the restore (it is not the file validated against the dump)", path)
	}
	return nil
}

// verifyOpened is VerifyOpened for the files of r that were validated.
func (r *Restore) verifyOpened(s *inject.Session, fd uint64, f *model.File) error {
	want, ok := r.Validated[f.ID]
	if !ok {
		return nil
	}
	return VerifyOpened(s.Pid(), fd, f.Path, want)
}
