package migrate

import (
	"crypto/x509"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"godwit/internal/logging"
	pb "godwit/migrate/internal/proto"
)

// TestResolveHeldSinceAuthorized: a Resolve for an id the agent knows
// nothing of passes authorize; if the copy is held, for another
// certificate, before the decision is delivered, the decision must not
// reach it.
func TestResolveHeldSinceAuthorized(t *testing.T) {
	a := &Agent{cfg: AgentConfig{ImagesDir: t.TempDir(), Log: logging.New(io.Discard, 0)},
		held: map[string]*held{}, states: map[string]string{}, pids: map[string]int{}, owners: map[string]string{}}
	const id = "0123456789abcdef"
	owner := &x509.Certificate{Raw: []byte("owner")}
	other := &x509.Certificate{Raw: []byte("other")}
	h := &held{id: id, owner: peerFingerprint(owner), pid: 1, since: time.Now(), decide: make(chan string, 1)}
	resolveAuthorizedHook = func(string) {
		a.mu.Lock()
		a.held[id] = h
		a.mu.Unlock()
	}
	defer func() { resolveAuthorizedHook = nil }()
	c, srv := net.Pipe()
	defer c.Close()
	defer srv.Close()
	go a.serveResolve(&ctl{c: srv}, &pb.Resolve{Version: Version, Id: id, Decision: DecisionAbort}, other)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	m, err := readMsg(c)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-h.decide:
		t.Fatalf("another certificate's decision %q reached the held copy", d)
	default:
	}
	f := m.GetFailure()
	if f == nil || !strings.Contains(f.Message, "was not started by") {
		t.Fatalf("reply %v, want a refusal naming the owner check", m)
	}
}
