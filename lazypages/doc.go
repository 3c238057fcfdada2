// Package lazypages is godwit's lazy-pages daemon (post-copy restore).
//
// `restore --lazy-pages` maps the lazy VMAs of a task (private anonymous
// memory that is no stack: CRIU's rule) without filling them, registers
// them in MISSING mode with a userfaultfd made inside the task, and hands
// that uffd over the socket lazy-pages.socket in the work directory
// (uffd.Handoff). The daemon (Run) then serves the task: an isolated
// fault gets its page, a sequential reader's faults windows of the same
// pagemap entry growing from FaultPages pages, a page the dump did not
// hold gets UFFDIO_ZEROPAGE, and the rest is pushed in the background in
// address order. It follows the task's mm: fork (the child
// is served from the same dump), mremap (pages still missing move with
// their range), madvise(DONTNEED) and munmap (those pages are no longer
// owed). Data comes from the pages images in -D, or with --page-server
// from a page server's GET (`page-server --lazy-pages`, or `dump
// --lazy-pages` on the dumping host); once every page is in, the daemon
// closes the page-server session with CLOSE, which tells the source it
// may go.
//
// The data path, with a page server: 2 + PushConns connections. The
// fault loop, on a thread of its own that asks the scheduler for a short
// slice (it preempts the push's threads when a fault wakes it), asks the
// faulting page alone on the first connection and copies it as soon as it
// is in. On plain TCP every connection is a blocking socket whose
// receives time out by SO_RCVTIMEO (pageserver.Client.BlockingGets): a
// fault costs one send and one readv on that thread, woken by the kernel
// when the reply comes, and a pushed run one recv; the rest of a
// sequential reader's window goes on the second, asked and copied by the
// neighbour goroutine (a fault on those pages meanwhile waits for that
// copy). The background push keeps requests in flight on the others (a
// planner, a receiving thread per connection, a copier) and steps aside,
// off the daemon's lock and off the CPU, while faults are being served.
// The page server reads a lazy session's requests on the session's own
// thread, outside Go's poller, one blocking read each, and answers GET
// from its pages files on plain TCP: a reply of up to 16 pages (a
// fault's) read and written with its header in one send, a larger one
// with sendfile.
//
// The push cannot go below two copies per page: TCP's receive copy, then
// UFFDIO_COPY. TCP_ZEROCOPY_RECEIVE would map the received pages instead
// of copying them, but measured here (Linux 6.18, loopback, 1 MiB
// replies sent with sendfile from tmpfs, as the page server does) it
// mapped no page at all: every call reported the whole segment as to be
// read with recv. No kernel path moves pipe or socket pages into another
// process's missing memory either.
// BenchmarkLazyRestore measures that floor (recv + UFFDIO_COPY) in the
// same run.
//
// Post-copy cannot survive losing its source: if the page server goes
// away, or the daemon itself dies, the pages still missing can never come.
// The daemon then kills the tasks with an error naming the missing range;
// if the daemon is killed, a guard process it started (holding a copy of
// every uffd, so that the kernel never falls back to zero-filling the
// missing pages) kills them. Nothing is left waiting on a fault.
package lazypages
