package migrate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"google.golang.org/protobuf/proto"

	pb "godwit/migrate/internal/proto"
)

// Version is the control protocol's version; Hello carries it and a peer
// refuses any other. 2: lazy restore at switch-over (Restore.full_fill and
// page_source, RoundStart.lazy, PagesIn), which a version 1 peer would
// ignore or wait for in vain. 3: TCP connections (Lock, Locked,
// Restore.tcp_established and shell_job) and compressed page streams
// (Hello.compress). 4: the held switch-over (Go answered by Resumed before
// the source dies; Resolve, Resolved). 5: HistoryRequest/HistoryReply and
// Hello.memory_bytes (the agent's --max-migration-bytes). 6: Probe and
// ProbeAck (--compress auto measures the link). 7: RoundStart.streams
// (a round's pages striped over several connections), compressed QUIC
// rounds and Restore.compress (compressed lazy pages). 8:
// Accepted.page_limit and RoundAck.page_bytes (the source keeps its
// rounds under the agent's --max-migration-bytes). 9: Layout (each
// pre-copy round carries the root's mappings and threads, restored onto a
// task prepared during the rounds) and Check/Checked (post-copy and hybrid
// check the destination's addresses before the commit). 10: the page
// streams carry ZERO and COPY records (zero and duplicate pages), which a
// version 9 agent's page server refuses.
const Version = 10

// maxMessage bounds one control message: image files travel in chunks of
// fileChunk, everything else is small.
const (
	maxMessage = 2 << 20
	fileChunk  = 1 << 20
)

// writeMsg frames m with its 4-byte big-endian length.
func writeMsg(w io.Writer, m *pb.Envelope) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > maxMessage {
		return fmt.Errorf("control message of %d bytes (limit %d)", len(b), maxMessage)
	}
	buf := make([]byte, 4, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	_, err = w.Write(append(buf, b...))
	return err
}

// readMsg reads one framed message; a length over maxMessage, a short
// frame or a message that does not decode is an error, never a panic.
func readMsg(r io.Reader) (*pb.Envelope, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxMessage {
		return nil, fmt.Errorf("control message of %d bytes (limit %d)", n, maxMessage)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("control message: %w", err)
	}
	m := &pb.Envelope{}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	if m.Msg == nil {
		return nil, errors.New("control message: empty")
	}
	return m, nil
}

// ctl is one end of the control stream. A reader goroutine takes every
// message as it arrives, so that a dead link (TCP keepalive and user
// timeout, see tuneConn) is noticed even while this end is busy moving
// pages: onDead is called, which cancels the migration's work.
type ctl struct {
	c  net.Conn
	in chan received
	// at is when the message recv last returned arrived.
	at   time.Time
	done chan struct{}
	err  error // set before done is closed
}

type received struct {
	m  *pb.Envelope
	at time.Time
}

func newCtl(c net.Conn, onDead func()) *ctl {
	k := &ctl{c: c, in: make(chan received, 4), done: make(chan struct{})}
	go func() {
		for {
			m, err := readMsg(c)
			if err != nil {
				k.err = err
				close(k.done)
				if onDead != nil {
					onDead()
				}
				return
			}
			select {
			case k.in <- received{m, time.Now()}:
			case <-k.done:
				return
			}
		}
	}()
	return k
}

// sendTimeout bounds one control write: the peer reads continuously.
const sendTimeout = time.Minute

func (k *ctl) send(m *pb.Envelope) error {
	_ = k.c.SetWriteDeadline(time.Now().Add(sendTimeout))
	return writeMsg(k.c, m)
}

// recv waits up to limit for the next message.
func (k *ctl) recv(limit time.Duration) (*pb.Envelope, error) {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case r := <-k.in:
		k.at = r.at
		return r.m, nil
	case <-k.done:
		// Messages read before the end still come first.
		select {
		case r := <-k.in:
			k.at = r.at
			return r.m, nil
		default:
		}
		if errors.Is(k.err, io.EOF) {
			return nil, errors.New("connection closed")
		}
		return nil, k.err
	case <-t.C:
		return nil, fmt.Errorf("nothing received for %v", limit)
	}
}

// Dead-link detection on control connections: keepalive probes while the
// stream is idle (during rounds), and a user timeout while data waits
// unacknowledged; either way a cut link is noticed in seconds, not after
// TCP's retransmissions give up (minutes).
var (
	keepAlive   = net.KeepAliveConfig{Enable: true, Idle: 2 * time.Second, Interval: time.Second, Count: 5}
	userTimeout = 10 * time.Second
)

// tuneConn sets keepalive and the user timeout on a TCP connection.
func tuneConn(c net.Conn) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	if err := tc.SetKeepAliveConfig(keepAlive); err != nil {
		return err
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(userTimeout/time.Millisecond))
	}); err != nil {
		return err
	}
	return serr
}
