package criuimg

import (
	"bytes"
	"strings"
	"testing"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
)

func prog(b byte) []byte { return bytes.Repeat([]byte{b}, 16) }

// TestSeccompChains: chains alike share entries, a thread's core names
// its newest filter, and reading follows prev back to the oldest.
func TestSeccompChains(t *testing.T) {
	a, b, c := model.SeccompFilter{Prog: prog(1)}, model.SeccompFilter{Prog: prog(2), Flags: 2}, model.SeccompFilter{Prog: prog(3)}
	ths := []*model.Thread{
		{Seccomp: model.Seccomp{Mode: 2, Filters: []model.SeccompFilter{a, b}}},
		{Seccomp: model.Seccomp{Mode: 2, Filters: []model.SeccompFilter{a, b, c}}},
		{Seccomp: model.Seccomp{Mode: 1}},
		{},
	}
	var tab seccompTable
	var cores []*criu_core.ThreadCoreEntry
	for _, th := range ths {
		thc := &criu_core.ThreadCoreEntry{}
		if err := tab.setSeccomp(thc, th); err != nil {
			t.Fatal(err)
		}
		cores = append(cores, thc)
	}
	if len(tab.filters) != 3 {
		t.Fatalf("%d filters written, want 3 (shared prefix)", len(tab.filters))
	}
	for i, thc := range cores {
		var got model.Thread
		fs := tab.filters
		if tsync, err := readSeccomp(nil, &fs, &got, thc); err != nil || tsync {
			t.Fatal(tsync, err)
		}
		w := ths[i].Seccomp
		if got.Seccomp.Mode != w.Mode || len(got.Seccomp.Filters) != len(w.Filters) {
			t.Fatalf("thread %d: %+v, want %+v", i, got.Seccomp, w)
		}
		for j := range w.Filters {
			if !bytes.Equal(got.Seccomp.Filters[j].Prog, w.Filters[j].Prog) || got.Seccomp.Filters[j].Flags != w.Filters[j].Flags {
				t.Fatalf("thread %d filter %d differs", i, j)
			}
		}
	}
	loop := []*seccomp.SeccompFilter{{Filter: prog(1), Prev: proto.Uint32(1)}, {Filter: prog(1), Prev: proto.Uint32(0)}}
	var ts bool
	if _, err := seccompChain(loop, 0, &ts); err == nil {
		t.Error("a prev loop is accepted")
	}
	if _, err := seccompChain([]*seccomp.SeccompFilter{{Filter: prog(1)[:7]}}, 0, &ts); err == nil {
		t.Error("a 7-byte program is accepted")
	}
	if _, err := seccompChain(loop, 5, &ts); err == nil {
		t.Error("an index out of range is accepted")
	}
	if _, err := seccompChain([]*seccomp.SeccompFilter{{Filter: prog(1), Flags: proto.Uint32(4)}}, 0, &ts); err == nil {
		t.Error("an unknown flag is accepted")
	}
}

// CRIU writes a chain every thread shares once, on the leader, marked
// SECCOMP_FILTER_FLAG_TSYNC, and the other threads without filters: read
// as that chain (without the flag) in every thread.
func TestSeccompTsyncFromCRIU(t *testing.T) {
	tr := sampleTree(t)
	k := tr.Root()
	if len(k.Threads) < 2 {
		t.Fatal("sample task has one thread")
	}
	for _, th := range k.Threads {
		th.Seccomp = model.Seccomp{}
	}
	k.Threads[0].Seccomp = model.Seccomp{Mode: 2, Filters: []model.SeccompFilter{{Prog: prog(1)}, {Prog: prog(2), Flags: 2}}}
	dir, _ := writeTree(t, tr)
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	e, err := images.ReadOne[*seccomp.SeccompEntry](d, SeccompImg)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range e.GetSeccompFilters() {
		f.Flags = proto.Uint32(f.GetFlags() | seccompFlagTsync)
	}
	d.Remove(SeccompImg)
	if err := images.Write(d, SeccompImg, e); err != nil {
		t.Fatal(err)
	}
	got := readTree(t, dir).Root()
	for i, th := range got.Threads {
		s := th.Seccomp
		if s.Mode != 2 || len(s.Filters) != 2 || !bytes.Equal(s.Filters[1].Prog, prog(2)) || s.Filters[0].Flags != 0 || s.Filters[1].Flags != 2 {
			t.Fatalf("thread %d: %+v, want the leader's chain without TSYNC", i, s)
		}
	}
	// A thread with filters of its own contradicts TSYNC.
	k.Threads[1].Seccomp = model.Seccomp{Mode: 1}
	dir, _ = writeTree(t, tr)
	d2, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	d2.Remove(SeccompImg)
	if err := images.Write(d2, SeccompImg, e); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(d2); err == nil || !strings.Contains(err.Error(), "marked TSYNC for every thread") {
		t.Fatalf("Read = %v, want the TSYNC contradiction", err)
	}
}

// FuzzSeccompImage: any seccomp.img and filter index give a chain of
// whole BPF programs or an error, never a panic.
func FuzzSeccompImage(f *testing.F) {
	e := &seccomp.SeccompEntry{SeccompFilters: []*seccomp.SeccompFilter{{Filter: prog(1)}, {Filter: prog(2), Prev: proto.Uint32(0), Flags: proto.Uint32(2)}}}
	b, _ := proto.Marshal(e)
	f.Add(b, uint32(1))
	f.Fuzz(func(t *testing.T, data []byte, i uint32) {
		var e seccomp.SeccompEntry
		if proto.Unmarshal(data, &e) != nil {
			return
		}
		var ts bool
		chain, err := seccompChain(e.GetSeccompFilters(), i, &ts)
		if err != nil {
			return
		}
		for _, c := range chain {
			if len(c.Prog) == 0 || len(c.Prog)%8 != 0 {
				t.Fatalf("program of %d bytes", len(c.Prog))
			}
		}
	})
}
