package pageserver

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"godwit/pageserver/internal/wire"
)

// Zero and duplicate pages (TransportOptions.Dedup; godwit's page server
// only): a present page the sender holds in memory (the dumper's readv
// buffers, AddPagesBytes) that is all zero goes as a ZERO record, one
// identical to a page sent before into the same pages file as a COPY of
// it; the server writes the images exactly as if the data had come. A
// striped sink sends ZERO_AT and COPY_AT; the server makes the copies when
// the pagemap ends, once every connection's data landed.
//
// Duplicates are found by SHA-256 of each page sent: the sender no longer
// holds the earlier page's bytes (a byte compare would need them kept, so
// unbounded memory), and a collision would restore a wrong page silently,
// which a fast non-cryptographic hash can't rule out for memory a program
// chose. With SHA-NI it costs about as much as the TLS encryption the page
// saves. The table is bounded (maxDedupPages); once full, later pages are
// still checked against it but no longer added.

// maxDedupPages bounds the hashes one task sink keeps (about 48 bytes
// each with the map's overhead: 6 MiB).
const maxDedupPages = 1 << 17

var zeroPage [PageSize]byte

// dedup is one task sink's record of the pages it sent.
type dedup struct {
	seen map[[sha256.Size]byte]uint64 // page hash -> its page in the pages file
	sent uint64                       // pages in the pages file so far
	// Pages sent as ZERO and COPY records.
	zero, dup uint64
	zeroOnly  bool // TransportOptions.ZeroOnly: no duplicate test
}

func newDedup() *dedup { return &dedup{seen: map[[sha256.Size]byte]uint64{}} }

// pageBuffer is a page source holding its data in memory
// (pagexfer.Chunk): Take returns the next n bytes, fewer at its end.
type pageBuffer interface{ Take(n int) []byte }

// Kinds of a run of pages.
const (
	runData = iota
	runZero
	runCopy
)

// sendDedup sends the present pages data at vaddr as runs of data, ZERO
// and COPY records. Called with the sink's lock held.
func (s *TaskSink) sendDedup(vaddr uint64, flags uint32, data []byte) error {
	d := s.dd
	kind, start, n, ref := -1, 0, uint64(0), uint64(0)
	flush := func() error {
		if n == 0 {
			return nil
		}
		defer func() { n = 0 }()
		va := vaddr + uint64(start)*PageSize
		d.sent += n
		var err error
		switch kind {
		case runData:
			p := data[start*PageSize : start*PageSize+int(n)*PageSize]
			if s.sp != nil {
				return s.stripedData(va, n, flags, nil, p)
			}
			err = s.addBytes(va, flags, p)
		case runZero:
			d.zero += n
			s.c.zeroSent.Add(n)
			if s.sp != nil {
				return s.stripedRef(wire.CmdZeroAt, va, n, flags, 0)
			}
			err = sendHeader(s.w, wire.Header{Cmd: wire.MakeCmd(wire.CmdZero, uint16(flags)), NrPages: n, Vaddr: va, DstID: s.dst})
		case runCopy:
			d.dup += n
			s.c.sameSent.Add(n)
			if s.sp != nil {
				return s.stripedRef(wire.CmdCopyAt, va, n, flags, ref)
			}
			var b [wire.HeaderSize + wire.CopyExtSize]byte
			wire.Header{Cmd: wire.MakeCmd(wire.CmdCopy, uint16(flags)), NrPages: n, Vaddr: va, DstID: s.dst}.Marshal(b[:])
			binary.NativeEndian.PutUint64(b[wire.HeaderSize:], ref)
			_, err = s.w.Write(b[:])
		}
		if err != nil {
			return s.abort(fmt.Errorf("page server: %#x+%d pages: %w", va, n, err))
		}
		return nil
	}
	for i := 0; i < len(data)/PageSize; i++ {
		p := data[i*PageSize : (i+1)*PageSize]
		k, r := runData, uint64(0)
		var h [sha256.Size]byte
		if bytes.Equal(p, zeroPage[:]) { // vectorised memequal
			k = runZero
		} else if !d.zeroOnly {
			h = sha256.Sum256(p)
			if off, ok := d.seen[h]; ok {
				k, r = runCopy, off
			}
		}
		if n > 0 && (k != kind || n == maxAddPages || k == runCopy && r != ref+n) {
			if err := flush(); err != nil {
				return err
			}
		}
		if n == 0 {
			kind, start, ref = k, i, r
		}
		if k == runData && !d.zeroOnly && len(d.seen) < maxDedupPages {
			// Its place in the pages file once this run is flushed.
			d.seen[h] = d.sent + n
		}
		n++
	}
	return flush()
}
