package drivers

import (
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// fsDriver dumps and restores the task's fs_struct: cwd, root and umask
// (the root is changed with the mm, after the exe is set: see the
// restorer's mm phase).
type fsDriver struct{}

func (fsDriver) Name() string    { return "fs" }
func (fsDriver) After() []string { return []string{PhaseThreads, "files"} }

// Collect names cwd and root (O_RDONLY|O_DIRECTORY files) and reads the
// umask.
func (fsDriver) Collect(d *Dump) error {
	cwdPath, cwdSt, err := LinkFile(d.Pid, "cwd")
	if err != nil {
		return fmt.Errorf("cwd: %w", err)
	}
	rootPath, rootSt, err := LinkFile(d.Pid, "root")
	if err != nil {
		return fmt.Errorf("root: %w", err)
	}
	status, err := procfs.ReadStatus(d.Pid)
	if err != nil {
		return err
	}
	fs := &model.FS{
		Cwd:  d.Files.Reg(cwdPath, unix.O_RDONLY|unix.O_DIRECTORY, 0, cwdSt, NoMntID),
		Root: d.Files.Reg(rootPath, unix.O_RDONLY|unix.O_DIRECTORY, 0, rootSt, NoMntID),
	}
	umask := uint32(0o022)
	if status.Umask >= 0 {
		umask = uint32(status.Umask)
	}
	fs.Umask = &umask
	d.Task.FS = fs
	return nil
}

// Restore changes to the cwd and sets the umask.
func (fsDriver) Restore(r *Restore, s *inject.Session) error {
	cwd := r.Tree.Files[r.Task.FS.Cwd].Path
	a, err := s.PutString(0, cwd)
	if err != nil {
		return err
	}
	if _, err := s.Call("chdir "+cwd, unix.SYS_CHDIR, a); err != nil {
		return err
	}
	if u := r.Task.FS.Umask; u != nil {
		if _, err := s.Call("umask", unix.SYS_UMASK, uint64(*u)); err != nil {
			return err
		}
	}
	return nil
}
