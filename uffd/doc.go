// Package uffd binds userfaultfd(2) and the PAGEMAP_SCAN ioctl for godwit:
// opening and negotiating a userfaultfd (in this process, or one created in
// another process and passed by SCM_RIGHTS, pidfd_getfd or syscall
// injection), registering ranges, resolving faults (COPY, ZEROPAGE, WAKE,
// WRITEPROTECT, CONTINUE, MOVE, POISON), reading faults and non-cooperative
// events (FORK, REMAP, REMOVE, UNMAP) in an epoll loop, dirty-page tracking of
// another process without soft-dirty (Tracker: WP_ASYNC + PAGEMAP_SCAN), and
// the kernel probe behind `godwit check` (Probe).
//
// Linux only.
package uffd
