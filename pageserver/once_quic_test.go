package pageserver

import (
	"context"
	"io"
	"testing"
	"time"

	"godwit/internal/logging"
)

// With Once over QUIC, a dump of several tasks (one stream each, after
// the control stream) is one session: Serve waits for the connection's
// CLOSE, not for the first task's stream to end (it used to stop there,
// and the second task's OPEN2 timed out), over TCP and QUIC alike.
func TestOnceTwoTasks(t *testing.T) {
	for _, tr := range []Transport{TransportTCP, TransportQUIC} {
		t.Run(string(tr), func(t *testing.T) {
			o := tlsFiles(t, t.TempDir())
			o.Transport = tr
			o.TLS = tr == TransportTCP
			ln, err := Listen("127.0.0.1:0", o)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			srv, err := NewServer(Config{ImagesDir: dir, Once: true, Log: logging.New(io.Discard, 0)})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx, ln) }()
			dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer dcancel()
			c, err := Dial(dctx, ln.Addr().String(), clientOf(o))
			if err != nil {
				t.Fatal(err)
			}
			for i, pid := range []int{1000, 1001} {
				s, err := c.OpenTask(dctx, TaskDst(pid), true)
				if err != nil {
					c.Abort()
					t.Fatalf("task %d: %v", pid, err)
				}
				sendTask(t, s, taskRanges, uint64(i))
				if err := s.Close(); err != nil {
					t.Fatalf("task %d: close: %v", pid, err)
				}
				// Give a server that wrongly ends at the first task's
				// stream the time to do so.
				time.Sleep(100 * time.Millisecond)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Serve: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Serve still running after the session")
			}
			checkSame(t, dir, "pagemap-1000.img", taskRanges, 0)
			checkSame(t, dir, "pagemap-1001.img", taskRanges, 1)
		})
	}
}
