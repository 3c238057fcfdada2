package images

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// StagePrefix starts the name of the staging directories a dump writes
// into inside -D; one left behind means a dump was killed (SIGKILL) and
// can be removed.
const StagePrefix = ".godwit-dump-"

// Staging is a fresh directory inside an images directory that a dump
// writes its images into. Commit moves them into the images directory,
// inventory.img last, setting aside the files of an earlier dump they
// replace; Rollback puts the earlier dump back, Keep drops it,
// Abort (before Commit) removes the new images. A failed dump therefore
// never leaves an earlier dump in the directory changed.
//
// A Staging holds an exclusive flock on the images directory for its
// lifetime: a second dump into the same directory, which would move files
// under this one's feet and whose rollback would remove them by name, is
// refused at once.
type Staging struct {
	final *Dir
	lock  int // own open of final, flocked
	tmp   *Dir
	name  string
	old   *Dir     // the earlier dump's replaced files, during Commit..Keep/Rollback
	moved []string // names moved into final, in order
	saved []string // names of final set aside in old
	// present: the names in final that Commit may replace.
	present map[string]bool
	done    bool
	// before: the names in final when the Staging began (nil: unknown,
	// nothing is written there directly); direct: the names written
	// straight into final (Dir.WriteBulk), which Abort, or Rollback
	// after Commit, removes again.
	before    map[string]bool
	dmu       sync.Mutex
	direct    []string
	committed bool
}

// oldDir is the subdirectory of the staging directory that holds the
// replaced files of an earlier dump.
const oldDir = "replaced"

// NewStaging locks final and makes a staging directory (0700) inside it.
func NewStaging(final *Dir) (*Staging, error) {
	// A new open file description, so that the lock conflicts with any
	// other Staging, in this process too, and is ours to release.
	lock, err := unix.Openat(final.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("images: lock %s: %w", final.path, err)
	}
	if err := unix.Flock(lock, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(lock)
		if err == unix.EWOULDBLOCK {
			return nil, fmt.Errorf("images: %s is in use by another dump", final.path)
		}
		return nil, fmt.Errorf("images: lock %s: %w", final.path, err)
	}
	s, err := newStaging(final)
	if err != nil {
		unix.Close(lock)
		return nil, err
	}
	s.lock = lock
	return s, nil
}

func newStaging(final *Dir) (*Staging, error) {
	for i := 0; ; i++ {
		name := StagePrefix + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		err := unix.Mkdirat(final.fd, name, 0o700)
		if err == unix.EEXIST && i < 16 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("images: staging dir in %s: %w", final.path, err)
		}
		// The images directory may belong to someone else (an RPC
		// client): between mkdir and open the name could be swapped
		// for a symlink, so it is not followed, and the directory
		// opened must be the one godwit made (its owner).
		fd, err := unix.Openat(final.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		var st unix.Stat_t
		if err == nil {
			if err = unix.Fstat(fd, &st); err == nil && int(st.Uid) != os.Geteuid() {
				err = fmt.Errorf("%s is not godwit's (uid %d)", name, st.Uid)
			}
			if err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			_ = unix.Unlinkat(final.fd, name, unix.AT_REMOVEDIR)
			return nil, fmt.Errorf("images: staging dir in %s: %w", final.path, err)
		}
		tmp := &Dir{fd: fd, path: final.join(name)}
		s := &Staging{final: final, tmp: tmp, name: name, lock: -1}
		if names, err := final.List(); err == nil {
			s.before = make(map[string]bool, len(names))
			for _, n := range names {
				s.before[n] = true
			}
		}
		tmp.stage = s
		return s, nil
	}
}

// Dir is where the images are written until Commit.
func (s *Staging) Dir() *Dir { return s.tmp }

// Commit moves every staged file into the images directory. The earlier
// dump's inventory.img is set aside first and the new one moved last, so
// that in between the directory holds no inventory (no dump a restore
// would take for whole). On error the earlier dump is put back.
func (s *Staging) Commit() error {
	if s.done || s.old != nil {
		return errors.New("images: staging already finished")
	}
	names, err := s.tmp.List()
	if err != nil {
		return err
	}
	if !slices.Contains(names, InventoryImg) {
		return errors.New("images: staged dump has no " + InventoryImg)
	}
	if err := unix.Mkdirat(s.tmp.fd, oldDir, 0o700); err != nil {
		return fmt.Errorf("images: staging: %w", err)
	}
	if s.old, err = s.tmp.OpenSubdir(oldDir); err != nil {
		return err
	}
	// What there is to set aside, listed once: a dump of thousands of
	// connections has as many files (tcp-stream-*.img), and a rename
	// that finds nothing costs as much as one that moves a file. The
	// directory is flocked: no other dump adds to it meanwhile.
	// The listing NewStaging made serves, when it has one: since then
	// only this dump wrote there (WriteBulk), names it does not stage.
	s.present = s.before
	if s.present == nil {
		present, err := s.final.List()
		if err != nil {
			return err
		}
		s.present = make(map[string]bool, len(present))
		for _, n := range present {
			s.present[n] = true
		}
	}
	err = s.setAside(InventoryImg)
	for _, n := range names {
		if err != nil {
			break
		}
		if n == InventoryImg || n == oldDir {
			continue
		}
		if err = s.setAside(n); err == nil {
			err = s.moveIn(n)
		}
	}
	if err == nil {
		err = s.moveIn(InventoryImg)
	}
	s.committed = true
	if err != nil {
		if uerr := s.Rollback(); uerr != nil {
			return errors.Join(err, uerr)
		}
		return err
	}
	return nil
}

// setAside moves final's name, if it exists, into the old directory.
func (s *Staging) setAside(name string) error {
	if !s.present[name] {
		return nil
	}
	err := unix.Renameat(s.final.fd, name, s.old.fd, name)
	if err == unix.ENOENT {
		return nil
	}
	if err != nil {
		return fmt.Errorf("images: set aside %s of %s: %w", name, s.final.path, err)
	}
	s.saved = append(s.saved, name)
	return nil
}

func (s *Staging) moveIn(name string) error {
	if err := unix.Renameat(s.tmp.fd, name, s.final.fd, name); err != nil {
		return fmt.Errorf("images: move %s into %s: %w", name, s.final.path, err)
	}
	s.moved = append(s.moved, name)
	return nil
}

// Rollback, after Commit, removes the new images from the directory and
// puts the earlier dump's files back (its inventory.img last); before
// Commit it is Abort. If any of that fails the staging directory, with
// the earlier dump's files still set aside in it, is kept and the error
// names it: deleting it would destroy the earlier dump.
func (s *Staging) Rollback() error {
	if s.done {
		return nil
	}
	var errs []string
	if s.committed {
		// Never an earlier dump's name: nothing to put back for them.
		for _, n := range s.takeDirect() {
			if err := s.final.Remove(n); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	for i := len(s.moved) - 1; i >= 0; i-- {
		if err := s.final.Remove(s.moved[i]); err != nil && !slices.Contains(s.saved, s.moved[i]) {
			// Without an earlier file to rename over it, the new one
			// would stay mixed into the earlier dump.
			errs = append(errs, err.Error())
		}
	}
	s.moved = nil
	putBack := func(n string) {
		if err := unix.Renameat(s.old.fd, n, s.final.fd, n); err != nil {
			errs = append(errs, fmt.Sprintf("put back %s: %v", n, err))
		}
	}
	for i := len(s.saved) - 1; i >= 0; i-- {
		if s.saved[i] != InventoryImg {
			putBack(s.saved[i])
		}
	}
	if slices.Contains(s.saved, InventoryImg) && len(errs) == 0 {
		// Only a whole earlier dump gets its inventory back.
		putBack(InventoryImg)
	}
	s.saved = nil
	if len(errs) > 0 {
		s.release()
		return fmt.Errorf("images: could not restore the earlier dump in %s (%s); its files are kept in %s/%s/%s",
			s.final.path, strings.Join(errs, "; "), s.final.path, s.name, oldDir)
	}
	s.Abort()
	return nil
}

// release ends the Staging without removing anything.
func (s *Staging) release() {
	s.done = true
	if s.old != nil {
		s.old.Close()
	}
	s.tmp.Close()
	s.unlock()
}

func (s *Staging) unlock() {
	if s.lock >= 0 {
		unix.Close(s.lock)
		s.lock = -1
	}
}

// writeDirect writes name into final at once, as WriteNew, when final
// held no such name as the Staging began (an image that replaces an
// earlier dump's is staged, and replaced only at Commit) and it is not
// inventory.img (moved in last, at Commit); false: name is to be
// staged. The name is recorded once made (O_EXCL: never another's file),
// so that Abort removes it, written or not.
func (s *Staging) writeDirect(name string, b []byte) (bool, error) {
	if s.before == nil || s.before[name] || name == InventoryImg || s.done || s.committed {
		return false, nil
	}
	return true, s.final.writeNew(name, b, func() {
		s.dmu.Lock()
		s.direct = append(s.direct, name)
		s.dmu.Unlock()
	})
}

// takeDirect hands over (once) the names written straight into final.
func (s *Staging) takeDirect() []string {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	d := s.direct
	s.direct = nil
	return d
}

// Keep, after Commit, drops the earlier dump's replaced files.
func (s *Staging) Keep() { s.Abort() }

// Abort removes the staging directory and what is left in it. It may be
// called more than once; after Commit use Rollback or Keep.
func (s *Staging) Abort() {
	if s.done {
		return
	}
	s.done = true
	defer s.unlock()
	if !s.committed {
		for _, n := range s.takeDirect() {
			_ = s.final.Remove(n)
		}
	}
	if s.old != nil {
		if names, err := s.old.List(); err == nil {
			for _, n := range names {
				_ = s.old.Remove(n)
			}
		}
		s.old.Close()
		_ = unix.Unlinkat(s.tmp.fd, oldDir, unix.AT_REMOVEDIR)
	}
	if names, err := s.tmp.List(); err == nil {
		for _, n := range names {
			_ = s.tmp.Remove(n)
		}
	}
	s.tmp.Close()
	_ = unix.Unlinkat(s.final.fd, s.name, unix.AT_REMOVEDIR)
}
