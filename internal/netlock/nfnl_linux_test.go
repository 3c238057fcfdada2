package netlock

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A batch the kernel refuses whole (here EPERM: the sending thread lacks
// CAP_NET_ADMIN) is answered with BATCH_BEGIN's sequence number only:
// batch must return that error, not wait for answers that never come.
func TestBatchRefusedWhole(t *testing.T) {
	ns := newTestNetns(t)
	c, err := openNF(ns.f)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	done := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, without CAP_NET_ADMIN, dies
		// with the goroutine.
		runtime.LockOSThread()
		h := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var d [2]unix.CapUserData
		if err := unix.Capget(&h, &d[0]); err != nil {
			done <- err
			return
		}
		d[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&h, &d[0]); err != nil {
			done <- err
			return
		}
		done <- c.batch(func(m *nfmsg, seq func() uint32) int {
			m.begin(nftType|unix.NFT_MSG_DELTABLE, unix.NLM_F_REQUEST|unix.NLM_F_ACK, unix.NFPROTO_INET, seq())
			m.str(unix.NFTA_TABLE_NAME, "nosuch")
			m.end()
			return 1
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, unix.EPERM) {
			t.Fatalf("batch without CAP_NET_ADMIN: %v, want EPERM", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("batch still waiting 20 s after the kernel refused it (BATCH_BEGIN's answer skipped)")
	}
	// The socket is still in step: a next batch gets its own answers.
	err = c.batch(func(m *nfmsg, seq func() uint32) int {
		m.begin(nftType|unix.NFT_MSG_DELTABLE, unix.NLM_F_REQUEST|unix.NLM_F_ACK, unix.NFPROTO_INET, seq())
		m.str(unix.NFTA_TABLE_NAME, "nosuch")
		m.end()
		return 1
	})
	if !errors.Is(err, unix.ENOENT) {
		t.Fatalf("delete of a missing table: %v, want ENOENT", err)
	}
}

// No answer within nfAnswerWait is an error, not a wait forever.
func TestNoAnswerTimesOut(t *testing.T) {
	defer func(w time.Duration) { nfAnswerWait = w }(nfAnswerWait)
	nfAnswerWait = 200 * time.Millisecond
	c, err := openNF(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	done := make(chan error, 1)
	go func() { done <- c.acks(c.seq+1, 1) }() // nothing was sent
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "no answer") {
			t.Fatalf("acks with nothing sent: %v, want a no-answer error", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("acks still waiting 20 s for an answer that never comes")
	}
}

// A local process that sends a forged answer (NLMSG_ERROR -ENOENT with
// the next sequence number) to the lock's socket must not make an
// existing table look absent: only the kernel's answers count.
func TestForgedAnswerIgnored(t *testing.T) {
	ns := newTestNetns(t)
	l, err := New(Nftables, 4250, ns.path())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if err := l.LockNetns(); err != nil {
		t.Fatal(err)
	}
	c, err := openNF(ns.f)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	sa, err := unix.Getsockname(c.fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*unix.SockaddrNetlink).Pid
	forger, err := socketIn(ns.f)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(forger)
	if err := unix.Bind(forger, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatal(err)
	}
	// nlmsgerr: error -ENOENT, then the (capped) request header.
	msg := make([]byte, unix.SizeofNlMsghdr+4+unix.SizeofNlMsghdr)
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.NLMSG_ERROR)
	ne.PutUint32(msg[8:], c.seq+1)
	enoent := -int32(unix.ENOENT)
	ne.PutUint32(msg[16:], uint32(enoent))
	// Refused by the kernel (ECONNREFUSED) once the socket is connected.
	serr := unix.Sendto(forger, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: port})
	t.Logf("forger's send: %v", serr)
	found, err := c.request(unix.NFT_MSG_GETTABLE, unix.NFPROTO_INET, func(m *nfmsg) { m.str(unix.NFTA_TABLE_NAME, l.Name()) })
	if err != nil || !found {
		t.Fatalf("table %s exists, the request says found=%v err=%v (forged answer taken)", l.Name(), found, err)
	}
}
