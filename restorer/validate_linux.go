package restorer

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"godwit/internal/buildid"
	"godwit/internal/drivers"
	"godwit/internal/model"
)

// validateFiles checks, before anything is started, that every file the
// restore reopens by path (open fds, the executable, file-backed mappings
// such as libraries) is still the file that was dumped: its type, the
// size of a regular file (when recorded: not for write-only append logs,
// as in CRIU), its permission bits (unless --skip-file-rwx-check) and,
// with --file-validation=buildid, the ELF build-id it had. A file
// modified or replaced since the dump would restore as silently wrong
// state, so it is refused with one line naming it.
//
// Modification times are not compared: CRIU's images have no field for
// them, and a copy, a package reinstall or a backup restore of identical
// contents changes them; the build-id (ELF) and the size (other files)
// are the identity CRIU's own restore checks.
func validateFiles(img *taskImages, o Options) (map[model.ID]drivers.FileIdentity, error) {
	uses := map[model.ID]string{}
	for _, ti := range img.tasks {
		in := ""
		if ti != img {
			in = fmt.Sprintf("task %d: ", ti.pid)
		}
		for _, fd := range ti.task.FDs {
			if _, ok := uses[fd.File]; !ok {
				uses[fd.File] = fmt.Sprintf("%sfd %d", in, fd.Num)
			}
		}
		if ti.mm != nil {
			if _, ok := uses[ti.mm.Exe]; !ok {
				uses[ti.mm.Exe] = in + "the executable"
			}
			for _, v := range ti.mm.VMAs {
				if !v.FileBacked() {
					continue
				}
				id := model.ID(v.Shmid)
				if _, ok := uses[id]; !ok {
					uses[id] = fmt.Sprintf("%smapping %#x-%#x", in, v.Start, v.End)
				}
			}
		}
	}
	ids := make([]model.ID, 0, len(uses))
	for id := range uses {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	mode := o.FileValidation
	if mode == "" {
		mode = FileValidationBuildID
	}
	validated := map[model.ID]drivers.FileIdentity{}
	for _, id := range ids {
		f := img.tree.Files[id]
		if f == nil || f.Kind != model.Path {
			continue
		}
		fi, ok, err := validateFile(f, mode, o.SkipFileRWXCheck)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", uses[id], err)
		}
		if ok {
			validated[id] = fi
		}
	}
	return validated, nil
}

// validateFile compares the file at path with its dump record.
// It returns the identity of the file it checked (ok false when there was
// nothing to check: the file is gone, or the dump recorded nothing).
func validateFile(mf *model.File, mode string, skipRWX bool) (fi drivers.FileIdentity, ok bool, err error) {
	path := mf.Path
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if errors.Is(err, os.ErrNotExist) {
		// Nothing to compare: reopening it fails, naming it, in the
		// step that needs it.
		return fi, false, nil
	}
	if err != nil {
		return fi, false, fmt.Errorf("file %s: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fi, false, fmt.Errorf("file %s: %w", path, err)
	}
	if mf.Mode == 0 {
		return fi, false, nil // nothing recorded to compare with
	}
	fi = drivers.FileIdentity{Dev: st.Dev, Ino: st.Ino}
	was := mf.Mode
	if st.Mode&unix.S_IFMT != was&unix.S_IFMT {
		return fi, false, fmt.Errorf("file %s is of another type than at dump time (mode %#o, was %#o)", path, st.Mode, was)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fi, true, nil // directories and devices have no contents to compare
	}
	if mf.Size != nil && uint64(st.Size) != *mf.Size {
		return fi, false, fmt.Errorf("file %s changed since the dump: %d bytes, was %d", path, st.Size, *mf.Size)
	}
	if !skipRWX && st.Mode&0o7777 != was&0o7777 {
		return fi, false, fmt.Errorf("file %s has mode %#o, was %#o at dump time (--skip-file-rwx-check restores anyway)", path, st.Mode&0o7777, was&0o7777)
	}
	if mode == FileValidationBuildID && len(mf.BuildID) > 0 {
		id, err := buildid.Read(f)
		if err != nil {
			return fi, false, fmt.Errorf("file %s: build-id: %w", path, err)
		}
		if !buildid.Equal(id, buildid.Words(mf.BuildID)) {
			return fi, false, fmt.Errorf("file %s was replaced since the dump: its ELF build-id differs", path)
		}
	}
	return fi, true, nil
}
