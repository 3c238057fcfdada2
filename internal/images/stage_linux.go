package images

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
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
// replace; Undo puts the earlier dump back, Keep drops it, Abort (before
// Commit) removes the new images. A failed dump therefore never leaves an
// earlier dump in the directory changed.
type Staging struct {
	final *Dir
	tmp   *Dir
	name  string
	old   *Dir     // the earlier dump's replaced files, during Commit..Keep/Undo
	moved []string // names moved into final, in order
	saved []string // names of final set aside in old
	done  bool
}

// oldDir is the subdirectory of the staging directory that holds the
// replaced files of an earlier dump.
const oldDir = "replaced"

// NewStaging makes a staging directory (0700) inside final.
func NewStaging(final *Dir) (*Staging, error) {
	for i := 0; ; i++ {
		name := StagePrefix + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		err := unix.Mkdirat(final.fd, name, 0o700)
		if err == unix.EEXIST && i < 16 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("images: staging dir in %s: %w", final.path, err)
		}
		tmp, err := final.OpenSubdir(name)
		if err != nil {
			_ = unix.Unlinkat(final.fd, name, unix.AT_REMOVEDIR)
			return nil, fmt.Errorf("images: staging dir: %w", err)
		}
		return &Staging{final: final, tmp: tmp, name: name}, nil
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
	if err != nil {
		s.Undo()
		return err
	}
	return nil
}

// setAside moves final's name, if it exists, into the old directory.
func (s *Staging) setAside(name string) error {
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

// Undo, after Commit, removes the new images from the directory and puts
// the earlier dump's files back (its inventory.img last); before Commit it
// is Abort.
func (s *Staging) Undo() {
	if s.done {
		return
	}
	for i := len(s.moved) - 1; i >= 0; i-- {
		_ = s.final.Remove(s.moved[i])
	}
	s.moved = nil
	for i := len(s.saved) - 1; i >= 0; i-- {
		if s.saved[i] != InventoryImg {
			_ = unix.Renameat(s.old.fd, s.saved[i], s.final.fd, s.saved[i])
		}
	}
	if slices.Contains(s.saved, InventoryImg) {
		_ = unix.Renameat(s.old.fd, InventoryImg, s.final.fd, InventoryImg)
	}
	s.saved = nil
	s.Abort()
}

// Keep, after Commit, drops the earlier dump's replaced files.
func (s *Staging) Keep() { s.Abort() }

// Abort removes the staging directory and what is left in it. It may be
// called more than once; after Commit use Undo or Keep.
func (s *Staging) Abort() {
	if s.done {
		return
	}
	s.done = true
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
