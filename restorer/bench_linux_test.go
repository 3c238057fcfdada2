package restorer

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/opts"
	"godwit/internal/ptrace"
	"godwit/internal/puppet"
	"godwit/internal/testutil"
)

// BenchmarkRestore1GiB restores a dump of a process with 1 GiB of dirty
// anonymous memory (4 GiB with GODWIT_BENCH_4G=1) from tmpfs, with each
// page method, and measures in the same run, before each restore, the
// floor: the cheapest copy the kernel allows of the pages file into fresh
// memory (testutil.RestoreFloor).
// The machine's memory is warmed first (a floor run before measuring).
func BenchmarkRestore1GiB(b *testing.B) {
	needRoot(b)
	mib := 1024
	if os.Getenv("GODWIT_BENCH_4G") != "" {
		mib = 4096
	}
	dir, err := os.MkdirTemp("/dev/shm", "godwit-restore-bench")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	log := filepath.Join(dir, "log")
	imgs := filepath.Join(dir, "img")
	w := startWorkload(b, log, "tick 2", testutil.CounterBin(b, false), "-m", strconv.Itoa(mib), log)
	dump(b, w.Pid, imgs, nil)
	w.Reaped(b)
	// Each restored task may tick before it is killed; the next restore
	// would then rightly refuse the grown LOG.seq: put it back each time.
	seq, err := os.ReadFile(log + ".seq")
	if err != nil {
		b.Fatal(err)
	}

	d, err := images.Open(imgs, false)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	pr, err := images.OpenPages(d, images.PagemapImg(w.Pid))
	if err != nil {
		b.Fatal(err)
	}
	defer pr.Close()
	st, _ := pr.PagesFile().Stat()
	b.Logf("images on tmpfs: %d MiB of pages", st.Size()>>20)

	floor(b, pr.PagesFile(), st.Size()) // warm-up: touches as much fresh memory as a restore
	// The machine is shared and noisy: a floor is measured before every
	// restore, the methods rotate, and medians of the pairs are reported.
	methods := []PageMethod{PagesPreadv, PagesVMWritev, PagesProcMem}
	type runs struct{ restore, floor []time.Duration }
	all := map[PageMethod]*runs{}
	var rss int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for range methods[:i%len(methods)] { // rotate: no method always goes first
			methods = append(methods[1:], methods[0])
		}
		for _, m := range methods {
			fl := floor(b, pr.PagesFile(), st.Size())
			resetPeak()
			t0 := time.Now()
			r := restorePhases(b, imgs, m)
			el := time.Since(t0)
			rss = max(rss, peakRSS())
			_ = unix.Kill(r.PID(), unix.SIGKILL)
			r.Wait()
			if err := os.WriteFile(log+".seq", seq, 0o644); err != nil {
				b.Fatal(err)
			}
			fmt.Fprintf(os.Stderr, "restore %d MiB (%v): %v, floor %v, ratio %.2f, godwit peak RSS %d MiB\n",
				st.Size()>>20, m, el.Round(time.Millisecond), fl.Round(time.Millisecond), el.Seconds()/fl.Seconds(), peakRSS()>>10)
			x := all[m]
			if x == nil {
				x = &runs{}
				all[m] = x
			}
			x.restore, x.floor = append(x.restore, el), append(x.floor, fl)
		}
	}
	for m, x := range all {
		fmt.Fprintf(os.Stderr, "median of %d: %v: restore %v, floor %v, ratio %.2f\n",
			len(x.restore), m, testutil.Median(x.restore), testutil.Median(x.floor), testutil.MedianRatio(x.restore, x.floor))
	}
	def := all[DefaultPageMethod]
	b.ReportMetric(testutil.Median(def.restore).Seconds(), "restore-s")
	b.ReportMetric(testutil.Median(def.floor).Seconds(), "floor-s")
	b.ReportMetric(testutil.MedianRatio(def.restore, def.floor), "ratio")
	b.ReportMetric(float64(rss>>10), "peakRSS-MiB")
}

// restorePhases runs every phase with page method m.
func restorePhases(b *testing.B, imgs string, m PageMethod) *Restorer {
	o := opts.New()
	o.ImagesDir = imgs
	r, err := New(o, nil)
	if err != nil {
		b.Fatal(err)
	}
	r.PageMethod = m
	if err := r.Layout(); err != nil {
		b.Fatal(err)
	}
	if err := r.FillPages(NewImageSource(r.img.pages)); err != nil {
		b.Fatal(err)
	}
	if err := r.Finalize(); err != nil {
		b.Fatal(err)
	}
	if err := r.Resume(); err != nil {
		b.Fatal(err)
	}
	return r
}

// floor copies the pages file into fresh memory by the cheapest way the
// kernel allows (testutil.RestoreFloor), one candidate writing into
// another process (a puppet), as the restore does.
func floor(b *testing.B, f *os.File, size int64) time.Duration {
	tr := ptrace.New()
	defer tr.Close()
	p, err := puppet.Start(puppet.Options{Tracer: tr})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Kill()
	addr, err := tr.MapScratch(p.Pid, uint64(size))
	if err != nil {
		b.Fatal(err)
	}
	d, how, err := testutil.RestoreFloor(f, size, p.Pid, addr)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "floor: %s %v\n", how, d.Round(time.Millisecond))
	return d
}

// resetPeak resets our VmHWM (clear_refs 5).
func resetPeak() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// peakRSS returns VmHWM in KiB.
func peakRSS() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			var n int64
			fmt.Sscanf(strings.TrimSpace(l[6:]), "%d", &n)
			return n
		}
	}
	return 0
}
