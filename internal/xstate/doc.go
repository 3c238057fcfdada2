// Package xstate converts between the raw x86 XSAVE buffer that
// PTRACE_GETREGSET/SETREGSET NT_X86_XSTATE use and CRIU's
// user_x86_fpregs_entry (with its xsave extension): ToCRIU for the dumper,
// FromCRIU for the restorer. Both directions share one layout.
package xstate
