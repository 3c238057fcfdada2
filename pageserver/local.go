package pageserver

import (
	"errors"
	"fmt"
	"io"
	"os"

	"godwit/internal/images"
)

// Sink is where a dumper sends one pagemap's pages: a *TaskSink (page
// server) or a *LocalSink (images directory). Both produce the same
// images.
type Sink interface {
	AddPages(vaddr, nr uint64, flags uint32, src io.Reader) error
	Hole(vaddr, nr uint64) error
	Close() error
}

var (
	_ Sink = (*TaskSink)(nil)
	_ Sink = (*LocalSink)(nil)
)

// LocalSink writes pages to an images directory with internal/images, the
// local counterpart of TaskSink.
type LocalSink struct {
	w   *images.PageWriter
	err error
}

// NewLocalSink creates pagemapName (images.PagemapImg / PagemapShmemImg)
// and pages-<pagesID>.img in d.
func NewLocalSink(d *images.Dir, pagemapName string, pagesID uint32) (*LocalSink, error) {
	w, err := images.CreatePages(d, pagemapName, pagesID)
	if err != nil {
		return nil, err
	}
	return &LocalSink{w: w}, nil
}

// AddPages records the range and, with FlagPresent, copies nr pages from
// src (a pipe or socket *os.File is spliced by the kernel).
func (s *LocalSink) AddPages(vaddr, nr uint64, flags uint32, src io.Reader) error {
	if s.err != nil {
		return s.err
	}
	if err := s.w.Add(vaddr, nr, flags); err != nil {
		return err
	}
	if flags&FlagPresent == 0 {
		return nil
	}
	if src == nil {
		return s.fail(errors.New("images: no page source"))
	}
	n := int64(nr * PageSize)
	var got int64
	var err error
	if f, ok := src.(*os.File); ok {
		got, err = s.w.ReadFrom(io.LimitReader(f, n))
	} else {
		got, err = io.Copy(s.w, io.LimitReader(src, n))
	}
	if err == nil && got < n {
		err = fmt.Errorf("source ended after %d of %d bytes", got, n)
	}
	if err != nil {
		return s.fail(fmt.Errorf("images: pages at %#x: %w", vaddr, err))
	}
	return nil
}

// Hole records pages kept in the parent images.
func (s *LocalSink) Hole(vaddr, nr uint64) error {
	if s.err != nil {
		return s.err
	}
	return s.w.Add(vaddr, nr, images.PageInParent)
}

// Close completes the images (or abandons them after an error).
func (s *LocalSink) Close() error {
	if s.err != nil {
		s.w.Abort()
		return s.err
	}
	return s.w.Close()
}

func (s *LocalSink) fail(err error) error {
	s.err = err
	return err
}
