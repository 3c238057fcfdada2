package pageserver

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
)

// What one session may do to the images directory, and how long a peer
// may keep the server waiting.
//
// Images are never replaced. CRIU's own page server opens images with
// O_TRUNC, so a re-dump into the same directory overwrites the previous
// one; over a network that lets any peer replace a finished dump, which a
// restore would then trust. godwit refuses instead: an OPEN of a pagemap
// that exists (finished by another session, or left by an earlier dump)
// fails naming the file, and pages-<id>.img numbers already taken are
// skipped. Iterative dumps go into fresh directories linked with
// --prev-images-dir, as CRIU recommends anyway.

const (
	// dataChunk is how much page data must arrive within ReadTimeout.
	dataChunk = 4 << 20
	// maxIDProbes bounds the search for a free pages-<id>.img number.
	maxIDProbes = 4096
)

// MemoryBound is the most memory (bytes) the server's connections hold
// for buffers: per connection the QUIC receive window (TCP: the kernel's
// socket buffers, not counted here) and, per session (one per TCP
// connection, up to maxStreamsPerConn per QUIC connection), a read buffer
// and a copy buffer.
func (c Config) MemoryBound() int64 {
	conns := int64(c.MaxConns)
	if conns <= 0 {
		conns = defaultMaxConns
	}
	return conns * (quicConnWindow + maxStreamsPerConn*(copyBufSize+readBufSize))
}

// maxAddPages bounds the pages one ADD may carry (256 MiB). CRIU's ADDs
// are one page-pipe iovec each, bounded by the pipe size (fs.pipe-max-size,
// 1 MiB by default); godwit's client splits larger ranges. Entries without
// data (holes, lazy, zero) are not bounded. A variable for tests only.
var maxAddPages uint64 = 1 << 16

// deadliner is a net.Conn or a QUIC stream.
type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

func (ss *session) readWithin(d time.Duration) {
	if ss.dl != nil {
		ss.dl.SetReadDeadline(time.Now().Add(d))
	}
}

func (ss *session) writeWithin(d time.Duration) {
	if ss.dl != nil {
		ss.dl.SetWriteDeadline(time.Now().Add(d))
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// createImages reserves two files against MaxFiles and creates the
// pagemap and a pages file exclusively, mode 0600 (the umask may only
// narrow it). It returns the pages id. The files are empty:
// images.CreatePages then writes them.
func (s *Server) createImages(pagemap string) (uint32, error) {
	if n := s.files.Add(2); n > int64(s.cfg.MaxFiles) {
		s.files.Add(-2)
		return 0, reqErr(reasonQuota, fmt.Errorf("the server's limit of %d image files is reached (--max-files)", s.cfg.MaxFiles))
	}
	f, err := s.dir.OpenFile(pagemap, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
	if err != nil {
		s.files.Add(-2)
		if errors.Is(err, unix.EEXIST) {
			return 0, reqErr(reasonExists, fmt.Errorf("%s exists: a page server never replaces images (dump into an empty directory)", pagemap))
		}
		return 0, reqErr(reasonIO, err)
	}
	f.Close()
	for range maxIDProbes {
		id := s.nextID.Add(1) - 1
		f, err := s.dir.OpenFile(images.PagesImg(id), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			s.dir.Remove(pagemap)
			s.files.Add(-2)
			return 0, reqErr(reasonIO, err)
		}
		f.Close()
		return id, nil
	}
	s.dir.Remove(pagemap)
	s.files.Add(-2)
	return 0, reqErr(reasonIO, fmt.Errorf("no free pages image number after %d tries", maxIDProbes))
}

// removeImages deletes a task's images and returns its quota.
func (s *Server) removeImages(t *task) {
	s.dir.Remove(t.name)
	s.dir.Remove(t.pagesN)
	s.files.Add(-2)
	s.bytes.Add(-t.bytes)
}

// pagemapEntryMax bounds the bytes one ADD adds to a pagemap image: the
// 4-byte size prefix of an image entry and a pagemap_entry (images/
// pagemap.proto) with vaddr < 2^57 (tag + 9-byte varint), compat_nr_pages
// (tag + 5), flags (tag + 5) and nr_pages (tag + 9). ADDs without data
// (lazy, parent, zero) write nothing else, so each is charged this much
// against MaxBytes: else a million of them grow the pagemap unbounded.
const pagemapEntryMax = 4 + 10 + 6 + 6 + 10

// chargeBytes reserves n bytes of images against MaxBytes.
func (s *Server) chargeBytes(t *task, n int64) error {
	if s.cfg.MaxBytes > 0 {
		if s.bytes.Add(n) > s.cfg.MaxBytes {
			s.bytes.Add(-n)
			return reqErr(reasonQuota, fmt.Errorf("the server's limit of %d bytes of images is reached (--max-bytes)", s.cfg.MaxBytes))
		}
	} else {
		s.bytes.Add(n)
	}
	t.bytes += n
	return nil
}
