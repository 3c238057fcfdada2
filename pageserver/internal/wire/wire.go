// Package wire is the framing of CRIU's page-server protocol
// (criu/page-xfer.c): a fixed 32-byte page_server_iov header per request,
// page data after ADD requests, small fixed-size replies.
//
// The header is host-endian, as CRIU sends the C struct as is:
//
//	struct page_server_iov { u32 cmd; /* 4 bytes pad */ u64 nr_pages; u64 vaddr; u64 dst_id; };
//
// The low 16 bits of cmd are the command, the high 16 bits the pagemap
// flags of ADD_F. dst_id is id<<8 | type.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HeaderSize is sizeof(struct page_server_iov) on 64-bit hosts.
const HeaderSize = 32

// PageSize is the page size the protocol counts in (x86-64).
const PageSize = 4096

// Commands (PS_IOV_*).
const (
	CmdAdd        = 1 // pages follow, flags PRESENT
	CmdHole       = 2 // no data, flags PARENT
	CmdOpen       = 3 // no reply
	CmdOpen2      = 4 // reply: 1 byte has_parent
	CmdParent     = 5 // reply: int32 (1 parent image exists, 0 not)
	CmdAddF       = 6 // flags in the high 16 bits; pages follow when PRESENT
	CmdGet        = 7 // lazy: reply ADD_F|PRESENT header, then the pages
	CmdClose      = 0x1023
	CmdForceClose = 0x1024
)

// godwit's own commands (no CRIU peer sends them): one pagemap written
// over several connections at once (a striped client). dst_id as OPEN.
const (
	// CmdOpenStripe joins this connection to the striped pagemap of
	// dst_id; nr_pages is the number of connections striping it. Reply:
	// 1 byte has_parent, as OPEN2.
	CmdOpenStripe = 0x2001
	// CmdAddAt is ADD_F (flags in the high 16 bits) followed by a
	// StripeExtSize extension {u64 seq; u64 page_off}: the entry's place
	// in the pagemap and, with PRESENT, its data's place in the pages
	// file (in pages); the data follows when PRESENT.
	CmdAddAt = 0x2002
	// CmdEndStripe ends this connection's part of dst_id's pagemap:
	// nr_pages is the number of entries (seqs) of the whole pagemap,
	// vaddr the number of its present pages. No reply.
	CmdEndStripe = 0x2003
	// CmdZero is ADD_F (PRESENT in the flags) of nr_pages pages the
	// sender found all zero: no data follows, the receiver writes zeros.
	CmdZero = 0x2004
	// CmdCopy is ADD_F (PRESENT in the flags) of nr_pages pages identical
	// to pages sent before in the same pages file: a CopyExtSize
	// extension {u64 page_off} follows, the first source page's place in
	// that file (in pages); no data follows.
	CmdCopy = 0x2005
	// CmdZeroAt is CmdZero on a striped pagemap: the StripeExtSize
	// extension of ADD_AT follows, no data.
	CmdZeroAt = 0x2006
	// CmdCopyAt is CmdCopy on a striped pagemap: ADD_AT's extension and
	// then the first source page's place in the pages file (u64; the
	// source lies wholly before page_off), no data.
	CmdCopyAt = 0x2007
)

// CopyExtSize is the size of CmdCopy's extension.
const CopyExtSize = 8

// StripeExtSize is the size of CmdAddAt's extension.
const StripeExtSize = 16

// Pagemap flags carried in the high 16 bits of cmd (PE_* of pagemap.h).
const (
	FlagParent  = 1
	FlagLazy    = 2
	FlagPresent = 4
	flagsMask   = FlagParent | FlagLazy | FlagPresent
)

const (
	cmdBits  = 16
	cmdMask  = 1<<cmdBits - 1
	typeBits = 8
	typeMask = 1<<typeBits - 1
)

// Destination types (PS_TYPE_*).
const (
	TypePID   = 1 // pagemap-<pid>.img
	TypeShmem = 2 // pagemap-shmem-<shmid>.img
)

// Header is one page_server_iov.
type Header struct {
	Cmd     uint32 // raw: command | flags<<16
	NrPages uint64
	Vaddr   uint64
	DstID   uint64
}

// MakeCmd builds a raw cmd word.
func MakeCmd(cmd uint16, flags uint16) uint32 { return uint32(flags)<<cmdBits | uint32(cmd) }

// Command is the low 16 bits of Cmd.
func (h Header) Command() uint16 { return uint16(h.Cmd & cmdMask) }

// Flags is the high 16 bits of Cmd (meaningful for ADD_F and GET replies).
func (h Header) Flags() uint16 { return uint16(h.Cmd >> cmdBits) }

// Bytes is the page data length the header announces (nr_pages*4096),
// and false when that overflows.
func (h Header) Bytes() (int64, bool) {
	if h.NrPages > (1<<63-1)/PageSize {
		return 0, false
	}
	return int64(h.NrPages * PageSize), true
}

// Marshal encodes h into b (len(b) >= HeaderSize) in host byte order.
func (h Header) Marshal(b []byte) {
	_ = b[HeaderSize-1]
	binary.NativeEndian.PutUint32(b[0:], h.Cmd)
	binary.NativeEndian.PutUint32(b[4:], 0)
	binary.NativeEndian.PutUint64(b[8:], h.NrPages)
	binary.NativeEndian.PutUint64(b[16:], h.Vaddr)
	binary.NativeEndian.PutUint64(b[24:], h.DstID)
}

// ErrShort is returned by Unmarshal for fewer than HeaderSize bytes.
var ErrShort = errors.New("page_server_iov: short header")

// Unmarshal decodes a header. The padding is ignored, as CRIU does (it is
// uninitialised stack memory on some senders).
func Unmarshal(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, ErrShort
	}
	return Header{
		Cmd:     binary.NativeEndian.Uint32(b[0:]),
		NrPages: binary.NativeEndian.Uint64(b[8:]),
		Vaddr:   binary.NativeEndian.Uint64(b[16:]),
		DstID:   binary.NativeEndian.Uint64(b[24:]),
	}, nil
}

// ValidFlags reports whether f is a sensible set of pagemap flags for an
// ADD_F: known bits only, not empty, not PRESENT and PARENT together.
func ValidFlags(f uint16) bool {
	return f != 0 && f&^flagsMask == 0 && f&(FlagPresent|FlagParent) != FlagPresent|FlagParent
}

// EncodeDst makes a dst_id.
func EncodeDst(typ uint8, id uint64) uint64 { return id<<typeBits | uint64(typ) }

// DecodeDst splits a dst_id into type and id. Types of old CRIU versions
// (which sent their CR_FD_* numbers) are mapped as CRIU's decode_pm does;
// an unknown type is an error.
func DecodeDst(dst uint64) (typ uint8, id uint64, err error) {
	id = dst >> typeBits
	switch t := dst & typeMask; t {
	case TypePID, 10, 11, 16, 17:
		return TypePID, id, nil
	case TypeShmem, 27, 28, 29, 32, 33, 34:
		return TypeShmem, id, nil
	default:
		return 0, 0, fmt.Errorf("dst_id %#x: unknown pagemap type %d", dst, t)
	}
}

// CommandName names a command for logs.
func CommandName(c uint16) string {
	switch c {
	case CmdAdd:
		return "ADD"
	case CmdHole:
		return "HOLE"
	case CmdOpen:
		return "OPEN"
	case CmdOpen2:
		return "OPEN2"
	case CmdParent:
		return "PARENT"
	case CmdAddF:
		return "ADD_F"
	case CmdGet:
		return "GET"
	case CmdClose:
		return "CLOSE"
	case CmdForceClose:
		return "FORCE_CLOSE"
	case CmdOpenStripe:
		return "OPEN_STRIPE"
	case CmdAddAt:
		return "ADD_AT"
	case CmdEndStripe:
		return "END_STRIPE"
	case CmdZero:
		return "ZERO"
	case CmdCopy:
		return "COPY"
	case CmdZeroAt:
		return "ZERO_AT"
	case CmdCopyAt:
		return "COPY_AT"
	}
	return fmt.Sprintf("cmd(%#x)", c)
}
