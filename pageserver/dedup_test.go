package pageserver

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"godwit/internal/pagexfer"
	"godwit/pageserver/internal/wire"
)

// dedupData is 64 pages: 32 zero, 16 distinct, the same 16 again.
func dedupData() []byte {
	b := make([]byte, 64*PageSize)
	fillPages(b[32*PageSize:48*PageSize], 0x1000, 7)
	copy(b[48*PageSize:], b[32*PageSize:48*PageSize])
	return b
}

// sendDedupTask sends task pid: dedupData at 0x400000 from memory, then
// at 0x800000 from a pagexfer.Chunk the distinct pages a third time, a
// new page and a zero page (the file ends in a hole).
func sendDedupTask(t *testing.T, c *Client, pid int) *TaskSink {
	t.Helper()
	s, err := c.OpenTask(context.Background(), TaskDst(pid), true)
	if err != nil {
		t.Fatal(err)
	}
	data := dedupData()
	if err := s.AddPagesBytes(0x400000, FlagPresent, data); err != nil {
		t.Fatal(err)
	}
	more := append(append(bytes.Clone(data[32*PageSize:48*PageSize]), bytes.Repeat([]byte{9}, PageSize)...), make([]byte, PageSize)...)
	ch := pagexfer.NewChunk(more)
	if err := s.AddPages(0x800000, uint64(len(more)/PageSize), FlagPresent, &ch); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDedupImagesSame: with Dedup the images are byte for byte those of a
// plain upload, while only the distinct pages' data crosses the wire.
func TestDedupImagesSame(t *testing.T) {
	for _, streams := range []int{1, 3} {
		t.Run(fmt.Sprintf("streams=%d", streams), func(t *testing.T) { testDedupImagesSame(t, streams) })
	}
}

func testDedupImagesSame(t *testing.T, streams int) {
	plain := startServer(t, Config{}, TransportOptions{})
	c := plain.dial(t)
	sendDedupTask(t, c, 5)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	dd := startServer(t, Config{}, TransportOptions{})
	c, err := Dial(context.Background(), dd.addr, TransportOptions{Dedup: true, Streams: streams})
	if err != nil {
		t.Fatal(err)
	}
	s := sendDedupTask(t, c, 5)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if s.dd.zero != 33 || s.dd.dup != 32 || s.dd.sent != 64+18 {
		t.Fatalf("zero %d dup %d sent %d pages, want 33, 32, 82", s.dd.zero, s.dd.dup, s.dd.sent)
	}
	if got, want := metricValue(t, dd.m.bytes.WithLabelValues("in")), float64(17*PageSize); got != want {
		t.Fatalf("%v bytes of page data received, want %v (the distinct pages only)", got, want)
	}
	if got, want := metricValue(t, plain.m.bytes.WithLabelValues("in")), float64(82*PageSize); got != want {
		t.Fatalf("plain upload: %v bytes received, want %v", got, want)
	}
	sameFiles(t, plain.dir, dd.dir, "pagemap-5.img")
	pages := fmt.Sprintf("pages-%d.img", pagesIDOf(t, dd.dir, "pagemap-5.img"))
	sameFiles(t, plain.dir, dd.dir, pages)
	a, err := os.ReadFile(filepath.Join(dd.dir, pages))
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 82*PageSize {
		t.Fatalf("pages file %d bytes", len(a))
	}
}

// TestDedupRefused: what a peer's ZERO and COPY records may make the
// server do is bounded: a copy from pages not written yet, records
// without PRESENT or without OPEN are refused and the partial images
// dropped.
func TestDedupRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  []byte
		want string
	}{
		{"copy beyond written", append(hdr(wire.MakeCmd(wire.CmdCopy, wire.FlagPresent), 2, 0x9000, TaskDst(6)), 0, 0, 0, 0, 0, 0, 0, 0), "only 1 pages written"},
		{"copy of itself", append(hdr(wire.MakeCmd(wire.CmdCopy, wire.FlagPresent), 1, 0x9000, TaskDst(6)), 1, 0, 0, 0, 0, 0, 0, 0), "only 1 pages written"},
		{"zero not present", hdr(wire.MakeCmd(wire.CmdZero, wire.FlagParent), 1, 0x9000, TaskDst(6)), "PRESENT needed"},
		{"zero of another task", hdr(wire.MakeCmd(wire.CmdZero, wire.FlagPresent), 1, 0x9000, TaskDst(7)), "without OPEN"},
		{"copy huge", append(hdr(wire.MakeCmd(wire.CmdCopy, wire.FlagPresent), 1<<50, 0x9000, TaskDst(6)), 0, 0, 0, 0, 0, 0, 0, 0), "beyond the user address space"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Config{}, TransportOptions{})
			conn, err := net.Dial("tcp", ts.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var b bytes.Buffer
			b.Write(hdr(wire.CmdOpen2, 0, 0, TaskDst(6)))
			b.Write(hdr(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 1, 0x1000, TaskDst(6)))
			b.Write(bytes.Repeat([]byte{5}, PageSize))
			b.Write(tc.req)
			if _, err := conn.Write(b.Bytes()); err != nil {
				t.Fatal(err)
			}
			ts.log.waitLog(t, tc.want)
			ts.log.waitLog(t, "dropped incomplete pagemap-6.img")
			if exists(ts.dir, "pagemap-6.img") {
				t.Fatal("partial pagemap-6.img left behind")
			}
		})
	}
}
