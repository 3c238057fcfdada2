package restorer

import (
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"golang.org/x/sys/unix"

	"godwit/internal/buildid"
	"godwit/internal/images"
	"godwit/internal/opts"
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
func validateFiles(img *taskImages, o *opts.Options) error {
	uses := map[uint32]string{}
	for _, e := range img.fds {
		if _, ok := uses[e.GetId()]; !ok {
			uses[e.GetId()] = fmt.Sprintf("fd %d", e.GetFd())
		}
	}
	if img.mm != nil {
		uses[img.mm.GetExeFileId()] = "the executable"
		for _, v := range img.mm.GetVmas() {
			if v.GetStatus()&(images.VmaFilePrivate|images.VmaFileShared) == 0 {
				continue
			}
			id := uint32(v.GetShmid())
			if _, ok := uses[id]; !ok {
				uses[id] = fmt.Sprintf("mapping %#x-%#x", v.GetStart(), v.GetEnd())
			}
		}
	}
	ids := make([]uint32, 0, len(uses))
	for id := range uses {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	mode := o.FileValidation
	if mode == "" {
		mode = opts.FileValidationBuildID
	}
	for _, id := range ids {
		reg := img.files[id].GetReg()
		if reg == nil {
			continue
		}
		if err := validateFile(img.filePath(id), reg, mode, o.SkipFileRWXCheck); err != nil {
			return fmt.Errorf("%s: %w", uses[id], err)
		}
	}
	return nil
}

// validateFile compares the file at path with its dump record.
func validateFile(path string, reg *regfile.RegFileEntry, mode string, skipRWX bool) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if errors.Is(err, os.ErrNotExist) {
		// Nothing to compare: reopening it fails, naming it, in the
		// step that needs it.
		return nil
	}
	if err != nil {
		return fmt.Errorf("file %s: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("file %s: %w", path, err)
	}
	if reg.Mode == nil {
		return nil // nothing recorded to compare with
	}
	was := reg.GetMode()
	if st.Mode&unix.S_IFMT != was&unix.S_IFMT {
		return fmt.Errorf("file %s is of another type than at dump time (mode %#o, was %#o)", path, st.Mode, was)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil // directories and devices have no contents to compare
	}
	if reg.Size != nil && uint64(st.Size) != reg.GetSize() {
		return fmt.Errorf("file %s changed since the dump: %d bytes, was %d", path, st.Size, reg.GetSize())
	}
	if !skipRWX && st.Mode&0o7777 != was&0o7777 {
		return fmt.Errorf("file %s has mode %#o, was %#o at dump time (--skip-file-rwx-check restores anyway)", path, st.Mode&0o7777, was&0o7777)
	}
	if mode == opts.FileValidationBuildID && len(reg.GetBuildId()) > 0 {
		id, err := buildid.Read(f)
		if err != nil {
			return fmt.Errorf("file %s: build-id: %w", path, err)
		}
		if !buildid.Equal(id, reg.GetBuildId()) {
			return fmt.Errorf("file %s was replaced since the dump: its ELF build-id differs", path)
		}
	}
	return nil
}
