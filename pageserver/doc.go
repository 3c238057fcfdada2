// Package pageserver is godwit's page server and its client: CRIU's
// page-server protocol (criu/page-xfer.c) over TCP, optionally TLS, and
// the same framing over QUIC streams with mutual TLS.
//
// Protocol, as CRIU implements it (checked against page-xfer.c and
// page-xfer.h):
//
//   - Every request is a 32-byte host-endian page_server_iov
//     {u32 cmd; pad; u64 nr_pages; u64 vaddr; u64 dst_id}; see
//     internal/wire. dst_id is id<<8|type (PID=1, SHMEM=2) for
//     OPEN/OPEN2/PARENT/ADD/HOLE.
//   - OPEN (3) starts writing pagemap-<id>.img + pages-<n>.img and
//     closes the previous ones; no reply. OPEN2 (4) does the same and
//     replies one byte, has_parent: the parent images hold that pagemap.
//     ADD/HOLE for a dst that is not open open it implicitly ("deprecated
//     IO w/o open").
//   - PARENT (5) replies an int32: 1 if the parent images directory has
//     the pagemap file, else 0.
//   - ADD (1) = flags PRESENT, pages follow; HOLE (2) = flags PARENT, no
//     data (checked against the parent pagemap when there is one); ADD_F
//     (6) carries its flags in cmd's high 16 bits, pages follow only with
//     PRESENT. Nothing is replied.
//   - CLOSE (0x1023) / FORCE_CLOSE (0x1024) reply an int32 status (0:
//     every image is complete) and end the session; the server then waits
//     for the peer to close first, except on a handed-over socket
//     (--ps-socket, handover.go), where the client sends FORCE_CLOSE and
//     another session may follow on the same connection. A session that ends without CLOSE is an
//     error ("data not flushed"); godwit then removes the open task's
//     partial images.
//   - GET (7), on a page server started for lazy pages only: dst_id is the
//     plain pid (CRIU's lazy-pages sends pr->img_id); the reply is an ADD_F
//     header with flags PRESENT echoing vaddr and dst_id, nr_pages cut to
//     the pagemap entry holding vaddr, then the pages. CRIU closes the
//     connection when it has no pages; godwit replies nr_pages 0 and keeps
//     the connection (page-xfer.h documents a 0-page reply as the failure
//     answer; not tried against CRIU's lazy-pages, which fails here).
//   - Any other command, a malformed request or an I/O error: the server
//     logs it and closes the connection (CRIU has no error reply).
//   - pages-<n>.img numbers start at 0x10001 (CRIU's up_page_ids_base), so
//     they never collide with a local dump's in the same directory.
//
// Security (issue 9): TLS over TCP as CRIU's --tls (the same framing inside
// the TLS stream) and QUIC both use TLS 1.3 with client certificates always
// required (tlsverify.go: CRL, allowed client identities). A session
// creates its images exclusively and 0600, never replacing a finished one;
// deadlines, per-peer connections, files, bytes and pages per ADD are
// bounded (guard.go).
//
// Over QUIC a client opens a control stream (PARENT, GET, the final CLOSE)
// and one bidirectional stream per task (OPEN2, ADD..., CLOSE, whose
// status acknowledges that task's images); each stream is served like a
// TCP connection, so several tasks travel at once.
package pageserver
