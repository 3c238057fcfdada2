package pageserver

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"godwit/internal/images"
	"godwit/pageserver/internal/wire"
)

var errTooManyFiles = syscall.EMFILE

// requestError is a refused request: the reason labels the error metric.
type requestError struct {
	reason string
	err    error
}

func (e *requestError) Error() string { return e.err.Error() }
func (e *requestError) Unwrap() error { return e.err }

func reqErr(reason string, err error) error { return &requestError{reason, err} }

// session serves the requests of one TCP connection or one QUIC stream.
// It holds at most one open task (pagemap being written), as CRIU's
// page_server_serve does.
type session struct {
	s    *Server
	peer string
	rd   *bufio.Reader
	src  io.Reader    // the unbuffered stream, for page data
	w    io.Writer    // replies
	tcp  *net.TCPConn // set when page data can be spliced to the file
	dl   deadliner    // read and write deadlines of the stream
	buf  []byte       // copy buffer, allocated on first use
	task *task
	// stripes are the striped pagemaps this session joined (true: it
	// ended its part).
	stripes map[*stripe]bool
	// owner names the peer for joining striped pagemaps (stripeOwner;
	// by default its peer string, which no other connection shares).
	owner string
	// taskStream: a QUIC stream of one task, not the connection's
	// control stream (Once counts only the latter).
	taskStream bool
	closed     bool // CLOSE served
}

// task is one pagemap being written.
type task struct {
	dst    uint64 // normalised dst_id
	name   string // pagemap file name
	pw     *images.PageWriter
	pagesN string
	bytes  int64              // image bytes charged to MaxBytes
	parent *images.PageReader // parent's pagemap, for HOLE checks
}

func (s *Server) newSession(peer string, r io.Reader, w io.Writer, tcp *net.TCPConn) *session {
	return &session{s: s, peer: peer, owner: peer, rd: bufio.NewReaderSize(r, readBufSize), src: r, w: w, tcp: tcp}
}

// run serves requests until CLOSE, EOF or an error. A nil error means a
// clean end: CLOSE served, or EOF between requests.
func (ss *session) run() error {
	var hb [wire.HeaderSize]byte
	for {
		ss.readWithin(ss.s.cfg.IdleTimeout)
		n, err := io.ReadFull(ss.rd, hb[:])
		if err != nil {
			if n == 0 && err == io.EOF {
				return nil
			}
			if isTimeout(err) {
				return reqErr(reasonIdle, fmt.Errorf("no complete request within %v: dropping the peer", ss.s.cfg.IdleTimeout))
			}
			if err == io.ErrUnexpectedEOF {
				return reqErr(reasonHeader, fmt.Errorf("truncated request header (%d of %d bytes)", n, wire.HeaderSize))
			}
			return reqErr(reasonHeader, fmt.Errorf("read request: %w", err))
		}
		h, _ := wire.Unmarshal(hb[:])
		cmd := h.Command()
		if known(cmd) {
			ss.s.m.request(wire.CommandName(cmd))
		}
		if err := ss.serve(h); err != nil {
			return fmt.Errorf("%s nr_pages=%d vaddr=%#x dst_id=%#x: %w", wire.CommandName(cmd), h.NrPages, h.Vaddr, h.DstID, err)
		}
		if ss.closed {
			return nil
		}
	}
}

// known bounds the label values of the requests metric.
func known(cmd uint16) bool {
	return cmd >= wire.CmdAdd && cmd <= wire.CmdGet || cmd == wire.CmdClose || cmd == wire.CmdForceClose ||
		cmd >= wire.CmdOpenStripe && cmd <= wire.CmdCopyAt
}

func (ss *session) serve(h wire.Header) error {
	lazy := ss.s.cfg.Lazy
	switch cmd := h.Command(); cmd {
	case wire.CmdOpen, wire.CmdOpen2:
		if lazy {
			return reqErr(reasonCommand, errors.New("this page server only serves GET (lazy pages)"))
		}
		hasParent, err := ss.openTask(h.DstID)
		if err != nil {
			return err
		}
		if cmd == wire.CmdOpen2 {
			var b [1]byte
			if hasParent {
				b[0] = 1
			}
			return ss.reply(b[:])
		}
		return nil
	case wire.CmdParent:
		ok, err := ss.s.parentHas(h.DstID)
		if err != nil {
			return err
		}
		v := int32(0)
		if ok {
			v = 1
		}
		return ss.replyInt32(v)
	case wire.CmdAdd, wire.CmdAddF, wire.CmdHole:
		if lazy {
			return reqErr(reasonCommand, errors.New("this page server only serves GET (lazy pages)"))
		}
		flags := uint16(wire.FlagPresent)
		switch cmd {
		case wire.CmdHole:
			flags = wire.FlagParent
		case wire.CmdAddF:
			flags = h.Flags()
		}
		return ss.add(h, flags)
	case wire.CmdGet:
		if !lazy {
			return reqErr(reasonCommand, errors.New("GET on a page server not started for lazy pages"))
		}
		return ss.get(h)
	case wire.CmdOpenStripe:
		if lazy {
			return reqErr(reasonCommand, errors.New("this page server only serves GET (lazy pages)"))
		}
		hasParent, err := ss.openStripe(h.DstID, h.NrPages)
		if err != nil {
			return err
		}
		var b [1]byte
		if hasParent {
			b[0] = 1
		}
		return ss.reply(b[:])
	case wire.CmdAddAt, wire.CmdZeroAt, wire.CmdCopyAt:
		if lazy {
			return reqErr(reasonCommand, errors.New("this page server only serves GET (lazy pages)"))
		}
		return ss.addAt(h)
	case wire.CmdEndStripe:
		if lazy {
			return reqErr(reasonCommand, errors.New("this page server only serves GET (lazy pages)"))
		}
		return ss.endStripe(h)
	case wire.CmdZero, wire.CmdCopy:
		if lazy {
			return reqErr(reasonCommand, errors.New("this page server only serves GET (lazy pages)"))
		}
		return ss.addRef(h)
	case wire.CmdClose, wire.CmdForceClose:
		status := int32(0)
		err := ss.commitTask()
		if serr := ss.closeStripes(); err == nil {
			err = serr
		}
		if err != nil {
			// The peer learns through the status; the log says why.
			ss.s.m.error(reasonIO)
			ss.s.log.Errorf("page-server: %s: %v", ss.peer, err)
			status = -1
		}
		ss.closed = true
		if lazy && status == 0 {
			ss.s.lazyClosed.Store(true)
		}
		return ss.replyInt32(status)
	default:
		return reqErr(reasonCommand, fmt.Errorf("unknown command %#x", h.Cmd))
	}
}

func (ss *session) reply(b []byte) error {
	ss.writeWithin(ss.s.cfg.ReadTimeout)
	if _, err := ss.w.Write(b); err != nil {
		return reqErr(reasonIO, fmt.Errorf("send reply: %w", err))
	}
	return nil
}

func (ss *session) replyInt32(v int32) error {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], uint32(v))
	return ss.reply(b[:])
}

// pagemapName maps a dst_id to its image name.
func pagemapName(dst uint64) (norm uint64, name string, err error) {
	typ, id, err := wire.DecodeDst(dst)
	if err != nil {
		return 0, "", reqErr(reasonDst, err)
	}
	switch typ {
	case wire.TypePID:
		if id == 0 || id >= maxPID {
			return 0, "", reqErr(reasonDst, fmt.Errorf("dst_id %#x: pid %d out of range", dst, id))
		}
		name = images.PagemapImg(int(id))
	default:
		if id == 0 {
			return 0, "", reqErr(reasonDst, fmt.Errorf("dst_id %#x: shmem id 0", dst))
		}
		name = images.PagemapShmemImg(id)
	}
	return wire.EncodeDst(typ, id), name, nil
}

// openTask closes the open task (as CRIU's page_server_open does) and
// starts writing the pagemap of dst. It reports whether the parent images
// hold that pagemap.
func (ss *session) openTask(dst uint64) (bool, error) {
	norm, name, err := pagemapName(dst)
	if err != nil {
		return false, err
	}
	if err := ss.commitTask(); err != nil {
		return false, err
	}
	if err := ss.s.claim(norm, ss.peer); err != nil {
		return false, reqErr(reasonConflict, err)
	}
	id, err := ss.s.createImages(name)
	if err != nil {
		ss.s.unclaim(norm)
		return false, err
	}
	t := &task{dst: norm, name: name, pagesN: images.PagesImg(id)}
	if t.pw, err = images.CreatePages(ss.s.dir, name, id); err != nil {
		ss.s.removeImages(t)
		ss.s.unclaim(norm)
		return false, reqErr(reasonIO, err)
	}
	if pd, err := ss.s.dir.OpenSubdir(parentLink); err == nil {
		if pd.Exists(name) {
			pr, err := images.OpenPages(pd, name)
			if err != nil {
				// CRIU goes on without a parent in this case too.
				ss.s.log.Warnf("page-server: %s: parent of %s unreadable, dumping without it: %v", ss.peer, name, err)
			} else {
				t.parent = pr
			}
		}
		pd.Close()
	}
	ss.task = t
	ss.s.log.Debugf("page-server: %s: opened %s (pages %s, parent %v)", ss.peer, name, t.pagesN, t.parent != nil)
	return t.parent != nil, nil
}

// commitTask closes the open task's images, which must be complete.
func (ss *session) commitTask() error {
	t := ss.task
	if t == nil {
		return nil
	}
	ss.task = nil
	if t.parent != nil {
		t.parent.Close()
	}
	err := t.pw.Close()
	ss.s.unclaim(t.dst)
	if err != nil {
		ss.s.removeImages(t)
		return reqErr(reasonIO, fmt.Errorf("close %s: %w", t.name, err))
	}
	return nil
}

// dropTask abandons the open task and removes its partial images: a
// restore must not find a pagemap whose pages never arrived.
func (ss *session) dropTask() {
	t := ss.task
	if t == nil {
		return
	}
	ss.task = nil
	if t.parent != nil {
		t.parent.Close()
	}
	t.pw.Abort()
	ss.s.removeImages(t)
	ss.s.unclaim(t.dst)
	ss.s.log.Warnf("page-server: %s: dropped incomplete %s and %s", ss.peer, t.name, t.pagesN)
}

func checkRange(vaddr, nr uint64) error {
	switch {
	case vaddr%wire.PageSize != 0:
		return reqErr(reasonRange, fmt.Errorf("vaddr %#x not page aligned", vaddr))
	case nr == 0:
		return reqErr(reasonRange, errors.New("no pages"))
	case vaddr >= maxUserAddr || nr > (maxUserAddr-vaddr)/wire.PageSize:
		return reqErr(reasonRange, fmt.Errorf("range %#x + %d pages beyond the user address space", vaddr, nr))
	}
	return nil
}

// add records a pagemap entry and receives its pages.
func (ss *session) add(h wire.Header, flags uint16) error {
	if !wire.ValidFlags(flags) {
		return reqErr(reasonRange, fmt.Errorf("bad pagemap flags %#x", flags))
	}
	if err := checkRange(h.Vaddr, h.NrPages); err != nil {
		return err
	}
	if flags&wire.FlagPresent != 0 && h.NrPages > maxAddPages {
		return reqErr(reasonRange, fmt.Errorf("%d pages in one request (at most %d)", h.NrPages, maxAddPages))
	}
	norm, _, err := pagemapName(h.DstID)
	if err != nil {
		return err
	}
	if ss.task == nil || ss.task.dst != norm {
		// CRIU's prep_loc_xfer: "Deprecated IO w/o open".
		ss.s.log.Warnf("page-server: %s: pages for dst_id %#x without OPEN", ss.peer, h.DstID)
		if _, err := ss.openTask(h.DstID); err != nil {
			return err
		}
	}
	t := ss.task
	if flags&wire.FlagParent != 0 && t.parent != nil {
		if err := holeInParent(t.parent, h.Vaddr, h.NrPages); err != nil {
			return reqErr(reasonParent, err)
		}
	}
	// Every entry is charged, even when merged with the previous one: an
	// upper bound of the pagemap's growth.
	if err := ss.s.chargeBytes(t, pagemapEntryMax); err != nil {
		return err
	}
	if err := t.pw.Add(h.Vaddr, h.NrPages, uint32(flags)); err != nil {
		return reqErr(reasonRange, err)
	}
	if flags&wire.FlagPresent == 0 {
		if flags&wire.FlagParent != 0 {
			ss.s.m.addPages("hole", h.NrPages)
		}
		return nil
	}
	n, _ := h.Bytes() // checkRange bounded it
	if err := ss.s.chargeBytes(t, n); err != nil {
		return err
	}
	got, err := ss.receive(t.pw, n)
	ss.s.m.addBytes("in", got)
	if err != nil {
		return err
	}
	ss.s.m.addPages("in", h.NrPages)
	return nil
}

// addRef records present pages whose data the sender did not send: all
// zero (ZERO) or a copy of pages already in this pages file (COPY). The
// images come out as if the data had been sent.
func (ss *session) addRef(h wire.Header) error {
	var src uint64
	if h.Command() == wire.CmdCopy {
		var eb [wire.CopyExtSize]byte
		ss.readWithin(ss.s.cfg.ReadTimeout)
		if _, err := io.ReadFull(ss.rd, eb[:]); err != nil {
			return reqErr(reasonTruncated, fmt.Errorf("COPY extension: %w", err))
		}
		src = binary.NativeEndian.Uint64(eb[:])
	}
	flags := h.Flags()
	if !wire.ValidFlags(flags) || flags&wire.FlagPresent == 0 {
		return reqErr(reasonRange, fmt.Errorf("bad pagemap flags %#x (PRESENT needed)", flags))
	}
	if err := checkRange(h.Vaddr, h.NrPages); err != nil {
		return err
	}
	norm, _, err := pagemapName(h.DstID)
	if err != nil {
		return err
	}
	t := ss.task
	if t == nil || t.dst != norm {
		return reqErr(reasonCommand, fmt.Errorf("%s for dst_id %#x without OPEN", wire.CommandName(h.Command()), h.DstID))
	}
	n, _ := h.Bytes() // checkRange bounded it
	if h.Command() == wire.CmdCopy && (src > uint64(t.pw.Written())/wire.PageSize || h.NrPages > uint64(t.pw.Written())/wire.PageSize-src) {
		// Only pages already written: a peer can't make us read
		// beyond them.
		return reqErr(reasonRange, fmt.Errorf("COPY of %d pages from page %d: only %d pages written", h.NrPages, src, t.pw.Written()/wire.PageSize))
	}
	if err := ss.s.chargeBytes(t, pagemapEntryMax+n); err != nil {
		return err
	}
	if err := t.pw.Add(h.Vaddr, h.NrPages, uint32(flags)); err != nil {
		return reqErr(reasonRange, err)
	}
	if h.Command() == wire.CmdZero {
		err = t.pw.WriteZeros(n)
	} else {
		err = t.pw.CopyWithin(int64(src*wire.PageSize), n)
	}
	if err != nil {
		return reqErr(reasonIO, err)
	}
	ss.s.m.addPages("in", h.NrPages)
	return nil
}

// holeInParent checks that the parent's pagemap covers every page of the
// hole, as CRIU's check_pagehole_in_parent does.
func holeInParent(p *images.PageReader, vaddr, nr uint64) error {
	end := vaddr + nr*wire.PageSize
	for off := vaddr; off < end; {
		e, ok := p.Find(off)
		if !ok {
			return fmt.Errorf("hole %#x-%#x: page %#x missing in the parent pagemap", vaddr, end, off)
		}
		off = e.End()
	}
	return nil
}

// pageSink hides PageWriter.ReadFrom so that io.CopyBuffer uses our buffer.
type pageSink struct{ w io.Writer }

func (p pageSink) Write(b []byte) (int, error) { return p.w.Write(b) }

// receive moves n bytes of page data from the stream to the pages file:
// what the header read buffered first, then splice (TCP) or a bounded
// buffer. Never more than copyBufSize is held.
func (ss *session) receive(pw *images.PageWriter, n int64) (int64, error) {
	var done int64
	if b := ss.rd.Buffered(); b > 0 {
		k := int(min(int64(b), n))
		p, _ := ss.rd.Peek(k)
		w, err := pw.Write(p)
		ss.rd.Discard(w)
		done += int64(w)
		if err != nil {
			return done, reqErr(reasonIO, err)
		}
	}
	for done < n {
		k := min(n-done, dataChunk)
		ss.readWithin(ss.s.cfg.ReadTimeout)
		var m int64
		var err error
		if ss.tcp != nil {
			// os.File.ReadFrom splices from a TCP socket.
			m, err = pw.ReadFrom(io.LimitReader(ss.tcp, k))
		} else {
			if ss.buf == nil {
				ss.buf = make([]byte, copyBufSize)
			}
			m, err = io.CopyBuffer(pageSink{pw}, io.LimitReader(ss.src, k), ss.buf)
		}
		done += m
		if err != nil {
			if isTimeout(err) {
				return done, reqErr(reasonIdle, fmt.Errorf("page data slower than %d bytes in %v: dropping the peer", dataChunk, ss.s.cfg.ReadTimeout))
			}
			return done, reqErr(reasonIO, fmt.Errorf("receive pages: %w", err))
		}
		if m < k {
			break
		}
	}
	if done < n {
		return done, reqErr(reasonTruncated, fmt.Errorf("stream ended after %d of %d bytes of pages", done, n))
	}
	return done, nil
}

// get answers a lazy-pages GET: an ADD_F|PRESENT header echoing the
// request with nr_pages cut to what one pagemap entry holds (0: the images
// don't have these pages), then the data.
func (ss *session) get(h wire.Header) error {
	nr, f, off, err := ss.s.lazy.lookup(h.DstID, h.Vaddr, h.NrPages)
	if err != nil {
		ss.s.m.error(reasonGetMiss)
		ss.s.log.Warnf("page-server: %s: GET %#x+%d of %#x: %v", ss.peer, h.Vaddr, h.NrPages, h.DstID, err)
		nr = 0
	}
	var hb [wire.HeaderSize]byte
	wire.Header{Cmd: wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), NrPages: nr, Vaddr: h.Vaddr, DstID: h.DstID}.Marshal(hb[:])
	if ss.tcp != nil && f != nil {
		if n := int64(nr * wire.PageSize); n <= smallGet {
			return ss.sendSmall(hb[:], f, off, n, nr)
		}
		return ss.sendPages(hb[:], f, off, int64(nr*wire.PageSize), nr)
	}
	if err := ss.reply(hb[:]); err != nil || nr == 0 {
		return err
	}
	if ss.buf == nil {
		ss.buf = make([]byte, copyBufSize)
	}
	left := int64(nr * wire.PageSize)
	for left > 0 {
		k := min(left, int64(len(ss.buf)))
		m, err := ss.s.readLazy(f, h.DstID, off, ss.buf[:k])
		if int64(m) != k {
			// The reply header is out: the stream can't be resynced.
			return reqErr(reasonIO, fmt.Errorf("read pages at %d: %d of %d bytes: %v", off, m, k, err))
		}
		if err := ss.reply(ss.buf[:k]); err != nil {
			return err
		}
		off += k
		left -= k
		ss.s.m.addBytes("out", k)
	}
	ss.s.m.addPages("out", nr)
	return nil
}
