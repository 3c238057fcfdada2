package drivers

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

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
	// A directory removed while the task sat in it: the link reads
	// "PATH (deleted)" and the directory has no links left.
	cwdDeleted := cwdSt.Nlink == 0 && strings.HasSuffix(cwdPath, deletedSuffix)
	if cwdDeleted {
		cwdPath = strings.TrimSuffix(cwdPath, deletedSuffix)
	}
	if rootSt.Nlink == 0 {
		return fmt.Errorf("root %s: a deleted root directory is not supported", rootPath)
	}
	// The restore enters both by path.
	if !cwdDeleted {
		if err := PathLeadsTo(d.Pid, cwdPath, cwdSt); err != nil {
			return fmt.Errorf("cwd: %w", err)
		}
	}
	if err := PathLeadsTo(d.Pid, rootPath, rootSt); err != nil {
		return fmt.Errorf("root: %w", err)
	}
	status, err := procfs.ReadStatus(d.Pid)
	if err != nil {
		return err
	}
	fs := &model.FS{
		Cwd:  d.Files.Reg(cwdPath, unix.O_RDONLY|unix.O_DIRECTORY, 0, cwdSt, NoMntID),
		Root: d.Files.Reg(rootPath, unix.O_RDONLY|unix.O_DIRECTORY, 0, rootSt, NoMntID),

		CwdDeleted: cwdDeleted,
	}
	umask := uint32(0o022)
	if status.Umask >= 0 {
		umask = uint32(status.Umask)
	}
	fs.Umask = &umask
	d.Task.FS = fs
	return nil
}

// deletedSuffix ends the /proc link of a file no longer in the tree.
const deletedSuffix = " (deleted)"

// Restore changes to the cwd and sets the umask.
func (fsDriver) Restore(r *Restore, s *inject.Session) error {
	cwd := r.Tree.Files[r.Task.FS.Cwd].Path
	if r.Task.FS.CwdDeleted {
		if err := deletedCwd(r, s, cwd); err != nil {
			return err
		}
	} else {
		// Queued (inject.Session.Later): they run with the next
		// driver's calls, in the same stop.
		a, err := s.Stash(append([]byte(cwd), 0))
		if err != nil {
			return err
		}
		s.Later("chdir "+cwd, unix.SYS_CHDIR, a)
	}
	if u := r.Task.FS.Umask; u != nil {
		s.Later("umask", unix.SYS_UMASK, uint64(*u))
	}
	return nil
}

// deletedCwd gives the task a deleted working directory again, as the
// kernel keeps it: a directory is made (at the old path when it is free,
// else beside it, else in /tmp), entered and removed, so the task sees
// what it saw (getcwd fails with ENOENT, /proc/PID/cwd reads
// "… (deleted)", nothing can be created in it).
func deletedCwd(r *Restore, s *inject.Session, cwd string) error {
	mode := uint64(0o700)
	if m := r.Tree.Files[r.Task.FS.Cwd].Mode; m != 0 {
		mode = uint64(m & 0o7777)
	}
	tag := ".godwit-deleted-cwd-" + strconv.Itoa(r.Task.Pid)
	var errs []error
	for _, p := range []string{cwd, cwd + tag, "/tmp/" + tag} {
		a, err := s.PutString(0, p)
		if err != nil {
			return err
		}
		if _, err := s.Call("mkdir "+p, unix.SYS_MKDIR, a, mode); err != nil {
			errs = append(errs, err)
			continue
		}
		_, err = s.Call("chdir "+p, unix.SYS_CHDIR, a)
		if _, rerr := s.Call("rmdir "+p, unix.SYS_RMDIR, a); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			return fmt.Errorf("deleted cwd %s: %w", cwd, err)
		}
		return nil
	}
	return fmt.Errorf("deleted cwd %s: no place to remake it: %w", cwd, errors.Join(errs...))
}
