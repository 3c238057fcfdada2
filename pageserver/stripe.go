package pageserver

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"sync"
	"time"

	"godwit/internal/images"
	"godwit/pageserver/internal/wire"
)

// Striped pagemaps (godwit's own commands, wire.CmdOpenStripe etc.): a
// client that stripes its pages over several connections (one TLS stream
// is bound by one core's AES-GCM) sends each pagemap entry on any of them
// with its place in the pagemap (seq) and, for present pages, its place in
// the pages file (page_off). Every connection joins the pagemap; the
// entries' data are written at their offsets as they arrive, and the
// pagemap is written, in seq order, when every connection has ended its
// part (END_STRIPE): the images are then the ones a single connection
// would have written, or none.

// MaxStreams bounds the connections of one striped client (the server's
// default MaxConnsPerPeer).
const MaxStreams = defaultMaxConnsPerPeer

// stripeWait bounds how long a CLOSE waits for the other connections of
// its striped pagemaps to end their parts.
var stripeWait = 2 * time.Minute

// stripe is one pagemap written by several sessions.
type stripe struct {
	s       *Server
	t       *task
	pages   *os.File // t.pw's pages file, written at offsets
	streams int
	owner   string // stripeOwner of the creating session

	mu        sync.Mutex
	joined    int
	ended     int
	ents      map[uint64]stripeEnt // by seq
	held      int64                // entries counted in s.stripeEnts
	total     uint64               // entries and present pages announced by END_STRIPE
	present   uint64
	announced bool
	finished  bool
	err       error
	done      chan struct{} // closed once finished
}

type stripeEnt struct {
	vaddr, nr, off uint64
	flags          uint16
	// copyOf+1 is the first page of the pages file this entry's data
	// copies (COPY_AT), done at commit; 0: none.
	copyOf uint64
}

// stripeEntRAM bounds the heap one held entry takes (a map slot: key,
// value and the map's own overhead, measured about 85 B). It is charged
// against MaxBytes instead of pagemapEntryMax (which it exceeds), so that
// the bound covers the memory as well as the pagemap written from it.
const stripeEntRAM = 104

// openStripe joins session ss to the striped pagemap of dst written over
// n connections, creating its images on the first join. It reports
// whether the parent images hold that pagemap.
func (ss *session) openStripe(dst, n uint64) (bool, error) {
	if n < 2 || n > MaxStreams {
		return false, reqErr(reasonRange, fmt.Errorf("%d connections for one pagemap (2 to %d)", n, MaxStreams))
	}
	norm, name, err := pagemapName(dst)
	if err != nil {
		return false, err
	}
	if err := ss.commitTask(); err != nil {
		return false, err
	}
	for st := range ss.stripes {
		if st.t.dst == norm {
			return false, reqErr(reasonConflict, fmt.Errorf("dst_id %#x joined twice on one connection", dst))
		}
	}
	s := ss.s
	s.stripeMu.Lock()
	st := s.stripes[norm]
	if st == nil {
		if st, err = s.newStripe(norm, name, int(n), ss.peer); err != nil {
			s.stripeMu.Unlock()
			return false, err
		}
		st.owner = ss.owner
		s.stripes[norm] = st
	}
	// st.mu is taken without stripeMu: finish takes them the other way.
	s.stripeMu.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case st.owner != ss.owner:
		return false, reqErr(reasonConflict, fmt.Errorf("dst_id %#x is striped by another peer", dst))
	case st.finished:
		return false, reqErr(reasonConflict, fmt.Errorf("dst_id %#x: striped pagemap already ended", dst))
	case uint64(st.streams) != n:
		return false, reqErr(reasonConflict, fmt.Errorf("dst_id %#x striped over %d connections, not %d", dst, st.streams, n))
	case st.joined >= st.streams:
		return false, reqErr(reasonConflict, fmt.Errorf("dst_id %#x: all %d connections joined already", dst, st.streams))
	}
	st.joined++
	if ss.stripes == nil {
		ss.stripes = map[*stripe]bool{}
	}
	ss.stripes[st] = false
	return st.t.parent != nil, nil
}

// newStripe creates the images of a striped pagemap. The caller holds
// s.stripeMu.
func (s *Server) newStripe(norm uint64, name string, n int, peer string) (*stripe, error) {
	if err := s.claim(norm, peer); err != nil {
		return nil, reqErr(reasonConflict, err)
	}
	id, err := s.createImages(name)
	if err != nil {
		s.unclaim(norm)
		return nil, err
	}
	t := &task{dst: norm, name: name, pagesN: images.PagesImg(id)}
	if t.pw, err = images.CreatePages(s.dir, name, id); err != nil {
		s.removeImages(t)
		s.unclaim(norm)
		return nil, reqErr(reasonIO, err)
	}
	if pd, err := s.dir.OpenSubdir(parentLink); err == nil {
		if pd.Exists(name) {
			if pr, err := images.OpenPages(pd, name); err != nil {
				s.log.Warnf("page-server: %s: parent of %s unreadable, dumping without it: %v", peer, name, err)
			} else {
				t.parent = pr
			}
		}
		pd.Close()
	}
	s.log.Debugf("page-server: %s: opened %s striped over %d connections (pages %s, parent %v)", peer, name, n, t.pagesN, t.parent != nil)
	return &stripe{s: s, t: t, pages: t.pw.PagesFile(), streams: n, ents: map[uint64]stripeEnt{}, done: make(chan struct{})}, nil
}

// stripeOwner names a striped client for its joins: its IP address (its
// connections come from several ports) and, under TLS, the fingerprint of
// its certificate. Only the creator of a striped pagemap may join it:
// another peer's entries would go into its images.
func stripeOwner(a net.Addr, certs []*x509.Certificate) string {
	ip := a.String()
	switch a := a.(type) {
	case *net.TCPAddr:
		ip = a.IP.String()
	case *net.UDPAddr:
		ip = a.IP.String()
	}
	if len(certs) == 0 {
		return ip
	}
	return fmt.Sprintf("%s %x", ip, sha256.Sum256(certs[0].Raw))
}

// joined is the stripe of dst this session joined and has not ended.
func (ss *session) joinedStripe(dst uint64) (*stripe, error) {
	norm, _, err := pagemapName(dst)
	if err != nil {
		return nil, err
	}
	for st, ended := range ss.stripes {
		if st.t.dst == norm {
			if ended {
				return nil, reqErr(reasonConflict, fmt.Errorf("dst_id %#x: this connection ended its part", dst))
			}
			return st, nil
		}
	}
	return nil, reqErr(reasonConflict, fmt.Errorf("dst_id %#x: no OPEN_STRIPE on this connection", dst))
}

// addAt serves ADD_AT: the entry is recorded at its seq, its data written
// at its offset in the pages file. ZERO_AT's pages stay a hole of the
// file, COPY_AT's are copied at commit, when every source page is there.
func (ss *session) addAt(h wire.Header) error {
	cmd := h.Command()
	var ext [wire.StripeExtSize + wire.CopyExtSize]byte
	extLen := wire.StripeExtSize
	if cmd == wire.CmdCopyAt {
		extLen += wire.CopyExtSize
	}
	ss.readWithin(ss.s.cfg.ReadTimeout)
	if _, err := io.ReadFull(ss.rd, ext[:extLen]); err != nil {
		return reqErr(reasonHeader, fmt.Errorf("read %s extension: %w", wire.CommandName(cmd), err))
	}
	seq, off := binary.NativeEndian.Uint64(ext[0:]), binary.NativeEndian.Uint64(ext[8:])
	flags := h.Flags()
	if !wire.ValidFlags(flags) {
		return reqErr(reasonRange, fmt.Errorf("bad pagemap flags %#x", flags))
	}
	var copyOf uint64
	if cmd != wire.CmdAddAt {
		if flags&wire.FlagPresent == 0 {
			return reqErr(reasonRange, fmt.Errorf("bad pagemap flags %#x (PRESENT needed)", flags))
		}
		if cmd == wire.CmdCopyAt {
			src := binary.NativeEndian.Uint64(ext[16:])
			if src > off || h.NrPages > off-src {
				return reqErr(reasonRange, fmt.Errorf("COPY_AT of %d pages from page %d to page %d: the source must lie before", h.NrPages, src, off))
			}
			copyOf = src + 1
		}
	}
	if err := checkRange(h.Vaddr, h.NrPages); err != nil {
		return err
	}
	present := flags&wire.FlagPresent != 0
	if present && h.NrPages > maxAddPages {
		return reqErr(reasonRange, fmt.Errorf("%d pages in one request (at most %d)", h.NrPages, maxAddPages))
	}
	if present && (off >= maxUserAddr/wire.PageSize || h.NrPages > maxUserAddr/wire.PageSize-off) {
		return reqErr(reasonRange, fmt.Errorf("page offset %d + %d pages out of range", off, h.NrPages))
	}
	if !present {
		off = 0
	}
	st, err := ss.joinedStripe(h.DstID)
	if err != nil {
		return err
	}
	if flags&wire.FlagParent != 0 && st.t.parent != nil {
		if err := holeInParent(st.t.parent, h.Vaddr, h.NrPages); err != nil {
			return reqErr(reasonParent, err)
		}
	}
	var n int64
	if present {
		n, _ = h.Bytes() // checkRange bounded it
	}
	if err := st.record(seq, stripeEnt{vaddr: h.Vaddr, nr: h.NrPages, off: off, flags: flags, copyOf: copyOf}, n); err != nil {
		return err
	}
	if cmd != wire.CmdAddAt {
		ss.s.m.addPages("in", h.NrPages)
		return nil
	}
	if !present {
		if flags&wire.FlagParent != 0 {
			ss.s.m.addPages("hole", h.NrPages)
		}
		return nil
	}
	if ss.buf == nil {
		ss.buf = make([]byte, copyBufSize)
	}
	pos := int64(off * wire.PageSize)
	for left := n; left > 0; {
		k := min(left, int64(len(ss.buf)))
		ss.readWithin(ss.s.cfg.ReadTimeout)
		got, err := io.ReadFull(ss.rd, ss.buf[:k])
		if got > 0 {
			if _, werr := st.pages.WriteAt(ss.buf[:got], pos); werr != nil {
				return reqErr(reasonIO, fmt.Errorf("write %s: %w", st.t.pagesN, werr))
			}
			pos += int64(got)
			left -= int64(got)
			ss.s.m.addBytes("in", int64(got))
		}
		if err != nil {
			if isTimeout(err) {
				return reqErr(reasonIdle, fmt.Errorf("page data slower than %d bytes in %v: dropping the peer", k, ss.s.cfg.ReadTimeout))
			}
			return reqErr(reasonTruncated, fmt.Errorf("stream ended after %d of %d bytes of pages: %w", n-left, n, err))
		}
	}
	ss.s.m.addPages("in", h.NrPages)
	return nil
}

// record notes entry e at seq, charging it (and its n bytes of data)
// against MaxBytes.
func (st *stripe) record(seq uint64, e stripeEnt, n int64) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.finished {
		return reqErr(reasonConflict, errors.New("striped pagemap already ended"))
	}
	if _, dup := st.ents[seq]; dup {
		return reqErr(reasonRange, fmt.Errorf("entry %d sent twice", seq))
	}
	s := st.s
	if s.stripeEnts.Add(1) > s.cfg.MaxStripeEntries {
		s.stripeEnts.Add(-1)
		return reqErr(reasonQuota, fmt.Errorf("the server's limit of %d striped pagemap entries held until END_STRIPE is reached", s.cfg.MaxStripeEntries))
	}
	if err := s.chargeBytes(st.t, stripeEntRAM+n); err != nil {
		s.stripeEnts.Add(-1)
		return err
	}
	st.held++
	st.ents[seq] = e
	return nil
}

// endStripe serves END_STRIPE: this session's part of the pagemap is
// complete; the last part to end writes the pagemap.
func (ss *session) endStripe(h wire.Header) error {
	st, err := ss.joinedStripe(h.DstID)
	if err != nil {
		return err
	}
	ss.stripes[st] = true
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.finished {
		return reqErr(reasonConflict, errors.New("striped pagemap already ended"))
	}
	if st.announced && (st.total != h.NrPages || st.present != h.Vaddr) {
		return reqErr(reasonRange, fmt.Errorf("END_STRIPE: %d entries, %d pages; another connection said %d, %d", h.NrPages, h.Vaddr, st.total, st.present))
	}
	st.total, st.present, st.announced = h.NrPages, h.Vaddr, true
	if st.ended++; st.ended == st.streams {
		st.finish(st.commit())
	}
	return nil
}

// commit writes the pagemap in seq order and checks that the entries and
// their data are exactly what a single stream would have made. The caller
// holds st.mu.
func (st *stripe) commit() error {
	t := st.t
	if uint64(len(st.ents)) != st.total {
		return fmt.Errorf("%s: %d entries arrived, %d announced", t.name, len(st.ents), st.total)
	}
	var off uint64
	for seq := uint64(0); seq < st.total; seq++ {
		e, ok := st.ents[seq]
		if !ok {
			return fmt.Errorf("%s: entry %d missing", t.name, seq)
		}
		if e.flags&wire.FlagPresent != 0 {
			if e.off != off {
				return fmt.Errorf("%s: entry %d at page %d of the pages file, expected %d", t.name, seq, e.off, off)
			}
			off += e.nr
		}
		if err := t.pw.Add(e.vaddr, e.nr, uint32(e.flags)); err != nil {
			return err
		}
	}
	if off != st.present {
		return fmt.Errorf("%s: %d present pages, %d announced", t.name, off, st.present)
	}
	// Zero pages at the end are a hole the file must still cover (and
	// copies may read).
	if fi, err := st.pages.Stat(); err != nil {
		return fmt.Errorf("%s: %w", t.pagesN, err)
	} else if want := int64(st.present) * wire.PageSize; fi.Size() < want {
		if err := st.pages.Truncate(want); err != nil {
			return fmt.Errorf("%s: %w", t.pagesN, err)
		}
	}
	// Copies in file order: a source (wholly before its copy) holds its
	// final data by then, whatever entry wrote it.
	for seq := uint64(0); seq < st.total; seq++ {
		if e := st.ents[seq]; e.copyOf != 0 {
			if err := copyPages(st.pages, int64(e.copyOf-1)*wire.PageSize, int64(e.off)*wire.PageSize, int64(e.nr)*wire.PageSize); err != nil {
				return fmt.Errorf("%s: entry %d: %w", t.name, seq, err)
			}
		}
	}
	return t.pw.Close()
}

// copyPages copies n bytes of f from offset from to offset to (from+n <=
// to) through a bounded buffer.
func copyPages(f *os.File, from, to, n int64) error {
	buf := make([]byte, min(n, copyBufSize))
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.ReadAt(buf[:k], from); err != nil {
			return fmt.Errorf("copy pages from %d: %w", from, err)
		}
		if _, err := f.WriteAt(buf[:k], to); err != nil {
			return fmt.Errorf("copy pages to %d: %w", to, err)
		}
		from, to, n = from+k, to+k, n-k
	}
	return nil
}

// finish ends the stripe with err (nil: its images are complete). The
// caller holds st.mu.
func (st *stripe) finish(err error) {
	if st.finished {
		return
	}
	st.finished, st.err = true, err
	t := st.t
	if t.parent != nil {
		t.parent.Close()
	}
	if err != nil {
		t.pw.Abort()
		st.s.removeImages(t)
		st.s.log.Warnf("page-server: dropped striped %s and %s: %v", t.name, t.pagesN, err)
	}
	st.ents = nil
	st.s.stripeEnts.Add(-st.held)
	st.held = 0
	st.s.unclaim(t.dst)
	st.s.stripeMu.Lock()
	if st.s.stripes[t.dst] == st {
		delete(st.s.stripes, t.dst)
	}
	st.s.stripeMu.Unlock()
	close(st.done)
}

// closeStripes waits, on CLOSE, until every striped pagemap this session
// joined is complete: every connection ended its part.
func (ss *session) closeStripes() error {
	var errs []error
	for st, ended := range maps.Clone(ss.stripes) {
		if !ended {
			st.fail(errors.New("CLOSE before END_STRIPE"))
		}
		t := time.NewTimer(stripeWait)
		select {
		case <-st.done:
		case <-t.C:
			st.fail(fmt.Errorf("the other connections did not end their parts within %v", stripeWait))
		}
		t.Stop()
		if st.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", st.t.name, st.err))
		}
		delete(ss.stripes, st)
	}
	return errors.Join(errs...)
}

// dropStripes fails the striped pagemaps of a session that ended without
// CLOSE: no connection's part may be missing from a pagemap.
func (ss *session) dropStripes(why error) {
	if why == nil {
		why = errors.New("no CLOSE")
	}
	for st := range ss.stripes {
		st.fail(fmt.Errorf("a connection's session ended: %w", why))
	}
	ss.stripes = nil
}

func (st *stripe) fail(err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.finish(err)
}
