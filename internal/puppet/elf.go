package puppet

import "encoding/binary"

// The stub is a static x86-64 ELF executable we lay out byte by byte: an
// ELF header, two program headers (PT_LOAD for the code, PT_GNU_STACK so the
// stack is not executable and no READ_IMPLIES_EXEC personality is implied),
// and this code:
//
//	top:   mov  eax, 0        ; read(LifelineFD, rsp, 1)
//	       mov  edi, LifelineFD
//	       mov  rsi, rsp
//	       mov  edx, 1
//	       syscall
//	       test rax, rax
//	       je   die           ; EOF: godwit is gone
//	       cmp  rax, -EBADF
//	       jne  top           ; interrupted, restarted: block again
//	pause: mov  eax, 34       ; lifeline closed (fds being restored): pause()
//	       syscall
//	       jmp  pause
//	die:   mov  eax, 231      ; exit_group(1)
//	       mov  edi, 1
//	       syscall
//	inj:   syscall            ; <- injection point
//	       jmp  top
//
// The stub blocks reading its lifeline, the read end of a pipe whose only
// write end godwit holds (close-on-exec): when godwit dies, however, the
// read returns EOF and every puppet and task cloned from one exits. That
// matters while a task is handed between tracer threads (Release, Adopt):
// untraced then, it is outside PTRACE_O_EXITKILL, and only the first
// puppet has a parent-death signal. Nothing is ever written to the pipe, so
// the one-byte buffer at rsp is never touched.
//
// It never stops itself: os.StartProcess returns only after the exec has
// succeeded (it waits for the close-on-exec error pipe), so when we seize
// and interrupt it the stub is already running this loop, either just
// before the read or blocked inside it (then the kernel backs out with
// -ERESTARTSYS, which injection preserves). Injection uses its own syscall
// instruction (inj), followed by a jump to the top: a task forked there
// (clone3 returns 0 in the child, which must not read as EOF), or a puppet
// resumed by accident, blocks on the lifeline again.

const (
	elfHeaderSize  = 64
	progHeaderSize = 56
	numProgHeaders = 2
	codeOffset     = elfHeaderSize + numProgHeaders*progHeaderSize // 0xb0

	// SyscallOffset is the offset of the injection syscall instruction
	// from the load address.
	SyscallOffset = codeOffset + 53
	// NameOffset is the offset of Comm, NUL-terminated, in the image
	// (the kernel names a task exec'd from /proc/self/fd/N "N"; the
	// puppet is renamed with an injected prctl(PR_SET_NAME) pointing here).
	NameOffset = codeOffset + 64

	// LifelineFD is the stub's descriptor of its lifeline. Any number
	// is safe: the files driver closes every descriptor of a puppet
	// (close_range from 0) before it restores a task's fd table, so
	// the lifeline is never visible to the restored program.
	LifelineFD = 3
)

// Comm is the puppet's task name.
const Comm = "godwit-puppet"

var stubCode = []byte{
	0xb8, 0x00, 0x00, 0x00, 0x00, //  0 top: mov eax, SYS_read
	0xbf, LifelineFD, 0x00, 0x00, 0x00, //  5 mov edi, LifelineFD
	0x48, 0x89, 0xe6, // 10 mov rsi, rsp
	0xba, 0x01, 0x00, 0x00, 0x00, // 13 mov edx, 1
	0x0f, 0x05, // 18 syscall
	0x48, 0x85, 0xc0, // 20 test rax, rax
	0x74, 0x0f, // 23 je die (40)
	0x48, 0x83, 0xf8, 0xf7, // 25 cmp rax, -EBADF
	0x75, 0xe1, // 29 jne top (0)
	0xb8, 0x22, 0x00, 0x00, 0x00, // 31 pause: mov eax, SYS_pause
	0x0f, 0x05, // 36 syscall
	0xeb, 0xf7, // 38 jmp pause (31)
	0xb8, 0xe7, 0x00, 0x00, 0x00, // 40 die: mov eax, SYS_exit_group
	0xbf, 0x01, 0x00, 0x00, 0x00, // 45 mov edi, 1
	0x0f, 0x05, // 50 syscall
	0x90,       // 52 nop
	0x0f, 0x05, // 53 inj: syscall
	0xeb, 0xc7, // 55 jmp top (0)
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
