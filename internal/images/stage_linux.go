package images

import (
	"errors"
	"fmt"
	"os"
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
// inventory.img last; Abort removes them. Either way a failed dump never
// replaces, truncates or removes a file of an earlier dump there.
type Staging struct {
	final *Dir
	tmp   *Dir
	name  string
	done  bool
}

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

// Commit moves every staged file into the images directory and removes
// the staging directory. The earlier dump's inventory.img is removed
// first and the new one moved last, so that between the two the directory
// holds no inventory (no dump a restore would take for whole).
func (s *Staging) Commit() error {
	if s.done {
		return errors.New("images: staging already finished")
	}
	names, err := s.tmp.List()
	if err != nil {
		return err
	}
	hasInventory := false
	if err := s.final.Remove(InventoryImg); err != nil {
		return err
	}
	for _, n := range names {
		if n == InventoryImg {
			hasInventory = true
			continue
		}
		if err := s.move(n); err != nil {
			return err
		}
	}
	if !hasInventory {
		return errors.New("images: staged dump has no " + InventoryImg)
	}
	if err := s.move(InventoryImg); err != nil {
		return err
	}
	s.Abort()
	return nil
}

func (s *Staging) move(name string) error {
	if err := unix.Renameat(s.tmp.fd, name, s.final.fd, name); err != nil {
		return fmt.Errorf("images: move %s into %s: %w", name, s.final.path, err)
	}
	return nil
}

// Abort removes the staging directory and what is left in it. It may be
// called more than once, and after Commit.
func (s *Staging) Abort() {
	if s.done {
		return
	}
	s.done = true
	if names, err := s.tmp.List(); err == nil {
		for _, n := range names {
			_ = s.tmp.Remove(n)
		}
	}
	s.tmp.Close()
	_ = unix.Unlinkat(s.final.fd, s.name, unix.AT_REMOVEDIR)
}
