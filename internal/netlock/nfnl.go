package netlock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The nftables lock's set elements, table lookup and table removal go
// to the kernel over netfilter netlink (include/uapi/linux/netfilter/
// nf_tables.h, nfnetlink.h), not through nft(8): a dump of 10,000
// connections loads their 4-tuples in a few batches of NEWSETELEM
// messages instead of making nft parse 10,000 elements, and the restore
// looks its table up and deletes it without two more nft runs.

// nfBatchMax bounds a batch's bytes: one batch is one sendmsg, which
// netlink refuses past the socket's send buffer (set to nfSndBuf).
const (
	nfBatchMax = 1 << 20
	nfSndBuf   = 4 << 20
	nfMsgMax   = 64 << 10 // one NEWSETELEM message's bytes
)

// nfAnswerWait bounds the wait for one answer of the kernel: a missing
// answer must fail the lock, not hang godwit with the tree frozen.
var nfAnswerWait = 30 * time.Second

// nfconn is a netfilter netlink socket in the lock's network namespace.
type nfconn struct {
	fd  int
	seq uint32
}

// openNF opens the socket in netns (nil: godwit's).
func openNF(netns *os.File) (*nfconn, error) {
	fd, err := socketIn(netns)
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink socket: %w", err)
	}
	c := &nfconn{fd: fd}
	// Acknowledgements without a copy of the request; bigger batches
	// than the default send buffer allows (root: CAP_NET_ADMIN).
	unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, nfSndBuf); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netfilter netlink socket: SO_SNDBUFFORCE: %w", err)
	}
	// Connected to the kernel (port id 0; connect binds the socket):
	// the kernel refuses other senders' unicasts to a connected netlink
	// socket, so no local process can forge an answer; recv drops any
	// not from port 0 all the same (one could land while connect binds).
	if err := unix.Connect(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netfilter netlink socket: connect: %w", err)
	}
	tv := unix.NsecToTimeval(nfAnswerWait.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netfilter netlink socket: SO_RCVTIMEO: %w", err)
	}
	return c, nil
}

// recv reads the next datagram the kernel sent to c into buf; datagrams
// from any other port id are dropped. No answer within nfAnswerWait is
// an error.
func (c *nfconn) recv(buf []byte) ([]syscall.NetlinkMessage, error) {
	for {
		r, from, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return nil, fmt.Errorf("netlink receive: no answer from the kernel in %v", nfAnswerWait)
		}
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not the kernel's
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:r])
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		return msgs, nil
	}
}

func (c *nfconn) close() { unix.Close(c.fd) }

// socketIn makes a NETLINK_NETFILTER socket in netns: on a thread of its
// own that enters the namespace and leaves it again; a thread that
// could not leave it is not given back to Go (it exits with its
// goroutine).
func socketIn(netns *os.File) (int, error) {
	mk := func() (int, error) {
		return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	}
	if netns == nil {
		return mk()
	}
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{-1, fmt.Errorf("own network namespace: %w", err)}
			return
		}
		defer unix.Close(own)
		if err := unix.Setns(int(netns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- res{-1, fmt.Errorf("enter the lock's network namespace: %w", err)}
			return
		}
		fd, err := mk()
		if serr := unix.Setns(own, unix.CLONE_NEWNET); serr != nil {
			if err == nil {
				unix.Close(fd)
			}
			ch <- res{-1, fmt.Errorf("leave the lock's network namespace: %w", serr)} // thread stays locked: it dies
			return
		}
		runtime.UnlockOSThread()
		ch <- res{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

var ne = binary.NativeEndian

const sizeofNfgenmsg = int(unsafe.Sizeof(unix.Nfgenmsg{}))

// nfmsg builds netlink messages into one batch buffer.
type nfmsg struct {
	b     []byte
	start int   // the open message's offset
	nests []int // open nested attributes' offsets
}

// begin opens a message of nf_tables type typ for family.
func (m *nfmsg) begin(typ uint16, flags uint16, family uint8, seq uint32) {
	m.start = len(m.b)
	var h [unix.SizeofNlMsghdr + sizeofNfgenmsg]byte
	ne.PutUint16(h[4:], typ)
	ne.PutUint16(h[6:], flags)
	ne.PutUint32(h[8:], seq)
	h[16] = family
	h[17] = unix.NFNETLINK_V0
	m.b = append(m.b, h[:]...)
}

// end closes the open message.
func (m *nfmsg) end() { ne.PutUint32(m.b[m.start:], uint32(len(m.b)-m.start)) }

func (m *nfmsg) attr(typ uint16, v []byte) {
	var h [4]byte
	ne.PutUint16(h[0:], uint16(4+len(v)))
	ne.PutUint16(h[2:], typ)
	m.b = append(m.b, h[:]...)
	m.b = append(m.b, v...)
	m.pad()
}

func (m *nfmsg) str(typ uint16, s string) { m.attr(typ, append([]byte(s), 0)) }

func (m *nfmsg) pad() {
	for len(m.b)%4 != 0 {
		m.b = append(m.b, 0)
	}
}

func (m *nfmsg) nest(typ uint16) {
	m.nests = append(m.nests, len(m.b))
	m.attr(typ|unix.NLA_F_NESTED, nil)
}

func (m *nfmsg) unnest() {
	at := m.nests[len(m.nests)-1]
	m.nests = m.nests[:len(m.nests)-1]
	ne.PutUint16(m.b[at:], uint16(len(m.b)-at))
}

const nftType = unix.NFNL_SUBSYS_NFTABLES << 8

// batch wraps the messages of body (made by fill, sequence numbers from
// c) in a BATCH_BEGIN / BATCH_END pair, sends it and waits for the
// acknowledgement of every message: a batch is applied whole or not at
// all.
func (c *nfconn) batch(fill func(m *nfmsg, seq func() uint32) int) error {
	m := &nfmsg{b: make([]byte, 0, 4096)}
	seq := func() uint32 { c.seq++; return c.seq }
	m.begin(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, unix.AF_UNSPEC, seq())
	binary.BigEndian.PutUint16(m.b[m.start+18:], unix.NFNL_SUBSYS_NFTABLES)
	m.end()
	first := c.seq + 1
	n := fill(m, seq)
	m.begin(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, unix.AF_UNSPEC, seq())
	binary.BigEndian.PutUint16(m.b[m.start+18:], unix.NFNL_SUBSYS_NFTABLES)
	m.end()
	if err := unix.Sendto(c.fd, m.b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	return c.acks(first, n)
}

// acks reads the acknowledgements of the n messages numbered from first;
// the first error answer is returned (the kernel then rolls the batch
// back). An error answer numbered first-1 (BATCH_BEGIN's) is the whole
// batch refused before any message ran (EPERM, EOPNOTSUPP, ENOMEM): no
// other answer follows it.
func (c *nfconn) acks(first uint32, n int) error {
	buf := make([]byte, 64<<10)
	total := uint32(n)
	for n > 0 {
		msgs, err := c.recv(buf)
		if err != nil {
			return err
		}
		for _, msg := range msgs {
			if msg.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			header := msg.Header.Seq == first-1
			if !header && msg.Header.Seq-first >= total {
				continue // not an answer to this batch
			}
			if len(msg.Data) < 4 {
				return errors.New("netlink: short error message")
			}
			e := int32(ne.Uint32(msg.Data))
			if header {
				if e != 0 {
					return fmt.Errorf("netlink: batch refused: %w%s", unix.Errno(-e), extAck(msg))
				}
				continue
			}
			n--
			if e != 0 {
				// The kernel rolls the whole batch back.
				return fmt.Errorf("netlink: %w%s", unix.Errno(-e), extAck(msg))
			}
		}
	}
	return nil
}

// extAck is the kernel's message (NLMSGERR_ATTR_MSG) in an error
// answer, ": text", or "".
func extAck(msg syscall.NetlinkMessage) string {
	if msg.Header.Flags&unix.NLM_F_ACK_TLVS == 0 || len(msg.Data) < 4+unix.SizeofNlMsghdr {
		return ""
	}
	b := msg.Data[4+unix.SizeofNlMsghdr:] // NETLINK_CAP_ACK: the request's header only
	for len(b) >= 4 {
		l, t := int(ne.Uint16(b)), ne.Uint16(b[2:])
		if l < 4 || l > len(b) {
			return ""
		}
		if t == unix.NLMSGERR_ATTR_MSG {
			s := b[4:l]
			for len(s) > 0 && s[len(s)-1] == 0 {
				s = s[:len(s)-1]
			}
			return ": " + string(s)
		}
		b = b[(l+3)&^3:]
	}
	return ""
}

// request sends one message outside a batch (a GET) and reads its answer
// up to the acknowledgement: the error, if any.
func (c *nfconn) request(typ uint16, family uint8, attrs func(m *nfmsg)) (found bool, err error) {
	m := &nfmsg{}
	c.seq++
	m.begin(nftType|typ, unix.NLM_F_REQUEST|unix.NLM_F_ACK, family, c.seq)
	attrs(m)
	m.end()
	if err := unix.Sendto(c.fd, m.b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 64<<10)
	for {
		msgs, err := c.recv(buf)
		if err != nil {
			return false, err
		}
		for _, msg := range msgs {
			if msg.Header.Seq != c.seq {
				continue
			}
			if msg.Header.Type != unix.NLMSG_ERROR {
				found = true
				continue
			}
			if len(msg.Data) < 4 {
				return false, errors.New("netlink: short error message")
			}
			if e := int32(ne.Uint32(msg.Data)); e != 0 {
				return false, fmt.Errorf("netlink: %w%s", unix.Errno(-e), extAck(msg))
			}
			return found, nil
		}
	}
}

// nftTableExists asks whether table inet name exists.
func nftTableExists(netns *os.File, name string) (bool, error) {
	c, err := openNF(netns)
	if err != nil {
		return false, err
	}
	defer c.close()
	found, err := c.request(unix.NFT_MSG_GETTABLE, unix.NFPROTO_INET, func(m *nfmsg) {
		m.str(unix.NFTA_TABLE_NAME, name)
	})
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get table inet %s: %w", name, err)
	}
	return found, nil
}

// nftDeleteTable deletes table inet name, with its sets and chains.
func nftDeleteTable(netns *os.File, name string) error {
	c, err := openNF(netns)
	if err != nil {
		return err
	}
	defer c.close()
	err = c.batch(func(m *nfmsg, seq func() uint32) int {
		m.begin(nftType|unix.NFT_MSG_DELTABLE, unix.NLM_F_REQUEST|unix.NLM_F_ACK, unix.NFPROTO_INET, seq())
		m.str(unix.NFTA_TABLE_NAME, name)
		m.end()
		return 1
	})
	if err != nil {
		return fmt.Errorf("delete table inet %s: %w", name, err)
	}
	return nil
}

// setElems are the keys to add to one set: each key the set's fields
// concatenated, each field padded to 4 bytes (as nft lays them out).
type setElems struct {
	set  string
	keys [][]byte
}

// nftAddElems adds the elements to the sets of table inet table, in as
// few batches as the socket's buffer allows.
func nftAddElems(netns *os.File, table string, sets []setElems) error {
	c, err := openNF(netns)
	if err != nil {
		return err
	}
	defer c.close()
	type chunk struct {
		set  string
		keys [][]byte
	}
	// Messages of at most nfMsgMax bytes, batches of at most nfBatchMax.
	var chunks []chunk
	for _, s := range sets {
		for keys := s.keys; len(keys) > 0; {
			size, n := 0, 0
			for n < len(keys) && size+12+len(keys[n])+3 < nfMsgMax {
				size += 12 + (len(keys[n])+3)&^3
				n++
			}
			chunks = append(chunks, chunk{s.set, keys[:n]})
			keys = keys[n:]
		}
	}
	for len(chunks) > 0 {
		n := min(len(chunks), nfBatchMax/nfMsgMax-1)
		batch := chunks[:n]
		chunks = chunks[n:]
		err := c.batch(func(m *nfmsg, seq func() uint32) int {
			for _, ch := range batch {
				m.begin(nftType|unix.NFT_MSG_NEWSETELEM, unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_ACK, unix.NFPROTO_INET, seq())
				m.str(unix.NFTA_SET_ELEM_LIST_TABLE, table)
				m.str(unix.NFTA_SET_ELEM_LIST_SET, ch.set)
				m.nest(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
				for _, k := range ch.keys {
					m.nest(unix.NFTA_LIST_ELEM)
					m.nest(unix.NFTA_SET_ELEM_KEY)
					m.attr(unix.NFTA_DATA_VALUE, k)
					m.unnest()
					m.unnest()
				}
				m.unnest()
				m.end()
			}
			return len(batch)
		})
		if err != nil {
			return fmt.Errorf("add elements to table inet %s: %w", table, err)
		}
	}
	return nil
}

// Keys of the lock's sets, laid out as nft lays out its concatenations:
// addresses as they are, ports big-endian in four bytes; a lone port
// (listenany) in two.

func keyAddr(b []byte, a netip.Addr) []byte {
	a = a.WithZone("")
	if a.Is4() {
		v := a.As4()
		return append(b, v[:]...)
	}
	v := a.As16()
	return append(b, v[:]...)
}

func keyPort(b []byte, p uint16) []byte { return append(b, byte(p>>8), byte(p), 0, 0) }

// connKey is local addr . local port . remote addr . remote port.
func connKey(c Conn) []byte {
	b := make([]byte, 0, 40)
	b = keyPort(keyAddr(b, c.Local.Addr()), c.Local.Port())
	return keyPort(keyAddr(b, c.Remote.Addr()), c.Remote.Port())
}
