package puppet

import "encoding/binary"

// The stub is a static x86-64 ELF executable we lay out byte by byte: an
// ELF header, two program headers (PT_LOAD for the code, PT_GNU_STACK so the
// stack is not executable and no READ_IMPLIES_EXEC personality is implied),
// and nine bytes of code:
//
//	loop: mov  eax, 34   ; b8 22 00 00 00   pause()
//	      syscall        ; 0f 05            <- injection point
//	      jmp  loop      ; eb f7
//
// It never stops itself: os.StartProcess returns only after the exec has
// succeeded (it waits for the close-on-exec error pipe), so when we seize
// and interrupt it the stub is already running this loop, either just
// before pause or blocked inside it (then the kernel backs out with
// -ERESTARTNOHAND, which injection preserves). After an injected syscall
// the instruction pointer lands on the jmp, so a puppet or a forked copy
// that is resumed by accident just pauses again.

const (
	elfHeaderSize  = 64
	progHeaderSize = 56
	numProgHeaders = 2
	codeOffset     = elfHeaderSize + numProgHeaders*progHeaderSize // 0xb0

	// SyscallOffset is the offset of the syscall instruction from the
	// load address.
	SyscallOffset = codeOffset + 5
	// NameOffset is the offset of Comm, NUL-terminated, in the image
	// (the kernel names a task exec'd from /proc/self/fd/N "N"; the
	// puppet is renamed with an injected prctl(PR_SET_NAME) pointing here).
	NameOffset = codeOffset + 16
)

// Comm is the puppet's task name.
const Comm = "godwit-puppet"

var stubCode = []byte{
	0xb8, 0x22, 0x00, 0x00, 0x00, // mov eax, SYS_pause
	0x0f, 0x05, // syscall
	0xeb, 0xf7, // jmp -9
}

// ELF header and program header constants, from include/uapi/linux/elf.h.
const (
	etExec      = 2
	emX86_64    = 62
	ptLoad      = 1
	ptGNUStack  = 0x6474e551
	pfX         = 1
	pfW         = 2
	pfR         = 4
	elfClass64  = 2
	elfData2LSB = 1
	evCurrent   = 1
)

// Image returns the stub executable linked to load at base (page aligned).
func Image(base uint64) []byte {
	size := NameOffset + len(Comm) + 1
	b := make([]byte, size)
	le := binary.LittleEndian
	// e_ident
	copy(b, []byte{0x7f, 'E', 'L', 'F', elfClass64, elfData2LSB, evCurrent})
	le.PutUint16(b[16:], etExec)
	le.PutUint16(b[18:], emX86_64)
	le.PutUint32(b[20:], evCurrent)
	le.PutUint64(b[24:], base+codeOffset) // e_entry
	le.PutUint64(b[32:], elfHeaderSize)   // e_phoff
	le.PutUint64(b[40:], 0)               // e_shoff: no sections
	le.PutUint32(b[48:], 0)               // e_flags
	le.PutUint16(b[52:], elfHeaderSize)
	le.PutUint16(b[54:], progHeaderSize)
	le.PutUint16(b[56:], numProgHeaders)
	le.PutUint16(b[58:], 64) // e_shentsize
	le.PutUint16(b[60:], 0)  // e_shnum
	le.PutUint16(b[62:], 0)  // e_shstrndx

	ph := b[elfHeaderSize:]
	le.PutUint32(ph[0:], ptLoad)
	le.PutUint32(ph[4:], pfR|pfX)
	le.PutUint64(ph[8:], 0)             // p_offset: map the whole file
	le.PutUint64(ph[16:], base)         // p_vaddr
	le.PutUint64(ph[24:], base)         // p_paddr
	le.PutUint64(ph[32:], uint64(size)) // p_filesz
	le.PutUint64(ph[40:], uint64(size)) // p_memsz
	le.PutUint64(ph[48:], 0x1000)       // p_align

	ph = b[elfHeaderSize+progHeaderSize:]
	le.PutUint32(ph[0:], ptGNUStack)
	le.PutUint32(ph[4:], pfR|pfW)
	le.PutUint64(ph[48:], 16)

	copy(b[codeOffset:], stubCode)
	copy(b[NameOffset:], Comm)
	return b
}
