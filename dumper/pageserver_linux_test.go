package dumper

import (
	"net"
	"strings"
	"testing"
	"time"
)

// A page server that accepts and then never answers must not keep the task
// frozen: the dump gives up after pageServerTimeout and the task runs on.
func TestDumpStalledPageServer(t *testing.T) {
	needRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never read
		}
	}()
	old := pageServerTimeout
	pageServerTimeout = time.Second
	defer func() { pageServerTimeout = old }()

	p := startCounter(t, false, "-m", "64")
	o := dumpOpts(p.Pid, t.TempDir())
	o.PageServer = &PageServer{Addr: ln.Addr().String()}
	t0 := time.Now()
	_, err = Dump(o, nil)
	if err == nil || !strings.Contains(err.Error(), "page server") {
		t.Fatalf("dump to a stalled page server: %v", err)
	}
	if d := time.Since(t0); d > time.Minute {
		t.Fatalf("the dump waited %v for a stalled server", d)
	}
	assertRunningUntraced(t, p.Pid)
}
