package migrate

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"godwit/internal/logging"
	pb "godwit/migrate/internal/proto"
	"godwit/pageserver"
)

// testAgent runs an agent on loopback with development certificates: the
// server's, the source's (127.0.0.1) and another peer's the CA signed too.
type testAgent struct {
	addr          string
	source, rogue TLSFiles
}

func startTestAgent(t *testing.T, cfg AgentConfig) *testAgent {
	t.Helper()
	dir := t.TempDir()
	ca, cakey, err := pageserver.GenerateDevCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := func(host, role string) TLSFiles {
		d := filepath.Join(dir, host, role)
		return TLSFiles{CACert: ca, Cert: filepath.Join(d, "cert.pem"), Key: filepath.Join(d, "key.pem")}
	}
	for _, h := range []string{"127.0.0.1", "rogue.example"} {
		if _, _, err := pageserver.GenerateHostCerts(ca, cakey, dir, h); err != nil {
			t.Fatal(err)
		}
	}
	cfg.ImagesDir, cfg.Address, cfg.TLS = t.TempDir(), "127.0.0.1", files("127.0.0.1", "server")
	if cfg.Log == nil {
		cfg.Log = logging.New(io.Discard, 0)
	}
	a, err := NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Error("agent did not stop")
		}
	})
	return &testAgent{addr: ln.Addr().String(), source: files("127.0.0.1", "client"), rogue: files("rogue.example", "client")}
}

// openStreams starts a migration as a source announcing memory bytes,
// and its first round, its pages striped over streams: the control stream
// and the round's page port. compress is "" or CompressZstd (the round's
// pages as a zstd stream).
func (ta *testAgent) openStreams(t *testing.T, memory uint64, compress string, streams int) (*ctl, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := dialAgent(ctx, ta.addr, ta.source, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	k := newCtl(c, nil)
	cpu, err := hostCPU()
	if err != nil {
		t.Fatal(err)
	}
	free := int32(1 << 22) // above pid_max's ceiling: never in use
	if err := k.send(&pb.Envelope{Msg: &pb.Envelope_Hello{Hello: &pb.Hello{Version: Version, Pid: free, Pids: []int32{free},
		Transport: "tls", Mode: string(ModePrecopy), Cpuinfo: cpu, MemoryBytes: memory, Compress: compress}}}); err != nil {
		t.Fatal(err)
	}
	m, err := k.recv(time.Minute)
	if err != nil || m.GetAccepted() == nil {
		t.Fatalf("hello: %v, %v", m, err)
	}
	if err := k.send(&pb.Envelope{Msg: &pb.Envelope_RoundStart{RoundStart: &pb.RoundStart{N: 1, Compress: compress, Streams: uint32(streams)}}}); err != nil {
		t.Fatal(err)
	}
	if m, err = k.recv(time.Minute); err != nil || m.GetRoundReady() == nil {
		t.Fatalf("round start: %v, %v", m, err)
	}
	return k, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(m.GetRoundReady().Port)))
}

// sendPagesStriped opens a task's pagemap on the page server at addr as
// files (OPEN2: its answer shows a refused handshake), and adds n bytes of
// pages over streams connections; with compress, through the source's
// zstd stream (dialCompressed).
func sendPagesStriped(addr string, files TLSFiles, n int, compress string, streams int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	to, err := files.pageTransport("tls", "127.0.0.1")
	if err != nil {
		return err
	}
	to.Streams = streams
	if compress != "" {
		tc, err := files.clientConfig("127.0.0.1")
		if err != nil {
			return err
		}
		cp, err := dialCompressed(addr, tc)
		if err != nil {
			return err
		}
		defer cp.finish()
		// The dump's end of the relay, as a plain page-server link.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		f := os.NewFile(uintptr(cp.sock), "pages")
		sc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return err
		}
		defer sc.Close()
		go func() {
			x, err := ln.Accept()
			if err != nil {
				return
			}
			defer x.Close()
			go func() { _, _ = io.Copy(sc, x) }()
			_, _ = io.Copy(x, sc)
		}()
		addr, to = ln.Addr().String(), pageserver.TransportOptions{}
	}
	c, err := pageserver.Dial(ctx, addr, to)
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := c.OpenTask(ctx, pageserver.TaskDst(1), true)
	if err != nil {
		return err
	}
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i)
	}
	for off := 0; off < n; off += len(data) {
		if err := s.AddPagesBytes(0x10000000+uint64(off), pageserver.FlagPresent, data); err != nil {
			return err
		}
	}
	if err := s.Close(); err != nil {
		return err
	}
	// The session's FORCE_CLOSE: its answer says the pages were taken.
	return c.Close()
}

// A round's page port takes only the migration's own source: another peer
// the CA signed is refused, and does not use up the round's one session.
// Compressed rounds too.
func TestRoundPortBoundToMigration(t *testing.T) {
	for _, run := range []struct {
		compress string
		streams  int
	}{{"", 1}, {CompressZstd, 1}, {"", 3}} {
		compress := run.compress
		t.Run(fmt.Sprintf("compress=%s,streams=%d", compress, run.streams), func(t *testing.T) {
			ta := startTestAgent(t, AgentConfig{})
			k, port := ta.openStreams(t, 1<<20, compress, run.streams)
			if err := sendPagesStriped(port, ta.rogue, 1<<20, compress, run.streams); err == nil {
				t.Fatal("another peer's pages were taken on the migration's page port")
			}
			if err := sendPagesStriped(port, ta.source, 1<<20, compress, run.streams); err != nil {
				t.Fatalf("the source's pages after the refused peer: %v", err)
			}
			if err := k.send(&pb.Envelope{Msg: &pb.Envelope_RoundDone{RoundDone: &pb.RoundDone{N: 1}}}); err != nil {
				t.Fatal(err)
			}
			if m, err := k.recv(time.Minute); err != nil || m.GetRoundAck() == nil {
				t.Fatalf("round done: %v, %v", m, err)
			}
		})
	}
}

// The agent bounds the page bytes of one migration (--max-migration-bytes)
// and says which limit a source ran into, compressed rounds too.
func TestMaxMigrationBytes(t *testing.T) {
	ta := startTestAgent(t, AgentConfig{MaxMigrationBytes: 4 << 20})
	// Announced over the limit: refused at the check.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := dialAgent(ctx, ta.addr, ta.source, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k := newCtl(c, nil)
	cpu, _ := hostCPU()
	free := int32(1 << 22)
	if err := k.send(&pb.Envelope{Msg: &pb.Envelope_Hello{Hello: &pb.Hello{Version: Version, Pid: free, Pids: []int32{free},
		Transport: "tls", Mode: string(ModePrecopy), Cpuinfo: cpu, MemoryBytes: 8 << 20}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := k.recv(time.Minute); err != nil || m.GetFailure() == nil || !strings.Contains(m.GetFailure().Message, "--max-migration-bytes 4194304") {
		t.Fatalf("hello over the limit: %v, %v", m, err)
	}
	// Announced under it, then sending more: the round fails, naming it.
	for _, run := range []struct {
		compress string
		streams  int
	}{{"", 1}, {CompressZstd, 1}, {"", 3}} {
		compress := run.compress
		k2, port := ta.openStreams(t, 1<<20, compress, run.streams)
		if err := sendPagesStriped(port, ta.source, 8<<20, compress, run.streams); err == nil {
			t.Fatalf("compress %q: 8 MiB of pages taken under --max-migration-bytes 4 MiB", compress)
		}
		m, err := k2.recv(time.Minute)
		if err != nil || m.GetFailure() == nil || !strings.Contains(m.GetFailure().Message, "exceed --max-migration-bytes 4194304") {
			t.Fatalf("compress %q: after pages over the limit: %v, %v", compress, m, err)
		}
	}
	if got, err := migrationLimit(0, 1<<30); err != nil || got != 3<<30+migrationSlack {
		t.Errorf("default limit of 1 GiB = %d, %v", got, err)
	}
}
