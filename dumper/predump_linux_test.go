package dumper

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/internal/pagexfer"
	"godwit/internal/testutil"
	"godwit/pageserver"
	"godwit/restorer"
	"godwit/uffd"
)

var (
	rewriterOnce sync.Once
	rewriterBin  string
	rewriterErr  error
)

// rewriter builds testdata/rewriter.c once per test binary.
func rewriter(t testing.TB) string {
	t.Helper()
	rewriterOnce.Do(func() {
		dir, err := os.MkdirTemp("", "godwit-rewriter")
		if err != nil {
			rewriterErr = err
			return
		}
		rewriterBin = filepath.Join(dir, "rewriter")
		if out, err := exec.Command("gcc", "-O2", "-pthread", "-o", rewriterBin, "testdata/rewriter.c").CombinedOutput(); err != nil {
			rewriterErr = fmt.Errorf("gcc rewriter.c: %v: %s", err, out)
		}
	})
	if rewriterErr != nil {
		t.Fatal(rewriterErr)
	}
	return rewriterBin
}

type rw struct {
	p   *testutil.Proc
	log string
	a   uint64 // region A
	n   uint64 // its pages
}

func startRewriter(t testing.TB, pages, rate int) *rw {
	t.Helper()
	log := filepath.Join(t.TempDir(), "rewriter.log")
	p := start(t, log, "ready pid=", rewriter(t), strconv.Itoa(pages), strconv.Itoa(rate), log)
	m := regexp.MustCompile(`A=0x([0-9a-f]+)`).FindStringSubmatch(readLog(t, log))
	if m == nil {
		t.Fatalf("no A= in log")
	}
	a, _ := strconv.ParseUint(m[1], 16, 64)
	return &rw{p: p, log: log, a: a, n: uint64(pages)}
}

func readLog(t testing.TB, log string) string {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// step runs step g and returns region B's address and pages.
func (w *rw) step(t testing.TB, g int) (uint64, uint64) {
	t.Helper()
	if err := unix.Kill(w.p.Pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("step %d done", g)
	testutil.WaitFor(t, w.log, want, 20*time.Second)
	m := regexp.MustCompile(want + ` B=(\S+) nb=(\d+)`).FindStringSubmatch(readLog(t, w.log))
	if m == nil {
		t.Fatalf("no %q line", want)
	}
	b, _ := strconv.ParseUint(strings.TrimPrefix(m[1], "0x"), 16, 64)
	nb, _ := strconv.ParseUint(m[2], 10, 64)
	return b, nb
}

// hash stops the writer and returns the hash of A and B (the k-th hash
// line of the log, from 1).
func hashOf(t testing.TB, pid int, log string, k int) string {
	t.Helper()
	if err := unix.Kill(pid, unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		hs := regexp.MustCompile(`hash ([0-9a-f]+)`).FindAllStringSubmatch(readLog(t, log), -1)
		if len(hs) >= k {
			return hs[k-1][1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no hash line %d in %s", k, log)
	return ""
}

// pageFlags maps each page of the pagemap in dir to its entry's flags.
func pageFlags(t testing.TB, dir string, pid int) map[uint64]uint32 {
	t.Helper()
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pr, err := images.OpenPages(d, images.PagemapImg(pid))
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	m := map[uint64]uint32{}
	for p := range pr.Ranges() {
		for a := p.Vaddr; a < p.End(); a += pageSize {
			m[a] = p.Flags
		}
	}
	return m
}

func preDump(t testing.TB, o PreDumpOptions) *PreDumpResult {
	t.Helper()
	res, err := PreDump(context.Background(), o)
	if err != nil {
		t.Fatalf("pre-dump: %v", err)
	}
	return res
}

func holderOf(t testing.TB, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, trackRecordName))
	if err != nil {
		t.Fatal(err)
	}
	var r trackRecord
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r.HolderPid
}

// waitGone waits until pid no longer runs as a holder.
func waitGone(t testing.TB, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(b)) != holderComm {
			return
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err == nil && strings.Contains(string(st), ") Z ") {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("holder %d still runs", pid)
}

// killHolder ends a holder a failed test left (by pid, checked by name).
func killHolder(t testing.TB, dir string) {
	b, err := os.ReadFile(filepath.Join(dir, trackRecordName))
	if err != nil {
		return
	}
	var r trackRecord
	if json.Unmarshal(b, &r) != nil {
		return
	}
	if c, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", r.HolderPid)); err == nil && strings.TrimSpace(string(c)) == holderComm {
		_ = unix.Kill(r.HolderPid, unix.SIGKILL)
	}
}

func restoreDir(t testing.TB, dir string, mod func(*restorer.Options)) *restorer.Restorer {
	t.Helper()
	o := restorer.Options{ImagesDir: dir}
	if mod != nil {
		mod(&o)
	}
	r, err := restorer.Restore(o, nil)
	if err != nil {
		t.Fatalf("restore %s: %v", dir, err)
	}
	t.Cleanup(func() {
		_ = unix.Kill(r.PID(), unix.SIGKILL)
		_, _ = r.Wait()
	})
	return r
}

// Each round takes exactly the pages the program wrote since the previous
// one (in region A, whose writes it reports), PARENT entries for the rest;
// new, moved, grown and shrunk mappings and zapped pages are handled; the
// final dump restores identical memory, also after dedup; the holder ends
// with the final dump.
func TestPreDumpRounds(t *testing.T) {
	needRoot(t)
	const pages = 512
	w := startRewriter(t, pages, 0)
	root := t.TempDir()
	dir := func(i int) string { return filepath.Join(root, fmt.Sprintf("pre%d", i)) }
	t.Cleanup(func() {
		for i := 1; i <= 5; i++ {
			killHolder(t, dir(i))
		}
	})
	pid := w.p.Pid

	r1 := preDump(t, PreDumpOptions{Pid: pid, ImagesDir: dir(1)})
	if r1.Round != 1 || !r1.Full || r1.Frozen <= 0 {
		t.Fatalf("round 1: round %d, full %v, frozen %v", r1.Round, r1.Full, r1.Frozen)
	}
	f := pageFlags(t, dir(1), pid)
	for i := uint64(0); i < pages; i++ {
		if f[w.a+i*pageSize] != images.PagePresent {
			t.Fatalf("round 1: page %d of A: flags %#x", i, f[w.a+i*pageSize])
		}
	}
	holder := holderOf(t, dir(1))
	assertRunningUntraced(t, pid)

	var bAddr, bPages uint64
	for g := 1; g <= 4; g++ {
		prevB, prevNB := bAddr, bPages
		bAddr, bPages = w.step(t, g)
		res := preDump(t, PreDumpOptions{Pid: pid, ImagesDir: dir(g + 1), PrevImagesDir: fmt.Sprintf("../pre%d", g)})
		if res.Round != uint64(g+1) || res.Full {
			t.Fatalf("round %d: round %d, full %v, notes %v", g+1, res.Round, res.Full, res.Notes)
		}
		if res.Frozen != 0 {
			t.Errorf("round %d: frozen %v, want 0 (tracking held)", g+1, res.Frozen)
		}
		if h := holderOf(t, dir(g+1)); h != holder {
			t.Fatalf("round %d: holder %d, want %d", g+1, h, holder)
		}
		f := pageFlags(t, dir(g+1), pid)
		for i := uint64(0); i < pages; i++ {
			got := f[w.a+i*pageSize]
			zapped := g >= 3 && i >= 1 && i <= 4
			want := uint32(images.PageInParent)
			switch {
			case zapped:
				want = 0 // reads as zero: no entry
			case i%10 == uint64(g%10):
				want = images.PagePresent
			}
			if got != want {
				t.Errorf("round %d: page %d of A: flags %#x, want %#x", g+1, i, got, want)
			}
		}
		var wantB uint32
		switch g {
		case 2, 3: // new; moved and grown
			wantB = images.PagePresent
		case 4: // only shrunk since
			wantB = images.PageInParent
		}
		for i := uint64(0); i < bPages; i++ {
			if got := f[bAddr+i*pageSize]; got != wantB {
				t.Errorf("round %d: page %d of B at %#x: flags %#x, want %#x", g+1, i, bAddr, got, wantB)
			}
		}
		if g == 3 {
			for i := uint64(0); i < prevNB; i++ {
				if _, ok := f[prevB+i*pageSize]; ok {
					t.Errorf("round 4: B's old place %#x still has pages", prevB)
					break
				}
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	h1 := hashOf(t, pid, w.log, 1)
	o := dumpOpts(pid, filepath.Join(root, "final"))
	o.PrevImagesDir, o.TrackMem = "../pre5", true
	res, err := Dump(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stats.GetPagesSkippedParent() == 0 {
		t.Errorf("final dump left nothing to the parent: %+v", res.Stats)
	}
	w.p.Reaped(t)
	waitGone(t, holder)
	crit(t, "show", filepath.Join(root, "final", images.PagemapImg(pid)))

	// Dedup, then restore through the chain.
	d, err := images.Open(filepath.Join(root, "final"), false)
	if err != nil {
		t.Fatal(err)
	}
	st, err := pagexfer.Dedup(d)
	d.Close()
	if err != nil || st.Pages == 0 {
		t.Fatalf("dedup: %+v, %v", st, err)
	}
	r := restoreDir(t, filepath.Join(root, "final"), nil)
	if h2 := hashOf(t, r.PID(), w.log, 2); h2 != h1 {
		t.Fatalf("restored memory hash %s, dumped %s", h2, h1)
	}
}

// Rounds taken while the program rewrites pages at a steady rate lose no
// write: the final dump restores the same memory.
func TestPreDumpConcurrentWriter(t *testing.T) {
	needRoot(t)
	w := startRewriter(t, 4096, 20000)
	root := t.TempDir()
	pid := w.p.Pid
	prev := ""
	for i := 1; i <= 4; i++ {
		d := filepath.Join(root, fmt.Sprintf("pre%d", i))
		t.Cleanup(func() { killHolder(t, d) })
		res := preDump(t, PreDumpOptions{Pid: pid, ImagesDir: d, PrevImagesDir: prev})
		if i > 1 && (res.Full || res.Mem.Written == 0 || res.Parent == 0) {
			t.Fatalf("round %d: full %v, %d written, %d parent", i, res.Full, res.Mem.Written, res.Parent)
		}
		prev = fmt.Sprintf("../pre%d", i)
		time.Sleep(50 * time.Millisecond)
	}
	h1 := hashOf(t, pid, w.log, 1)
	o := dumpOpts(pid, filepath.Join(root, "final"))
	o.PrevImagesDir, o.TrackMem = prev, true
	if _, err := Dump(o, nil); err != nil {
		t.Fatal(err)
	}
	w.p.Reaped(t)
	blocks := func(dir string) int64 {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(root, dir, images.PagesImg(1)), &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks
	}
	before := blocks("pre1")
	r := restoreDir(t, filepath.Join(root, "final"), func(o *restorer.Options) { o.AutoDedup = true })
	if h2 := hashOf(t, r.PID(), w.log, 2); h2 != h1 {
		t.Fatalf("restored memory hash %s, dumped %s", h2, h1)
	}
	// --auto-dedup punched what the restore consumed: all of the final
	// dump's own pages, and pre1's that nothing replaced.
	if b := blocks("final"); b != 0 {
		t.Errorf("after restore --auto-dedup, the final pages file holds %d blocks", b)
	}
	if after := blocks("pre1"); after >= before {
		t.Errorf("after restore --auto-dedup, pre1's pages file holds %d blocks, %d before", after, before)
	}
}

// Killing the target between rounds ends the holder; the next round
// fails cleanly.
func TestPreDumpHolderEndsWithTarget(t *testing.T) {
	needRoot(t)
	w := startRewriter(t, 64, 0)
	d := t.TempDir()
	t.Cleanup(func() { killHolder(t, d) })
	preDump(t, PreDumpOptions{Pid: w.p.Pid, ImagesDir: d})
	holder := holderOf(t, d)
	if err := unix.Kill(w.p.Pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	w.p.Reaped(t)
	waitGone(t, holder)
	if _, err := PreDump(context.Background(), PreDumpOptions{Pid: w.p.Pid, ImagesDir: t.TempDir(), PrevImagesDir: d}); err == nil {
		t.Fatal("pre-dump of a dead process succeeded")
	}
}

// A round made from a parent that is not the latest round is refused
// (the latest round's scan consumed the writes it would need); a holder
// gone makes the next round a full one.
func TestPreDumpStaleParent(t *testing.T) {
	needRoot(t)
	w := startRewriter(t, 64, 0)
	root := t.TempDir()
	p1, p2 := filepath.Join(root, "p1"), filepath.Join(root, "p2")
	t.Cleanup(func() { killHolder(t, p1) })
	preDump(t, PreDumpOptions{Pid: w.p.Pid, ImagesDir: p1})
	preDump(t, PreDumpOptions{Pid: w.p.Pid, ImagesDir: p2, PrevImagesDir: "../p1"})
	_, err := PreDump(context.Background(), PreDumpOptions{Pid: w.p.Pid, ImagesDir: filepath.Join(root, "p3"), PrevImagesDir: "../p1"})
	if err == nil || !strings.Contains(err.Error(), "latest round") {
		t.Fatalf("round from a stale parent: %v", err)
	}
	assertRunningUntraced(t, w.p.Pid)
	holder := holderOf(t, p1)
	_ = unix.Kill(holder, unix.SIGKILL)
	waitGone(t, holder)
	res := preDump(t, PreDumpOptions{Pid: w.p.Pid, ImagesDir: filepath.Join(root, "p4"), PrevImagesDir: "../p2"})
	t.Cleanup(func() { killHolder(t, filepath.Join(root, "p4")) })
	if !res.Full || res.Parent != 0 {
		t.Fatalf("round after the holder died: full %v, %d parent", res.Full, res.Parent)
	}
}

// Rounds through page servers started with --prev-images-dir chain the
// same way, and restore.
func TestPreDumpPageServerChain(t *testing.T) {
	needRoot(t)
	w := startRewriter(t, 256, 0)
	pid := w.p.Pid
	root := t.TempDir()
	serve := func(dir, prev string) string {
		ln, err := pageserver.Listen("127.0.0.1:0", pageserver.TransportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = pageserver.Serve(ctx, ln, pageserver.Config{ImagesDir: dir, PrevImagesDir: prev})
		}()
		t.Cleanup(func() { cancel(); <-done })
		return ln.Addr().String()
	}
	local := func(i int) string { return filepath.Join(root, fmt.Sprintf("l%d", i)) }
	remote := func(i int) string { return filepath.Join(root, fmt.Sprintf("s%d", i)) }
	t.Cleanup(func() { killHolder(t, local(1)) })
	for i := 1; i <= 3; i++ {
		prev, rprev := "", ""
		if i > 1 {
			prev, rprev = fmt.Sprintf("../l%d", i-1), fmt.Sprintf("../s%d", i-1)
			w.step(t, i-1)
		}
		addr := serve(remote(i), rprev)
		res := preDump(t, PreDumpOptions{Pid: pid, ImagesDir: local(i), PrevImagesDir: prev, PageServer: &PageServer{Addr: addr}})
		if i > 1 && (res.Full || res.Parent == 0) {
			t.Fatalf("round %d: full %v, %d parent, notes %v", i, res.Full, res.Parent, res.Notes)
		}
		f := pageFlags(t, remote(i), pid)
		if i > 1 {
			for k := uint64(0); k < w.n; k++ {
				want := uint32(images.PageInParent)
				if k%10 == uint64((i-1)%10) {
					want = images.PagePresent
				}
				if got := f[w.a+k*pageSize]; got != want {
					t.Fatalf("server round %d: page %d: flags %#x, want %#x", i, k, got, want)
				}
			}
		}
	}
	h1 := hashOf(t, pid, w.log, 1)
	// The final dump: pages to a fourth server, the other images into
	// l4 (linked to l3, the local rounds), then the server's pagemap and
	// pages moved beside them, linked to the server's chain, as an
	// operator gathers a dump made through a page server.
	addr := serve(remote(4), "../s3")
	o := dumpOpts(pid, local(4))
	o.PrevImagesDir, o.TrackMem = "../l3", true
	o.PageServer = &PageServer{Addr: addr}
	if _, err := Dump(o, nil); err != nil {
		t.Fatal(err)
	}
	w.p.Reaped(t)
	names, err := os.ReadDir(remote(4))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.HasPrefix(n.Name(), "pagemap-") || strings.HasPrefix(n.Name(), "pages-") {
			if err := os.Rename(filepath.Join(remote(4), n.Name()), filepath.Join(local(4), n.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Remove(filepath.Join(local(4), "parent")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../s3", filepath.Join(local(4), "parent")); err != nil {
		t.Fatal(err)
	}
	r := restoreDir(t, local(4), nil)
	if h2 := hashOf(t, r.PID(), w.log, 2); h2 != h1 {
		t.Fatalf("restored memory hash %s, dumped %s", h2, h1)
	}
}

// A program that registers memory with its own userfaultfd: that memory
// cannot be tracked, so every round takes it whole, with a note.
func TestPreDumpProgramUsesUffd(t *testing.T) {
	needRoot(t)
	bin := filepath.Join(t.TempDir(), "uffduser")
	if out, err := exec.Command("gcc", "-O2", "-o", bin, "testdata/uffduser.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v: %s", err, out)
	}
	log := filepath.Join(t.TempDir(), "uffduser.log")
	p := start(t, log, "ready pid=", bin, log)
	m := regexp.MustCompile(`U=0x([0-9a-f]+)`).FindStringSubmatch(readLog(t, log))
	u, _ := strconv.ParseUint(m[1], 16, 64)
	root := t.TempDir()
	t.Cleanup(func() { killHolder(t, filepath.Join(root, "p1")) })
	preDump(t, PreDumpOptions{Pid: p.Pid, ImagesDir: filepath.Join(root, "p1")})
	res := preDump(t, PreDumpOptions{Pid: p.Pid, ImagesDir: filepath.Join(root, "p2"), PrevImagesDir: "../p1"})
	if len(res.Notes) == 0 || !strings.Contains(strings.Join(res.Notes, "\n"), "cannot be tracked") {
		t.Errorf("round 2 notes: %q", res.Notes)
	}
	f := pageFlags(t, filepath.Join(root, "p2"), p.Pid)
	for i := uint64(0); i < 16; i++ {
		if got := f[u+i*pageSize]; got != images.PagePresent {
			t.Fatalf("round 2: page %d of the program's uffd region: flags %#x, want present", i, got)
		}
	}
	assertRunningUntraced(t, p.Pid)
}

// A first round made again ends the earlier tracking (its holder) instead
// of failing to track anything.
func TestPreDumpFirstRoundAgain(t *testing.T) {
	needRoot(t)
	w := startRewriter(t, 64, 0)
	root := t.TempDir()
	p1, p2, p3 := filepath.Join(root, "p1"), filepath.Join(root, "p2"), filepath.Join(root, "p3")
	t.Cleanup(func() { killHolder(t, p1); killHolder(t, p2) })
	preDump(t, PreDumpOptions{Pid: w.p.Pid, ImagesDir: p1})
	h1 := holderOf(t, p1)
	preDump(t, PreDumpOptions{Pid: w.p.Pid, ImagesDir: p2})
	waitGone(t, h1)
	w.step(t, 1)
	res := preDump(t, PreDumpOptions{Pid: w.p.Pid, ImagesDir: p3, PrevImagesDir: "../p2"})
	if res.Full || len(res.Notes) != 0 {
		t.Fatalf("round on top of the new first round: full %v, notes %q", res.Full, res.Notes)
	}
	f := pageFlags(t, p3, w.p.Pid)
	for i := uint64(0); i < w.n; i++ {
		want := uint32(images.PageInParent)
		if i%10 == 1 {
			want = images.PagePresent
		}
		if got := f[w.a+i*pageSize]; got != want {
			t.Fatalf("page %d: flags %#x, want %#x", i, got, want)
		}
	}
}

// A dump whose parent images are missing or cut short is refused at
// restore, naming them, before anything is started.
func TestPreDumpBrokenChainRefused(t *testing.T) {
	needRoot(t)
	w := startRewriter(t, 64, 0)
	root := t.TempDir()
	pre, final := filepath.Join(root, "pre"), filepath.Join(root, "final")
	t.Cleanup(func() { killHolder(t, pre) })
	preDump(t, PreDumpOptions{Pid: w.p.Pid, ImagesDir: pre})
	o := dumpOpts(w.p.Pid, final)
	o.PrevImagesDir, o.TrackMem = "../pre", true
	if _, err := Dump(o, nil); err != nil {
		t.Fatal(err)
	}
	w.p.Reaped(t)
	if err := os.Truncate(filepath.Join(pre, images.PagesImg(1)), 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := restorer.Restore(restorer.Options{ImagesDir: final}, nil); err == nil || !strings.Contains(err.Error(), "parent images") {
		t.Fatalf("restore with truncated parent pages: %v", err)
	}
	if err := os.RemoveAll(pre); err != nil {
		t.Fatal(err)
	}
	_, err := restorer.Restore(restorer.Options{ImagesDir: final}, nil)
	if err == nil || !strings.Contains(err.Error(), "parent") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("restore without its parent images: %v", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", w.p.Pid)); err == nil {
		t.Fatalf("a failed restore left pid %d", w.p.Pid)
	}
}

// A round's Pending counts the tracked pages written after its scan, and
// only reads the write-protect bits: the next round still takes them all.
func TestPreDumpPending(t *testing.T) {
	needRoot(t)
	const pages = 512
	w := startRewriter(t, pages, 0)
	root := t.TempDir()
	dir := func(i int) string { return filepath.Join(root, fmt.Sprintf("pre%d", i)) }
	t.Cleanup(func() {
		killHolder(t, dir(1))
		killHolder(t, dir(2))
	})
	pid := w.p.Pid
	preDump(t, PreDumpOptions{Pid: pid, ImagesDir: dir(1)})
	a := []uffd.VMA{{Start: w.a, End: w.a + pages*pageSize}}
	if n, err := pendingPages(pid, a); err != nil || n != 0 {
		t.Fatalf("A before any write: %d pending, %v; want 0", n, err)
	}
	w.step(t, 1) // writes the pages i%10 == 1 of A: 52
	for k := 0; k < 2; k++ {
		if n, err := pendingPages(pid, a); err != nil || n != 52 {
			t.Fatalf("A after step 1 (count %d): %d pending, %v; want 52", k+1, n, err)
		}
	}
	r2 := preDump(t, PreDumpOptions{Pid: pid, ImagesDir: dir(2), PrevImagesDir: "../pre1"})
	f := pageFlags(t, dir(2), pid)
	for i := uint64(0); i < pages; i++ {
		want := uint32(images.PageInParent)
		if i%10 == 1 {
			want = images.PagePresent
		}
		if got := f[w.a+i*pageSize]; got != want {
			t.Errorf("round 2: page %d of A: flags %#x, want %#x", i, got, want)
		}
	}
	if n, err := pendingPages(pid, a); err != nil || n != 0 {
		t.Fatalf("A after round 2: %d pending, %v; want 0", n, err)
	}
	if r2.Pending > r2.Mem.Scanned {
		t.Errorf("round 2: %d pending of %d pages", r2.Pending, r2.Mem.Scanned)
	}
}

// Pages discarded (MADV_DONTNEED) after the last round and just before the
// freeze were clean since it: the dirty scan does not report them, so the
// final dump must still see that they hold nothing (no entry, never
// PARENT), and the restored program reads them as zero.
func TestFinalDumpSeesDiscards(t *testing.T) {
	needRoot(t)
	const pages = 64
	w := startRewriter(t, pages, 0)
	root := t.TempDir()
	dir := func(i int) string { return filepath.Join(root, fmt.Sprintf("pre%d", i)) }
	t.Cleanup(func() {
		killHolder(t, dir(1))
		killHolder(t, dir(2))
	})
	pid := w.p.Pid
	preDump(t, PreDumpOptions{Pid: pid, ImagesDir: dir(1)})
	w.step(t, 1)
	w.step(t, 2)
	preDump(t, PreDumpOptions{Pid: pid, ImagesDir: dir(2), PrevImagesDir: "../pre1"})
	f := pageFlags(t, dir(2), pid)
	for i := uint64(1); i <= 4; i++ {
		if f[w.a+i*pageSize] == 0 {
			t.Fatalf("round 2: page %d of A has no entry before the discard", i)
		}
	}
	w.step(t, 3) // discards pages 1..4 of A, then the freeze
	h1 := hashOf(t, pid, w.log, 1)
	final := filepath.Join(root, "final")
	o := dumpOpts(pid, final)
	o.PrevImagesDir, o.TrackMem = "../pre2", true
	res, err := Dump(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.p.Reaped(t)
	// A: the 4 discarded pages walked, the 52 others of the 56 the
	// parent covers and nobody wrote since left to it unwalked (the
	// discard log of the holder).
	if res.Mem.Unwalked < pages-4-pages/10 || res.Mem.Unwalked > res.Stats.GetPagesSkippedParent() {
		t.Errorf("final: %d pages left to the parent unwalked (%d in all), want at least %d", res.Mem.Unwalked, res.Stats.GetPagesSkippedParent(), pages-4-pages/10)
	}
	f = pageFlags(t, final, pid)
	for i := uint64(0); i < pages; i++ {
		_, has := f[w.a+i*pageSize]
		if discarded := i >= 1 && i <= 4; has == discarded {
			t.Errorf("final: page %d of A: entry %v (flags %#x), discarded %v", i, has, f[w.a+i*pageSize], discarded)
		}
	}
	r := restoreDir(t, final, nil)
	if h2 := hashOf(t, r.PID(), w.log, 2); h2 != h1 {
		t.Fatalf("restored memory hash %s, dumped %s", h2, h1)
	}
}

// A discard of a whole page table's worth of pages (2 MiB, aligned): the
// kernel frees the table (CONFIG_PT_RECLAIM), so not even the dirty scan
// sees where the pages were. Only the holder's discard log tells the final
// dump to walk them: no entry for them, and the restored program reads
// zeros there.
func TestFinalDumpSeesTableDiscard(t *testing.T) {
	needRoot(t)
	bin := filepath.Join(t.TempDir(), "discard")
	if out, err := exec.Command("gcc", "-O2", "-o", bin, "testdata/discard.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc discard.c: %v: %s", err, out)
	}
	log := filepath.Join(t.TempDir(), "discard.log")
	p := start(t, log, "ready pid=", bin, log)
	m := regexp.MustCompile(`A=0x([0-9a-f]+)`).FindStringSubmatch(readLog(t, log))
	if m == nil {
		t.Fatal("no A= in log")
	}
	a, _ := strconv.ParseUint(m[1], 16, 64)
	root := t.TempDir()
	dir := func(i int) string { return filepath.Join(root, fmt.Sprintf("pre%d", i)) }
	t.Cleanup(func() {
		killHolder(t, dir(1))
		killHolder(t, dir(2))
	})
	pid := p.Pid
	preDump(t, PreDumpOptions{Pid: pid, ImagesDir: dir(1)})
	preDump(t, PreDumpOptions{Pid: pid, ImagesDir: dir(2), PrevImagesDir: "../pre1"})
	if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, log, "discarded", 20*time.Second)
	h1 := hashOf(t, pid, log, 1)
	final := filepath.Join(root, "final")
	o := dumpOpts(pid, final)
	o.PrevImagesDir, o.TrackMem = "../pre2", true
	res, err := Dump(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Reaped(t)
	const pages, gone = 2048, 512 // 8 MiB, the second 2 MiB discarded
	f := pageFlags(t, final, pid)
	for i := uint64(0); i < pages; i++ {
		_, has := f[a+i*pageSize]
		if discarded := i >= gone && i < 2*gone; has == discarded {
			t.Fatalf("final: page %d: entry %v (flags %#x), discarded %v", i, has, f[a+i*pageSize], discarded)
		}
	}
	if res.Mem.Unwalked < pages-gone {
		t.Errorf("final: %d pages left to the parent unwalked, want at least %d", res.Mem.Unwalked, pages-gone)
	}
	r := restoreDir(t, final, nil)
	if h2 := hashOf(t, r.PID(), log, 2); h2 != h1 {
		t.Fatalf("restored memory hash %s, dumped %s", h2, h1)
	}
}

// The holder logs every discard in a tracked VMA (UFFD_EVENT_REMOVE), and
// the log is read back complete once the task is frozen (here: idle, the
// discard done and logged before we look).
func TestHolderLogsDiscards(t *testing.T) {
	needRoot(t)
	bin := filepath.Join(t.TempDir(), "discard")
	if out, err := exec.Command("gcc", "-O2", "-o", bin, "testdata/discard.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc discard.c: %v: %s", err, out)
	}
	log := filepath.Join(t.TempDir(), "discard.log")
	p := start(t, log, "ready pid=", bin, log)
	m := regexp.MustCompile(`A=0x([0-9a-f]+)`).FindStringSubmatch(readLog(t, log))
	if m == nil {
		t.Fatal("no A= in log")
	}
	a, _ := strconv.ParseUint(m[1], 16, 64)
	dir := filepath.Join(t.TempDir(), "pre1")
	t.Cleanup(func() { killHolder(t, dir) })
	preDump(t, PreDumpOptions{Pid: p.Pid, ImagesDir: dir})
	parent, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	pt, err := readParentTrack(parent)
	if err != nil {
		t.Fatal(err)
	}
	read := func() []span {
		tk, err := openTracking(p.Pid, pt, true, 0, logging.Default(), false)
		if err != nil || tk == nil {
			t.Fatalf("tracking: %v", err)
		}
		defer tk.close()
		defer tk.fail() // not scanned: only marks it free again
		d, err := tk.discards()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := read(); len(d) != 0 {
		t.Fatalf("discards before any: %v", d)
	}
	if err := unix.Kill(p.Pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, log, "discarded", 20*time.Second)
	want := []span{{Start: a + 2<<20, End: a + 4<<20}}
	if d := read(); !slices.Equal(d, want) {
		t.Fatalf("discards: %v, want %v", d, want)
	}
}

// DirtyPages counts, between rounds, what the next round takes: the
// pages written since the last scan and the mappings new since, whole;
// counting protects nothing again (the round still takes them).
func TestDirtyPages(t *testing.T) {
	needRoot(t)
	const pages = 512
	w := startRewriter(t, pages, 0)
	root := t.TempDir()
	dir := func(i int) string { return filepath.Join(root, fmt.Sprintf("pre%d", i)) }
	t.Cleanup(func() {
		for i := 1; i <= 3; i++ {
			killHolder(t, dir(i))
		}
	})
	pid := w.p.Pid
	r := preDump(t, PreDumpOptions{Pid: pid, ImagesDir: dir(1)})
	for g := 1; g <= 2; g++ {
		before, err := DirtyPages(pid, r)
		if err != nil {
			t.Fatal(err)
		}
		// Step 1 writes 52 pages of A; step 2 51, and maps B (8
		// pages, written): new, so taken whole.
		_, nb := w.step(t, g)
		wrote := uint64(52)
		if g == 2 {
			wrote = 51 + nb
		}
		n, err := DirtyPages(pid, r)
		if err != nil {
			t.Fatal(err)
		}
		if n < before+wrote {
			t.Fatalf("step %d: %d pages written: %d dirty, %d before", g, wrote, n, before)
		}
		if again, err := DirtyPages(pid, r); err != nil || again != n {
			t.Fatalf("step %d: counted again: %d, %v; want %d (a count takes nothing)", g, again, err, n)
		}
		r = preDump(t, PreDumpOptions{Pid: pid, ImagesDir: dir(g + 1), PrevImagesDir: fmt.Sprintf("../pre%d", g)})
		// The round takes what was counted (the program is idle), but
		// pages that read as zero.
		if r.Mem.Written > n || r.Mem.Written+r.Mem.Zero < n {
			t.Errorf("step %d: counted %d dirty; round %d wrote %d (%d zero)", g, n, g+1, r.Mem.Written, r.Mem.Zero)
		}
		if after, err := DirtyPages(pid, r); err != nil || after > before+4 {
			t.Errorf("after round %d: %d dirty, %v; want about %d", g+1, after, err, before)
		}
	}
}
