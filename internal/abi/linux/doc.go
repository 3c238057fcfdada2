// Package linux holds the Linux kernel ABI (constants and structure
// layouts) that godwit needs and golang.org/x/sys/unix lacks. Each file is
// named after the kernel header it comes from; arch-specific parts live in
// _amd64.go files. Anything x/sys/unix defines is used from there instead.
// Mechanism-owned ABI stays with its mechanism (internal/ptrace, uffd,
// kerndat's sock_diag).
package linux
